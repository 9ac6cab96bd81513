"""compute_features: reference values, hand-computed indicators, gaps, bounded history, equivalences."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from crypto_platform.lib.features import (
    FEATURE_COLUMNS,
    HEURISTIC_FEATURES,
    LOOKBACK_BARS,
    MODEL_FEATURES,
    READY_COLUMN,
    WARMUP_BARS,
    compute_features,
    ready_rows,
)
from crypto_platform.lib.market.schema import OHLCV_COLUMNS

HOUR = 3_600_000
START = 1_700_000_000_000 // HOUR * HOUR

# Bars (this one included) each feature's window spans: the specification the gap tests check against.
WINDOW_BARS = {
    "ret": 2,
    "log_ret": 2,
    "vol24": 25,
    "sma12": 12,
    "sma48": 48,
    "log_volume": 1,
    "realized_vol_24": 25,
    "realized_vol_168": 169,
    "realized_vol_720": 721,
    "rsi_14": 169,
    "bb_pct_b": 20,
    "bb_width": 20,
    "momentum_12": 13,
    "momentum_24": 25,
    "hl_range": 1,
    "volume_z_24": 25,
}


def bars_from_close(close, volume=None, start: int = START, bar_ms: int = HOUR) -> pl.DataFrame:
    close = np.asarray(close, dtype=float)
    n = len(close)
    volume = np.full(n, 10.0) if volume is None else np.asarray(volume, dtype=float)
    return pl.DataFrame(
        {
            "ts": start + np.arange(n, dtype=np.int64) * bar_ms,
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": volume,
        }
    )


def random_walk(
    n: int, seed: int, start: int = START, bar_ms: int = HOUR, level: float = 100.0
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    close = level * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate([[level], close[:-1]])
    return pl.DataFrame(
        {
            "ts": start + np.arange(n, dtype=np.int64) * bar_ms,
            "open": open_,
            "high": np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.003, n))),
            "low": np.minimum(open_, close) / np.exp(np.abs(rng.normal(0, 0.003, n))),
            "close": close,
            "volume": rng.lognormal(3.0, 1.0, n),
        }
    )


def assert_features_close(left: pl.DataFrame, right: pl.DataFrame, tol: float = 1e-12) -> None:
    assert_frame_equal(left, right, check_exact=False, rel_tol=tol, abs_tol=tol)


# --- reference values -------------------------------------------------------------------------------


def test_seed_reference_values_for_a_linear_ramp():
    out = compute_features(bars_from_close(100.2 + np.arange(50)))
    last = out.row(-1, named=True)
    assert last["ret"] == pytest.approx(0.0067476, rel=1e-5)
    # vol24 is the sample (ddof=1) standard deviation of the last 24 SIMPLE returns; the population
    # std gives 0.0003725 and the std of log returns 0.0003778, neither of which is the reference.
    assert last["vol24"] == pytest.approx(0.00038054, rel=1e-5)
    assert last["sma12"] == pytest.approx(143.7, abs=1e-9)
    assert last["sma48"] == pytest.approx(125.7, abs=1e-9)


def test_output_keeps_input_rows_and_columns_and_adds_the_features():
    bars = random_walk(300, seed=1).with_columns(pl.lit("exchange").alias("source"))
    out = compute_features(bars)
    assert out.columns == [*bars.columns, *HEURISTIC_FEATURES, *MODEL_FEATURES, READY_COLUMN]
    assert_frame_equal(out.select(bars.columns), bars)
    assert set(FEATURE_COLUMNS) == set(WINDOW_BARS)


def test_features_already_in_the_input_are_recomputed():
    bars = random_walk(300, seed=1)
    once = compute_features(bars)
    assert_frame_equal(compute_features(once), once)
    assert_frame_equal(compute_features(once.with_columns(pl.lit(0.0).alias("rsi_14"))), once)


def test_empty_input_gives_an_empty_frame_with_the_feature_columns():
    out = compute_features(bars_from_close([]))
    assert out.height == 0
    assert set(FEATURE_COLUMNS) <= set(out.columns)


# --- hand-computed indicators ------------------------------------------------------------------------


def test_rsi_of_alternating_moves_matches_the_closed_form():
    # Changes alternate +2, −1 and the last one is a gain. With weight a^k (a = 13/14) for the change k
    # bars back, over 168 changes the gains sit at even k and the losses at odd k:
    #   G = 2 Σ_{k even} a^k,  L = Σ_{k odd} a^k = a Σ_{k even} a^k   →   RSI = 100 · 2 / (2 + a).
    changes = [2.0 if i % 2 == 0 else -1.0 for i in range(301)]
    close = 1000.0 + np.concatenate([[0.0], np.cumsum(changes)])
    out = compute_features(bars_from_close(close))
    a = 13 / 14
    assert out["rsi_14"][-1] == pytest.approx(100 * 2 / (2 + a), rel=1e-12)
    # One bar earlier the last change is a loss: G = 2a Σ_{k even} a^k, L = Σ_{k even} a^k.
    assert out["rsi_14"][-2] == pytest.approx(100 * 2 * a / (2 * a + 1), rel=1e-12)


def test_rsi_equals_the_direct_weighted_sum_on_a_random_walk():
    bars = random_walk(1500, seed=2, level=30_000.0)
    out = compute_features(bars)
    close = bars["close"].to_numpy()
    weights = (13 / 14) ** np.arange(168)[::-1]  # oldest change first
    for t in (168, 169, 700, 1499):
        d = np.diff(close[t - 168 : t + 1])
        gains, losses = weights @ np.maximum(d, 0), weights @ np.maximum(-d, 0)
        assert out["rsi_14"][t] == pytest.approx(100 * gains / (gains + losses), rel=1e-10)


def test_rsi_stays_close_to_wilders_never_ending_recursion():
    close = random_walk(3000, seed=3)["close"].to_numpy()
    d = np.diff(close)
    gain, loss = np.maximum(d, 0), np.maximum(-d, 0)
    avg_gain, avg_loss = gain[:14].mean(), loss[:14].mean()  # Wilder's seed: the first 14 changes
    for g, lo in zip(gain[14:], loss[14:], strict=True):
        avg_gain = (avg_gain * 13 + g) / 14
        avg_loss = (avg_loss * 13 + lo) / 14
    wilder = 100 - 100 / (1 + avg_gain / avg_loss)
    ours = compute_features(bars_from_close(close))["rsi_14"][-1]
    assert ours == pytest.approx(wilder, abs=0.01)


@pytest.mark.parametrize(
    ("close", "expected"),
    [
        (100.0 + np.arange(200.0), 100.0),  # only gains: Wilder's RS = ∞ → 100
        (400.0 - np.arange(200.0), 0.0),  # only losses
        (np.full(200, 50.0), 50.0),  # no change at all: neutral
    ],
)
def test_rsi_limits(close, expected):
    assert compute_features(bars_from_close(close))["rsi_14"][-1] == expected


def test_bollinger_on_a_ramp_matches_the_closed_form():
    out = compute_features(bars_from_close(1.0 + np.arange(20.0)))  # closes 1…20
    mid = 10.5
    sigma = math.sqrt((20**2 - 1) / 12)  # population std of 20 consecutive integers
    assert out["bb_pct_b"][-1] == pytest.approx((20 - (mid - 2 * sigma)) / (4 * sigma), rel=1e-12)
    assert out["bb_width"][-1] == pytest.approx(4 * sigma / mid, rel=1e-12)
    assert out["bb_pct_b"][-2] is None  # 19 bars: no band yet


def test_bollinger_on_a_flat_window_is_mid_band_with_zero_width():
    out = compute_features(bars_from_close(np.full(30, 7.0)))
    assert out["bb_pct_b"][-1] == 0.5
    assert out["bb_width"][-1] == 0.0


def test_realized_vol_momentum_and_range_on_alternating_log_returns():
    steps = np.array([0.01 if i % 2 else -0.01 for i in range(200)])
    close = 100 * np.exp(np.concatenate([[0.0], np.cumsum(steps)]))
    out = compute_features(bars_from_close(close)).row(-1, named=True)
    assert out["log_ret"] == pytest.approx(steps[-1], rel=1e-9)
    assert out["realized_vol_24"] == pytest.approx(math.sqrt(24 * 1e-4), rel=1e-9)
    # √(24/168 · 168 · 1e-4): on the 24-bar scale a week of the same noise reads the same as a day.
    assert out["realized_vol_168"] == pytest.approx(math.sqrt(24 * 1e-4), rel=1e-9)
    assert out["momentum_12"] == pytest.approx(0.0, abs=1e-12)
    assert out["momentum_24"] == pytest.approx(0.0, abs=1e-12)
    assert out["hl_range"] == pytest.approx(math.log(1.01 / 0.99), rel=1e-12)


def test_momentum_is_the_log_price_ratio():
    close = 100 * 1.002 ** np.arange(60)
    out = compute_features(bars_from_close(close)).row(-1, named=True)
    assert out["momentum_12"] == pytest.approx(12 * math.log(1.002), rel=1e-9)
    assert out["momentum_24"] == pytest.approx(24 * math.log(1.002), rel=1e-9)


def test_volume_z_against_the_previous_24_bars():
    base = np.where(np.arange(40) % 2 == 0, math.e**2 - 1, math.e**4 - 1)  # log volumes 2, 4, 2, 4, …
    volume = np.concatenate([base, [math.e**6 - 1]])
    out = compute_features(bars_from_close(100 + np.arange(41.0), volume=volume))
    assert out["log_volume"][-1] == pytest.approx(6.0, rel=1e-12)
    sd = math.sqrt(24 / 23)  # sample std of twelve 2s and twelve 4s
    assert out["volume_z_24"][-1] == pytest.approx((6 - 3) / sd, rel=1e-9)


def test_volume_z_with_a_constant_baseline():
    volume = np.full(30, 5.0)
    out = compute_features(bars_from_close(100 + np.arange(30.0), volume=volume))
    assert out["volume_z_24"][-1] == 0.0  # same as the baseline: no surprise
    volume[-1] = 50.0
    out = compute_features(bars_from_close(100 + np.arange(30.0), volume=volume))
    assert out["volume_z_24"][-1] is None  # a z-score against zero dispersion is undefined


# --- time: no look-ahead, warm-up, bounded history ----------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_bars_after_t_do_not_change_the_features_at_t(seed):
    rng = np.random.default_rng(100 + seed)
    bars = random_walk(700, seed=seed)
    base = compute_features(bars)
    for t in rng.integers(0, bars.height - 1, 5):
        tampered = bars.with_columns(
            pl.when(pl.int_range(pl.len()) > t)
            .then(pl.col(c) * rng.uniform(0.5, 2.0))
            .otherwise(pl.col(c))
            .alias(c)
            for c in ("open", "high", "low", "close", "volume")
        )
        after = compute_features(tampered)
        assert_frame_equal(after.head(int(t) + 1), base.head(int(t) + 1))
        assert not after.tail(1).equals(base.tail(1))  # the tampering did reach the features


def test_long_random_walk_has_no_nan_or_inf_and_is_ready_exactly_after_warm_up():
    bars = random_walk(20_000, seed=5, level=0.01)
    out = compute_features(bars)
    for col in FEATURE_COLUMNS:
        assert not out[col].is_nan().any(), col
        assert not out[col].is_infinite().any(), col
    assert out[READY_COLUMN].to_list() == [i >= WARMUP_BARS for i in range(out.height)]
    assert ready_rows(out).select(FEATURE_COLUMNS).null_count().sum_horizontal().item() == 0


def test_unusable_prices_become_nulls_not_nans():
    bars = random_walk(400, seed=6).with_columns(
        pl.when(pl.int_range(pl.len()) == 300).then(0.0).otherwise(pl.col("close")).alias("close"),
        pl.when(pl.int_range(pl.len()) == 310).then(float("nan")).otherwise(pl.col("volume")).alias("volume"),
    )
    out = compute_features(bars)
    for col in FEATURE_COLUMNS:
        assert not out[col].is_nan().any(), col
        assert not out[col].is_infinite().any(), col
    assert out["ret"][300] is None and out["ret"][301] is None  # a zero price is a missing bar
    assert out["log_volume"][310] is None


@pytest.mark.parametrize("k", [1, 7, 50])
def test_last_lookback_bars_give_the_same_features_as_the_full_history(k):
    bars = random_walk(3000, seed=7, level=40_000.0)
    bars = bars.filter(~pl.int_range(pl.len()).is_between(500, 530))  # a hole far back in history
    full = compute_features(bars).tail(k)
    recent = compute_features(bars.tail(LOOKBACK_BARS + k)).tail(k)
    assert recent[READY_COLUMN].all()
    assert_features_close(recent, full)


def test_lookback_bars_is_tight():
    bars = random_walk(1000, seed=8)
    short = compute_features(bars.tail(LOOKBACK_BARS))  # one bar short of the first row's window
    assert not short[READY_COLUMN][-1]
    assert compute_features(bars.tail(LOOKBACK_BARS + 1))[READY_COLUMN][-1]


# --- gaps ---------------------------------------------------------------------------------------------


def test_a_five_bar_hole_nulls_every_window_that_straddles_it():
    bars = random_walk(1200, seed=9)
    holed = bars.filter(~pl.int_range(pl.len()).is_between(200, 204))
    out = compute_features(holed)
    after = out.filter(pl.col("ts") >= START + 205 * HOUR)
    for col, n in WINDOW_BARS.items():
        defined = after[col].is_not_null().to_list()
        assert defined == [j >= n - 1 for j in range(after.height)], col
    # After the warm-up the features depend on post-hole bars only: same as if history began there.
    fresh = compute_features(bars.filter(pl.int_range(pl.len()) >= 205))
    assert_features_close(after.tail(200), fresh.tail(200))
    # Before the hole nothing changes.
    assert_frame_equal(out.head(200), compute_features(bars.head(200)))
    assert not after[READY_COLUMN].head(WARMUP_BARS).any()
    assert after[READY_COLUMN][WARMUP_BARS]


def test_gaps_on_a_4h_grid():
    bars = random_walk(400, seed=10, bar_ms=4 * HOUR)
    holed = bars.filter(pl.int_range(pl.len()) != 250)
    out = compute_features(holed, timeframe="4h")
    assert out.filter(pl.col("ts") == START + 251 * 4 * HOUR)["ret"].item() is None
    assert out.filter(pl.col("ts") == START + 249 * 4 * HOUR)["ret"].item() is not None


def test_bars_off_the_grid_or_duplicated_are_rejected():
    bars = random_walk(100, seed=11)
    with pytest.raises(ValueError, match="grid"):
        compute_features(bars, timeframe="4h")  # hourly bars read as 4-hour bars
    with pytest.raises(ValueError, match="duplicated"):
        compute_features(pl.concat([bars, bars.tail(1)]))
    with pytest.raises(ValueError, match="missing"):
        compute_features(bars.drop("volume"))
    with pytest.raises(ValueError, match="epoch milliseconds"):
        compute_features(bars.with_columns(pl.from_epoch("ts", time_unit="ms")))


# --- equivalences: symbols, laziness, row order --------------------------------------------------------


def test_multi_symbol_frame_equals_each_symbol_alone():
    parts = {
        "BTC/USDT": random_walk(900, seed=12, level=60_000.0),
        "ETH/USDT": random_walk(700, seed=13, level=3_000.0, start=START + 50 * HOUR).filter(
            ~pl.int_range(pl.len()).is_between(300, 310)
        ),
        "DOGE/USDT": random_walk(400, seed=14, level=0.08),
    }
    # The last bar of one symbol sits one bar before the first of the next: windows must still not join.
    parts["DOGE/USDT"] = parts["DOGE/USDT"].with_columns(pl.col("ts") + 900 * HOUR)
    together = pl.concat(
        [frame.with_columns(pl.lit(symbol).alias("symbol")) for symbol, frame in parts.items()]
    ).sample(fraction=1.0, shuffle=True, seed=1)
    out = compute_features(together)
    assert out["symbol"].to_list() == sorted(out["symbol"].to_list())
    for symbol, frame in parts.items():
        alone = compute_features(frame)
        assert_features_close(out.filter(pl.col("symbol") == symbol).drop("symbol"), alone)


def test_lazyframe_input_equals_dataframe_input():
    bars = random_walk(500, seed=15).with_columns(pl.lit("BTC/USDT").alias("symbol"))
    assert_frame_equal(compute_features(bars.lazy()), compute_features(bars))


def test_row_order_of_the_input_does_not_matter():
    bars = random_walk(500, seed=16)
    assert_frame_equal(compute_features(bars.reverse()), compute_features(bars))


# --- real Binance data ----------------------------------------------------------------------------------


@pytest.mark.real_data
def test_btc_february_2018_outage_is_never_straddled(shared_ohlcv_dir):
    def ms(*date: int) -> int:
        return int(datetime(*date, tzinfo=UTC).timestamp() * 1000)

    bars = pl.read_csv(shared_ohlcv_dir / "binance_BTCUSDT_1h.csv.gz", schema_overrides={"ts": pl.Int64})
    bars = bars.select(OHLCV_COLUMNS).filter(pl.col("ts").is_between(ms(2018, 1, 20), ms(2018, 4, 10)))
    out = compute_features(bars)
    present = set(out["ts"].to_list())
    last_before, first_after = ms(2018, 2, 8, 0), ms(2018, 2, 9, 10)  # 33 bars missing in between
    assert last_before in present and first_after in present
    assert not any(ms(2018, 2, 8, 1) + h * HOUR in present for h in range(33))
    for col, n in WINDOW_BARS.items():
        for ts, value in zip(out["ts"], out[col], strict=True):
            if value is not None:
                assert all(ts - j * HOUR in present for j in range(n)), (col, ts)
        post = out.filter(pl.col("ts") >= first_after)[col]
        assert post.head(n - 1).is_null().all() and post[n - 1] is not None, col
        assert not out[col].is_nan().any()
    assert out.filter(pl.col("ts") == first_after)["ret"].item() is None
