"""The heuristic signal: regimes, risk score direction and bounds, nowcast, tail format, bad input."""

from __future__ import annotations

import itertools
import math
import re
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.features import compute_features
from crypto_platform.lib.signals import (
    MIN_BARS,
    TAIL_BARS,
    HeuristicSignal,
    classify_vol_regime,
    heuristic_signal,
    nowcast_return,
    risk_score,
    vol_thresholds,
)

HOUR = 3_600_000
START = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def features_for(close, bar_ms: int = HOUR, timeframe: str = "1h", symbol: str | None = None) -> pl.DataFrame:
    close = np.asarray(close, dtype=float)
    bars = pl.DataFrame(
        {
            "ts": START + np.arange(len(close), dtype=np.int64) * bar_ms,
            "open": close,
            "high": close * 1.002,
            "low": close * 0.998,
            "close": close,
            "volume": np.full(len(close), 5.0),
        }
    )
    if symbol:
        bars = bars.with_columns(pl.lit(symbol).alias("symbol"))
    return compute_features(bars, timeframe=timeframe)


def walk(n: int, drift: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.cumprod(1.0 + drift + noise * rng.standard_normal(n))


# --- regimes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vol", "regime"),
    [
        (0.0, "calm"),
        (0.00499, "calm"),
        (0.005, "normal"),
        (0.01499, "normal"),
        (0.015, "turbulent"),
        (0.2, "turbulent"),
    ],
)
def test_regime_thresholds_for_hourly_bars(vol, regime):
    assert classify_vol_regime(vol, "1h") == regime


@pytest.mark.parametrize(("timeframe", "scale"), [("4h", 2.0), ("15m", 0.5), ("1d", math.sqrt(24))])
def test_regime_thresholds_scale_with_the_square_root_of_bar_length(timeframe, scale):
    calm, turbulent = vol_thresholds(timeframe)
    assert calm == pytest.approx(0.005 * scale) and turbulent == pytest.approx(0.015 * scale)
    assert classify_vol_regime(calm * 0.999, timeframe) == "calm"
    assert classify_vol_regime(calm, timeframe) == "normal"
    assert classify_vol_regime(turbulent * 0.999, timeframe) == "normal"
    assert classify_vol_regime(turbulent, timeframe) == "turbulent"


def test_an_hourly_turbulent_vol_is_only_normal_on_4h_bars():
    assert classify_vol_regime(0.02, "1h") == "turbulent"
    assert classify_vol_regime(0.02, "4h") == "normal"


@pytest.mark.parametrize("vol", [-0.01, float("nan"), float("inf")])
def test_regime_rejects_impossible_vol(vol):
    with pytest.raises(ValueError, match="volatility"):
        classify_vol_regime(vol, "1h")


def test_regime_rejects_unknown_timeframe():
    with pytest.raises(ValueError, match="timeframe"):
        classify_vol_regime(0.01, "7m")


# --- risk score -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeframe", ["15m", "1h", "4h"])
def test_risk_rises_with_vol_for_any_trend(timeframe):
    rng = np.random.default_rng(1)
    for _ in range(200):
        sma48 = rng.uniform(1, 1e5)
        sma12 = sma48 * math.exp(rng.normal(0, 0.05))
        low, high = sorted(rng.uniform(0, 0.05, 2))
        assert risk_score(low, sma12, sma48, timeframe) <= risk_score(high, sma12, sma48, timeframe)
    vols = np.linspace(0, 0.05, 50)
    scores = [risk_score(v, 99.0, 100.0, timeframe) for v in vols]
    assert all(b > a for a, b in itertools.pairwise(scores))


@pytest.mark.parametrize("timeframe", ["15m", "1h", "4h"])
def test_risk_rises_with_the_downtrend_for_any_vol(timeframe):
    rng = np.random.default_rng(2)
    for _ in range(200):
        vol = rng.uniform(0, 0.05)
        sma48 = rng.uniform(1, 1e5)
        weaker, stronger = sorted(rng.normal(0, 0.05, 2))  # log(sma12 / sma48): larger = less down
        assert risk_score(vol, sma48 * math.exp(stronger), sma48, timeframe) <= risk_score(
            vol, sma48 * math.exp(weaker), sma48, timeframe
        )
    ratios = np.linspace(1.1, 0.9, 50)  # from a clear uptrend to a clear downtrend
    scores = [risk_score(0.01, 100.0 * r, 100.0, timeframe) for r in ratios]
    assert all(b > a for a, b in itertools.pairwise(scores))


@pytest.mark.parametrize(
    ("vol", "sma12"),
    [(0.0, 1e9), (0.0, 1e-9), (1e6, 1e-9), (1e6, 1e9), (0.0, 100.0), (0.015, 100.0)],
)
def test_risk_stays_within_zero_and_one(vol, sma12):
    score = risk_score(vol, sma12, 100.0, "1h")
    assert 0.0 <= score <= 1.0 and math.isfinite(score)


def test_risk_reference_points_of_the_formula():
    _, turbulent = vol_thresholds("1h")
    assert risk_score(0.0, 100.0, 100.0, "1h") == pytest.approx(1 / (1 + math.exp(1.8)))
    assert risk_score(0.6 * turbulent, 100.0, 100.0, "1h") == pytest.approx(0.5)
    assert risk_score(turbulent, 100.0, 100.0, "1h") == pytest.approx(1 / (1 + math.exp(-1.2)))


def test_risk_rejects_non_positive_averages():
    with pytest.raises(ValueError, match="moving averages"):
        risk_score(0.01, 0.0, 100.0, "1h")


# --- nowcast --------------------------------------------------------------------------------------------


