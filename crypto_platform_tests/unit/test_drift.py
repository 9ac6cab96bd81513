from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.drift import (
    MIN_NULL_WINDOWS,
    common_shift,
    detect_drift,
    fit_reference_null,
    population_stability_index,
)
from crypto_platform.lib.features import MODEL_FEATURES, compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
LABEL = "realized_vol_24"
FEATURES = [c for c in MODEL_FEATURES if c != LABEL]
# Features a change of volatility alone moves (vs direction features such as rsi_14 or momentum).
VOLATILITY_FEATURES = {
    "log_ret",
    "realized_vol_168",
    "realized_vol_720",
    "bb_width",
    "hl_range",
    "momentum_12",
    "momentum_24",
}
SYMBOLS = ("BTC/USDT", "ETH/USDT")
START_MS = int(datetime(2021, 1, 4, tzinfo=UTC).timestamp() * 1000)
# As the platform runs it: 30 days of warm-up, a 365-day training window whose first 85 % (before the
# holdout) is the reference, and the last 7 days judged. The seed is fixed: the decision is asserted.
TRAINING_END_MS = START_MS + (30 + 365) * DAY_MS
REFERENCE = (START_MS + 30 * DAY_MS, START_MS + (30 + 310) * DAY_MS)
CHANGE_MS = TRAINING_END_MS + 14 * DAY_MS
SEED = 1  # the decision at one seed is asserted; how often and how fast across seeds: benchmarks/drift.py


def _span(frame: pl.DataFrame, first_ms: int, end_ms: int) -> pl.DataFrame:
    return frame.filter((pl.col("ts") >= first_ms) & (pl.col("ts") < end_ms))


def _last_week(frame: pl.DataFrame, end_ms: int) -> pl.DataFrame:
    return _span(frame, end_ms - 7 * DAY_MS, end_ms)


def _double_volatility(bars: pl.DataFrame, from_ms: int) -> pl.DataFrame:
    """Each bar from `from_ms` moves twice as far in log terms (close, high and low); volume unchanged."""
    out = []
    for _, frame in bars.group_by("symbol", maintain_order=True):
        after = (frame["ts"] >= from_ms).to_numpy()
        first = int(np.argmax(after))
        o, h, low, c = (frame[k].to_numpy().astype(float).copy() for k in ("open", "high", "low", "close"))
        base = c[first - 1]
        close = base * np.exp(np.cumsum(2.0 * np.log(c[first:] / o[first:])))
        opened = np.concatenate([[base], close[:-1]])
        h[first:] = opened * (h[first:] / o[first:]) ** 2
        low[first:] = opened * (low[first:] / o[first:]) ** 2
        o[first:], c[first:] = opened, close
        out.append(
            frame.with_columns(open=pl.Series(o), high=pl.Series(h), low=pl.Series(low), close=pl.Series(c))
        )
    return pl.concat(out)


@pytest.fixture(scope="module")
def simulated_bars() -> pl.DataFrame:
    frames = [
        simulate_ohlcv(s, "1h", START_MS, CHANGE_MS + 15 * DAY_MS, seed=SEED).with_columns(
            pl.lit(s).alias("symbol")
        )
        for s in SYMBOLS
    ]
    return pl.concat(frames).sort("symbol", "ts")


@pytest.fixture(scope="module")
def simulated(simulated_bars):
    features = compute_features(simulated_bars)
    reference = _span(features, *REFERENCE)
    return features, reference, fit_reference_null(reference, [*FEATURES, LABEL], 7 * 24)


def test_stationary_simulated_market_is_not_drift(simulated):
    features, reference, _ = simulated
    current = _last_week(features, TRAINING_END_MS + DAY_MS)
    report = detect_drift(reference, current, FEATURES, label_column=LABEL)
    assert report.undetermined is None and report.n_null_windows > 250
    assert not report.feature_drift_detected, report.to_markdown()
    assert not report.label_drift_detected, report.to_markdown()
    # What the old row-level test tripped on: every week's realized_vol_720 is far from the year's
    # pooled distribution (KS ≫ 0.1), and so is that of a typical week of the reference itself.
    rv720 = next(f for f in report.features if f.feature == "realized_vol_720")
    assert rv720.ks_null_median is not None and rv720.ks_null_median > 0.2


def test_one_null_judges_many_days_alike_with_detect_drift(simulated):
    features, reference, null = simulated
    current = _last_week(features, TRAINING_END_MS + 3 * DAY_MS)
    once = detect_drift(reference, current, FEATURES, label_column=LABEL).to_dict()
    again = null.test(current, FEATURES, LABEL).to_dict()
    assert once == again


