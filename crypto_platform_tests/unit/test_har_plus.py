"""HAR+ features and model: causality (perturbing the future leaves the past bit-identical), the
definitions by hand, parameter recovery on a simulated log-linear truth, and the scale/standardisation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.features import MODEL_FEATURES, compute_features
from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.model.baselines import HARBaseline, NotFittedError
from crypto_platform.lib.model.har_features import HAR_PLUS_FEATURES, har_plus_features
from crypto_platform.lib.model.har_plus import HARPlusBaseline, HARPlusConfig
from crypto_platform.lib.model.metrics import qlike
from crypto_platform.lib.model.windows import WindowSet, build_windows, chronological_split

T0 = 1_600_000_000_000 - 1_600_000_000_000 % HOUR_MS
COLUMNS = (*MODEL_FEATURES, *HAR_PLUS_FEATURES)


def random_bars(seed: int, n: int, symbols=("BTC/USDT", "ETH/USDT"), holes: bool = True) -> pl.DataFrame:
    """Hourly OHLCV with stochastic volatility, a weekly cycle and (optionally) a hole in the grid."""
    rng = np.random.default_rng(seed)
    parts = []
    hours = np.arange(n)
    common = rng.standard_normal(n)
    for k, sym in enumerate(symbols):
        log_vol = np.zeros(n)
        for i in range(1, n):
            log_vol[i] = 0.98 * log_vol[i - 1] + 0.15 * (0.6 * common[i] + 0.8 * rng.standard_normal())
        weekly = 0.3 * np.sin(2 * math.pi * hours / 168)
        sigma = 0.004 * (1 + k) * np.exp(log_vol + weekly)
        ret = sigma * rng.standard_normal(n)
        close = 100.0 * (1 + k) * np.exp(np.cumsum(ret))
        open_ = np.concatenate(([close[0]], close[:-1]))
        wick = sigma * np.abs(rng.standard_normal((2, n)))
        high = np.maximum(open_, close) * np.exp(wick[0])
        low = np.minimum(open_, close) * np.exp(-wick[1])
        frame = pl.DataFrame(
            {
                "symbol": sym,
                "ts": T0 + hours.astype(np.int64) * HOUR_MS,
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": np.exp(rng.normal(5, 0.5, n)),
            }
        )
        if holes:
            frame = frame.filter((pl.col("ts") < T0 + 1500 * HOUR_MS) | (pl.col("ts") >= T0 + 1510 * HOUR_MS))
        parts.append(frame)
    return pl.concat(parts)


def har_plus_windows(bars: pl.DataFrame) -> WindowSet:
    return build_windows(har_plus_features(compute_features(bars)), COLUMNS)


@pytest.fixture(scope="module")
def sim_windows() -> WindowSet:
    return har_plus_windows(random_bars(3, 4000))


def test_features_of_past_bars_do_not_change_when_the_future_does():
    bars = random_bars(1, 2000)
    cut = T0 + 1700 * HOUR_MS
    future = pl.col("ts") >= cut
    perturbed = bars.with_columns(
        pl.when(future).then(pl.col(c) * 1.7).otherwise(pl.col(c)).alias(c)
        for c in ("high", "close", "volume")
    ).with_columns(pl.max_horizontal("open", "high", "close").alias("high"))
    base = har_plus_features(compute_features(bars)).filter(~future).sort("symbol", "ts")
    other = har_plus_features(compute_features(perturbed)).filter(~future).sort("symbol", "ts")
    # Cross-asset terms read other symbols at the same ts only, so the past stays identical too.
    for column in HAR_PLUS_FEATURES:
        assert base[column].equals(other[column], null_equal=True), column


def test_har_plus_forecasts_before_a_perturbed_future_are_bit_identical():
    bars = random_bars(2, 3000)
    cut = T0 + 2600 * HOUR_MS
    perturbed = bars.with_columns(
        pl.when(pl.col("ts") >= cut).then(pl.col(c) * 1.3).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close")
    )
    w_a, w_b = har_plus_windows(bars), har_plus_windows(perturbed)
    train_a = w_a.take(np.flatnonzero(w_a.ts + 24 * HOUR_MS < cut - 300 * HOUR_MS))
    model = HARPlusBaseline().fit(train_a)
    early_a = w_a.take(np.flatnonzero(w_a.ts < cut))
    early_b = w_b.take(np.flatnonzero(w_b.ts < cut))
    np.testing.assert_array_equal(early_a.ts, early_b.ts)
    np.testing.assert_array_equal(model.predict(early_a), model.predict(early_b))


def test_feature_definitions_by_hand():
    bars = random_bars(4, 900, symbols=("BTC/USDT", "ETH/USDT"), holes=False)
    f = har_plus_features(compute_features(bars)).sort("symbol", "ts")
    btc = f.filter(pl.col("symbol") == "BTC/USDT")
    eth = f.filter(pl.col("symbol") == "ETH/USDT")
    i = 850
    o, h, lo, c = (btc[col].to_numpy() for col in ("open", "high", "low", "close"))
    gk = 0.5 * np.log(h / lo) ** 2 - (2 * math.log(2) - 1) * np.log(c / o) ** 2
    assert btc["log_gk_24"][i] == pytest.approx(math.log(gk[i - 23 : i + 1].sum()), rel=1e-9)
    assert btc["log_gk_168"][i] == pytest.approx(math.log(gk[i - 167 : i + 1].sum() * 24 / 168), rel=1e-9)
    r = btc["log_ret"].to_numpy()[i - 23 : i + 1]
    rv = (r**2).sum()
    assert btc["harq_ratio_24"][i] == pytest.approx(math.sqrt(8 * (r**4).sum()) / rv, rel=1e-9)
    assert btc["semivar_neg_share_24"][i] == pytest.approx((r[r < 0] ** 2).sum() / rv, rel=1e-9)
    assert btc["cross_log_rv_24"][i] == pytest.approx(math.log(eth["realized_vol_24"][i] ** 2), rel=1e-9)
    lv = np.log1p(btc["volume"].to_numpy())
    assert btc["volume_ratio_24_720"][i] == pytest.approx(
        lv[i - 23 : i + 1].mean() - lv[i - 719 : i + 1].mean()
    )
    # one symbol alone: the cross term falls back to its own RV
    alone = har_plus_features(compute_features(bars.filter(pl.col("symbol") == "BTC/USDT")))
    assert alone["cross_log_rv_24"][i] == pytest.approx(math.log(alone["realized_vol_24"][i] ** 2))


def test_windows_never_straddle_the_hole(sim_windows):
    hole_start, hole_end = T0 + 1500 * HOUR_MS, T0 + 1510 * HOUR_MS
    # every HAR+ column reaches 720 bars back: no window ends within 720 bars after the hole
    assert not np.any((sim_windows.ts >= hole_end) & (sim_windows.ts < hole_end + 720 * HOUR_MS))
    assert np.any(sim_windows.ts < hole_start)


def test_har_plus_beats_plain_har_on_simulated_seasonal_volatility(sim_windows):
    split = chronological_split(sim_windows.ts, (0.75, 0.0, 0.25), purge_bars=24)
    train, test = sim_windows.take(split.train), sim_windows.take(split.test)
    har = HARBaseline().fit(train)
    plus = HARPlusBaseline().fit(train)
    q_har, q_plus = qlike(test.y**2, har.predict(test) ** 2), qlike(test.y**2, plus.predict(test) ** 2)
    assert q_plus < q_har
    p = plus.params()
    assert p["symbols"] == ["BTC/USDT", "ETH/USDT"]
    assert abs(p["coef_standardised"]["week_sin_1"]) > 0.02  # the simulated weekly cycle is found
    assert math.isfinite(plus.scale) and plus.scale > 0


def test_per_asset_standardisation_keeps_each_level(sim_windows):
    model = HARPlusBaseline().fit(sim_windows)
    f = model.predict(sim_windows)
    eth = sim_windows.symbol == "ETH/USDT"
    # ETH was simulated twice as volatile: its forecasts are about twice BTC's
    ratio = np.median(f[eth]) / np.median(f[~eth])
    assert 1.6 < ratio < 2.5
    # an unseen symbol uses the pooled statistics and still gets a positive finite forecast
    other = WindowSet(
        sim_windows.X[:5],
        sim_windows.y[:5],
        sim_windows.ts[:5],
        np.array(["SOL/USDT"] * 5, dtype=object),
        COLUMNS,
    )
    assert np.all(np.isfinite(model.predict(other))) and np.all(model.predict(other) > 0)


def test_forecast_reads_only_its_own_window(sim_windows):
    model = HARPlusBaseline().fit(sim_windows)
    full = model.predict(sim_windows)
    for i in (0, len(sim_windows) // 2, len(sim_windows) - 1):
        assert model.predict(sim_windows.take([i]))[0] == full[i]


def test_config_and_fit_errors(sim_windows):
    with pytest.raises(ValueError, match="unknown or no HAR\\+ terms"):
        HARPlusConfig(terms=("nope",))
    with pytest.raises(ValueError, match="scale_block"):
        HARPlusConfig(scale_block="holdout")
    with pytest.raises(NotFittedError):
        HARPlusBaseline().predict(sim_windows)
    with pytest.raises(ValueError, match="needs at least"):
        HARPlusBaseline().fit(sim_windows.take(np.arange(10)))
    with pytest.raises(ValueError, match="lacks"):
        har_plus_features(pl.DataFrame({"ts": [1]}))