def test_nowcast_of_a_noiseless_drift_is_the_drift_times_the_horizon():
    assert nowcast_return([0.001] * 24, 0.0, horizon_bars=1) == pytest.approx(0.001)
    assert nowcast_return([0.001] * 24, 0.0, horizon_bars=0.25) == pytest.approx(0.00025)


def test_nowcast_shrinks_a_drift_buried_in_noise():
    rets = [0.001] * 24
    # se = 0.01 / √24 ≈ 0.002 ≫ 0.001: the mean is shrunk by m² / (m² + se²) ≈ 0.19.
    assert nowcast_return(rets, 0.01, 1) == pytest.approx(0.001 * 1e-6 / (1e-6 + 1e-4 / 24))
    assert nowcast_return([0.0] * 24, 0.01, 1) == 0.0


def test_signal_nowcast_scales_with_horizon_and_bar_length():
    close = 100.0 * 1.001 ** np.arange(60)  # a constant 0.1 % per bar, no noise
    hourly = heuristic_signal(features_for(close), "1h", horizon_min=60)
    assert hourly.nowcast_ret == pytest.approx(0.001, rel=1e-6)
    assert heuristic_signal(features_for(close), "1h", horizon_min=120).nowcast_ret == pytest.approx(
        0.002, rel=1e-6
    )
    four_hourly = heuristic_signal(features_for(close, bar_ms=4 * HOUR, timeframe="4h"), "4h", horizon_min=60)
    assert four_hourly.nowcast_ret == pytest.approx(0.00025, rel=1e-6)


# --- the signal on feature frames -----------------------------------------------------------------------


def test_signal_uses_the_latest_bar_features():
    features = features_for(walk(300, drift=-0.001, noise=0.01, seed=3))
    signal = heuristic_signal(features, "1h")
    last = features.row(-1, named=True)
    assert isinstance(signal, HeuristicSignal)
    assert signal.vol == last["vol24"]
    assert signal.vol_regime == classify_vol_regime(last["vol24"], "1h")
    assert signal.risk_score == risk_score(last["vol24"], last["sma12"], last["sma48"], "1h")
    values = [signal.nowcast_ret, signal.vol, signal.risk_score]
    values += [v for row in signal.features_tail for v in row.values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in values)


def test_turbulent_falling_market_scores_riskier_than_a_calm_rising_one():
    calm_up = heuristic_signal(features_for(walk(200, drift=0.002, noise=0.002, seed=4)), "1h")
    wild_down = heuristic_signal(features_for(walk(200, drift=-0.004, noise=0.03, seed=4)), "1h")
    assert calm_up.vol_regime == "calm" and wild_down.vol_regime == "turbulent"
    assert calm_up.risk_score < 0.3 < 0.9 < wild_down.risk_score
    assert calm_up.nowcast_ret > 0 > wild_down.nowcast_ret


def test_features_tail_format():
    features = features_for(walk(100, drift=0.0, noise=0.01, seed=5), symbol="BTC/USDT")
    tail = heuristic_signal(features, "1h").features_tail
    assert len(tail) == TAIL_BARS
    for row, ts in zip(tail, features["ts"].tail(TAIL_BARS), strict=True):
        assert list(row) == ["time", "close", "ret", "vol24", "sma12", "sma48"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["time"])
        assert datetime.strptime(row["time"], "%Y-%m-%dT%H:%M:%S%z") == datetime.fromtimestamp(ts / 1000, UTC)
        assert all(type(row[k]) is float for k in ("close", "ret", "vol24", "sma12", "sma48"))
    assert tail[-1]["time"] == "2024-01-05T03:00:00Z"  # bar 99 after 2024-01-01 00:00


def test_to_dict_is_plain_data():
    signal = heuristic_signal(features_for(walk(60, drift=0.0, noise=0.01, seed=6)), "1h")
    as_dict = signal.to_dict()
    assert set(as_dict) == {"nowcast_ret", "vol", "vol_regime", "risk_score", "features_tail"}
    assert as_dict["features_tail"] == signal.features_tail


# --- bad input ------------------------------------------------------------------------------------------


def test_too_little_history_says_how_much_is_needed():
    features = features_for(walk(MIN_BARS - 1, drift=0.0, noise=0.01, seed=7))
    with pytest.raises(ValueError, match=f"at least {MIN_BARS}"):
        heuristic_signal(features, "1h")
    heuristic_signal(features_for(walk(MIN_BARS, drift=0.0, noise=0.01, seed=7)), "1h")  # exactly enough


def test_a_hole_in_the_last_bars_is_reported():
    features = features_for(walk(200, drift=0.0, noise=0.01, seed=8))
    holed = compute_features(
        features.select("ts", "open", "high", "low", "close", "volume").filter(pl.int_range(pl.len()) != 190)
    )
    with pytest.raises(ValueError, match="contiguous"):
        heuristic_signal(holed, "1h")


def test_missing_columns_are_named():
    features = features_for(walk(100, drift=0.0, noise=0.01, seed=9))
    with pytest.raises(ValueError, match=r"missing \['sma48'\]"):
        heuristic_signal(features.drop("sma48"), "1h")


def test_several_symbols_are_refused():
    a = features_for(walk(100, drift=0.0, noise=0.01, seed=10), symbol="BTC/USDT")
    b = features_for(walk(100, drift=0.0, noise=0.01, seed=11), symbol="ETH/USDT")
    with pytest.raises(ValueError, match="one symbol"):
        heuristic_signal(pl.concat([a, b]), "1h")


def test_non_positive_horizon_is_refused():
    with pytest.raises(ValueError, match="horizon_min"):
        heuristic_signal(features_for(walk(100, drift=0.0, noise=0.01, seed=12)), "1h", horizon_min=0)