def test_doubled_volatility_is_drift_on_volatility_features_and_label(simulated_bars, simulated):
    # The decision at this seed, not a rate: the simulator's own turbulent regime runs at ~2.2× the
    # normal volatility for days, so a week of doubled volatility is not always unusual for a week of
    # the reference (benchmarks/drift.py measures how often and how fast it is caught).
    _, _, null = simulated
    changed = compute_features(_double_volatility(simulated_bars, CHANGE_MS))
    before = null.test(_last_week(changed, CHANGE_MS), FEATURES, LABEL)
    assert not before.feature_drift_detected and not before.label_drift_detected
    after = null.test(_last_week(changed, CHANGE_MS + 7 * DAY_MS), FEATURES, LABEL)
    assert after.feature_drift_detected, after.to_markdown()
    assert set(after.drifted_features) <= VOLATILITY_FEATURES, after.drifted_features
    assert after.label_drift_detected and after.label is not None
    assert after.label.current_mean > 1.5 * after.label.reference_mean
    assert "DETECTED in" in after.to_markdown() and after.to_dict()["label_drift_detected"] is True


def _iid_frame(rng: np.random.Generator, days: int, start_ms: int = 0, **shift: float) -> pl.DataFrame:
    n = days * 24
    return pl.DataFrame(
        {
            "ts": start_ms + np.arange(n, dtype=np.int64) * HOUR_MS,
            "x": rng.normal(shift.get("x", 0.0), 1.0, n),
            "y": rng.uniform(20, 80, n) + shift.get("y", 0.0),
            LABEL: np.abs(rng.normal(0.03, 0.01, n)) * (1.0 + shift.get("vol", 0.0)),
        }
    )


def test_label_drift_alone_is_reported_as_label_drift():
    rng = np.random.default_rng(4)
    reference = _iid_frame(rng, 300)
    current = _iid_frame(rng, 7, start_ms=320 * DAY_MS, vol=1.5)
    report = detect_drift(reference, current, ["x", "y"], label_column=LABEL)
    assert report.label_drift_detected and not report.feature_drift_detected


def test_shifted_feature_is_flagged_and_others_are_not():
    rng = np.random.default_rng(2)
    reference = _iid_frame(rng, 300)
    report = detect_drift(reference, _iid_frame(rng, 7, start_ms=320 * DAY_MS, y=25.0), ["x", "y"])
    assert report.drifted_features == ["y"] and not report.label_drift_detected
    assert "y" in report.to_markdown()


def test_effect_size_floor_ignores_significant_but_small_shifts():
    rng = np.random.default_rng(3)
    reference = _iid_frame(rng, 300)
    current = _iid_frame(rng, 7, start_ms=320 * DAY_MS, x=0.2)
    # the floor is under test, not the default level: both verdicts at alpha 0.05
    without_floor = detect_drift(
        reference, current, ["x"], label_column=None, alpha=0.05, ks_floor=0.0, psi_floor=0.0
    )
    assert without_floor.drifted_features == ["x"]  # significant against same-length windows …
    report = detect_drift(reference, current, ["x"], label_column=None, alpha=0.05)
    x = report.features[0]
    assert x.p_value_adjusted is not None and x.p_value_adjusted <= 0.05
    assert x.ks_null_median is not None and x.ks_statistic - x.ks_null_median < 0.1
    assert not report.feature_drift_detected  # … but smaller than the floor over a typical window


def test_short_reference_is_undetermined_not_drift():
    rng = np.random.default_rng(6)
    reference = _iid_frame(rng, 14)
    report = detect_drift(reference, _iid_frame(rng, 7, start_ms=30 * DAY_MS, x=5.0), ["x"])
    assert report.n_null_windows < MIN_NULL_WINDOWS
    assert report.undetermined and not report.feature_drift_detected
    assert "Undetermined" in report.to_markdown() and report.to_dict()["undetermined"]


def test_reference_shorter_than_the_window_is_undetermined_not_an_error():
    rng = np.random.default_rng(7)
    report = detect_drift(_iid_frame(rng, 3), _iid_frame(rng, 7, start_ms=30 * DAY_MS), ["x"])
    assert report.n_null_windows == 0
    assert report.undetermined and not report.feature_drift_detected and not report.label_drift_detected


def test_psi_is_zero_for_identical_samples_and_grows_with_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert population_stability_index(ref, ref) == pytest.approx(0.0, abs=1e-12)
    small = population_stability_index(ref, ref + 0.1)
    large = population_stability_index(ref, ref + 1.0)
    assert 0 < small < 0.1 < 0.2 < large


def test_psi_hand_computed_two_bins():
    ref = np.array([0.0, 0.0, 1.0, 1.0])
    cur = np.array([0.0, 1.0, 1.0, 1.0])
    # One bin: PSI 0 whatever the mix.
    assert population_stability_index(ref, cur, bins=1) == pytest.approx(0.0)
    # With 2 bins the inner edge is the median 0.5: ref 50/50, cur 25/75.
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert population_stability_index(ref, cur, bins=2) == pytest.approx(expected)


def test_bad_inputs_raise_clearly():
    rng = np.random.default_rng(5)
    reference = _iid_frame(rng, 60)
    with pytest.raises(ValueError, match="lack columns"):
        detect_drift(reference, _iid_frame(rng, 7), ["nope"])
    with pytest.raises(ValueError, match=r"lack columns: \['ts'\]"):
        detect_drift(reference, _iid_frame(rng, 7).drop("ts"), ["x"])
    with pytest.raises(ValueError, match="at least 2 finite values"):
        detect_drift(reference, _iid_frame(rng, 7).with_columns(x=pl.lit(None, pl.Float64)), ["x"])
    null = fit_reference_null(reference, ["x", LABEL], 24)
    with pytest.raises(ValueError, match="spans 168 bars but the null was fit for 24"):
        null.test(_iid_frame(rng, 7), ["x"], LABEL)


def test_common_shift_is_the_shift_every_symbol_shares():
    shifts = np.array([[0.7, 0.5], [0.7, -0.2], [-0.4, -0.9], [np.nan, 0.3], [np.nan, np.nan]])
    shared = common_shift(shifts)
    assert shared[:4].tolist() == [0.5, 0.0, -0.4, 0.3]  # the smaller in size; 0 where signs disagree
    assert np.isnan(shared[4])


def _two_symbol_frame(
    rng: np.random.Generator, days: int, start_ms: int, scale: dict[str, float]
) -> pl.DataFrame:
    """hl_range-like log-normal ranges per symbol (a volatility-like column), iid, × scale[symbol]."""
    n = days * 24
    frames = [
        pl.DataFrame(
            {
                "ts": start_ms + np.arange(n, dtype=np.int64) * HOUR_MS,
                "symbol": symbol,
                "hl_range": np.exp(rng.normal(np.log(0.01), 0.5, n)) * scale.get(symbol, 1.0),
                "x": rng.normal(0.0, 1.0, n),
            }
        )
        for symbol in SYMBOLS
    ]
    return pl.concat(frames)


def test_a_market_wide_volatility_step_is_seen_by_the_scale_statistics_from_its_first_day():
    rng = np.random.default_rng(8)
    reference = _two_symbol_frame(rng, 300, 0, {})
    calm = _two_symbol_frame(rng, 6, 320 * DAY_MS, {})
    null = fit_reference_null(reference, ["hl_range", "x"], 7 * 24)
    # one day of doubled ranges on every symbol at the end of a 7-day window
    doubled = _two_symbol_frame(rng, 1, 326 * DAY_MS, dict.fromkeys(SYMBOLS, 2.0))
    report = null.test(pl.concat([calm, doubled]), ["hl_range", "x"], None)
    (hl, x) = report.features
    assert report.drifted_features == ["hl_range"], report.to_markdown()
    assert hl.evidence in ("scale", "change") and hl.window_bars == 24
    step = hl.log_scale_shift if hl.evidence == "scale" else hl.log_scale_change
    assert step == pytest.approx(np.log(2.0), abs=0.15)
    assert x.log_scale_shift is None and not x.drifted  # not a volatility-like column: KS only
    assert "log scale step" in report.to_markdown()


def test_one_symbols_own_spell_is_not_a_shared_scale_shift():
    rng = np.random.default_rng(9)
    reference = _two_symbol_frame(rng, 300, 0, {})
    calm = _two_symbol_frame(rng, 6, 320 * DAY_MS, {})
    null = fit_reference_null(reference, ["hl_range"], 7 * 24)
    alone = _two_symbol_frame(rng, 1, 326 * DAY_MS, {SYMBOLS[0]: 2.0})
    market = _two_symbol_frame(rng, 1, 326 * DAY_MS, dict.fromkeys(SYMBOLS, 2.0))
    one = null.test(pl.concat([calm, alone]), ["hl_range"], None).features[0]
    both = null.test(pl.concat([calm, market]), ["hl_range"], None).features[0]
    # both reported at the last day; the other symbol did not move, so the shared shift is (about) nothing
    assert one.window_bars == both.window_bars == 24
    assert one.log_scale_shift is not None and abs(one.log_scale_shift) < 0.15
    assert both.log_scale_shift == pytest.approx(np.log(2.0), abs=0.15) and both.drifted
    # (in this iid reference one symbol's doubled day is unusual too, and the pooled KS says so; in a
    # market, one symbol's turbulent day is an everyday event of the reference and ranks as such)
