"""The forecast's description (regime, risk level, confidence) and the one turbulent-forecast rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crypto_platform.lib.forecast import (
    RISING_RATIO,
    describe_forecast,
    describe_uncertainty,
    forecast_confidence,
    forecast_regime,
    forecast_thresholds,
    is_turbulent_forecast,
    risk_level,
    turbulent_forecast_threshold,
)
from crypto_platform.lib.signals import classify_vol_regime, vol_thresholds
from crypto_platform.lib.stream.alerts import AlertEngine

T0 = 1_748_736_000_000
HOUR = 3_600_000


@pytest.mark.parametrize(("timeframe", "horizon"), [("1h", 24), ("1h", 1), ("4h", 6), ("15m", 96)])
def test_thresholds_are_the_per_bar_ones_scaled_by_the_root_of_the_horizon(timeframe, horizon):
    calm, turbulent = vol_thresholds(timeframe)
    assert forecast_thresholds(timeframe, horizon) == pytest.approx(
        (calm * math.sqrt(horizon), turbulent * math.sqrt(horizon)), rel=1e-12
    )
    assert turbulent_forecast_threshold(timeframe, horizon) == forecast_thresholds(timeframe, horizon)[1]


def test_a_forecast_of_a_normal_market_reads_normal_not_turbulent():
    """The units argument: the 24-bar realized volatility (the model's target) of i.i.d. returns at a
    per-bar σ inside the heuristic's normal band is described as normal; the raw total against the
    per-bar thresholds would be turbulent."""
    sigma = 0.01  # per 1h bar: between calm (0.005) and turbulent (0.015)
    assert classify_vol_regime(sigma, "1h") == "normal"
    returns = np.random.default_rng(7).normal(0.0, sigma, size=(2_000, 24))
    realized_24 = float(np.median(np.sqrt((returns**2).sum(axis=1))))
    assert realized_24 == pytest.approx(sigma * math.sqrt(24), rel=0.05)
    assert forecast_regime(realized_24, "1h", 24) == "normal"
    assert classify_vol_regime(realized_24, "1h") == "turbulent"  # the unit error the scaling avoids


def test_regime_boundaries_calm_below_turbulent_from():
    calm, turbulent = forecast_thresholds("1h", 24)
    assert forecast_regime(0.0, "1h", 24) == "calm"
    assert forecast_regime(math.nextafter(calm, 0), "1h", 24) == "calm"
    assert forecast_regime(calm, "1h", 24) == "normal"
    assert forecast_regime(math.nextafter(turbulent, 0), "1h", 24) == "normal"
    assert forecast_regime(turbulent, "1h", 24) == "turbulent"
    assert is_turbulent_forecast(turbulent, "1h", 24)
    assert not is_turbulent_forecast(math.nextafter(turbulent, 0), "1h", 24)


def test_the_scorer_alerts_exactly_where_the_forecast_is_described_turbulent():
    threshold = turbulent_forecast_threshold("1h", 24)
    assert AlertEngine("1h", horizon_bars=24).forecast_threshold == threshold
    for value in (math.nextafter(threshold, 0), threshold, math.nextafter(threshold, 1)):
        engine = AlertEngine("1h", horizon_bars=24)
        engine.on_forecast("BTC/USDT", T0, 0.0)  # a first calm look arms the gate
        fired = engine.on_forecast("BTC/USDT", T0 + HOUR, value) is not None
        assert fired == is_turbulent_forecast(value, "1h", 24), value


@pytest.mark.parametrize(
    ("regime", "predicted", "current", "level"),
    [
        ("calm", 0.02, 0.02, "low"),
        ("normal", 0.05, 0.05, "medium"),
        ("turbulent", 0.09, 0.09, "high"),
        ("calm", 0.03, 0.02, "medium"),  # 1.5 × current: one step up
        ("calm", math.nextafter(0.03, 0), 0.02, "low"),  # just below the rising ratio
        ("normal", 0.06, 0.02, "high"),
        ("turbulent", 0.5, 0.01, "high"),  # already at the top
        ("normal", 0.05, None, "medium"),  # current vol undefined: no step
        ("normal", 0.05, 0.0, "medium"),
    ],
)
def test_risk_level_table(regime, predicted, current, level):
    assert RISING_RATIO == 1.5
    assert risk_level(regime, predicted, current) == level


def test_confidence_is_one_at_the_weekly_volatility_and_symmetric_in_the_log_ratio():
    assert forecast_confidence(0.04, 0.04) == 1.0
    assert forecast_confidence(0.04 * math.e, 0.04) == pytest.approx(0.5)
    assert forecast_confidence(0.04 / math.e, 0.04) == pytest.approx(0.5)
    assert forecast_confidence(0.04, None) == 0.0
    assert forecast_confidence(0.04, 0.0) == 0.0
    assert forecast_confidence(0.0, 0.04) == 0.0


def test_describe_forecast_combines_the_three():
    _, turbulent = forecast_thresholds("1h", 24)
    described = describe_forecast(turbulent * 1.2, "1h", 24, realized_vol_24=0.05, realized_vol_168=0.05)
    assert described.regime == "turbulent" and described.risk_level == "high"
    assert described.confidence == pytest.approx(1 / (1 + abs(math.log(turbulent * 1.2 / 0.05))))
    quiet = describe_forecast(0.01, "1h", 24, realized_vol_24=None, realized_vol_168=None)
    assert (quiet.regime, quiet.risk_level, quiet.confidence) == ("calm", "low", 0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.01])
def test_unusable_forecasts_are_rejected(bad):
    with pytest.raises(ValueError, match="forecast"):
        describe_forecast(bad, "1h", 24, 0.05, 0.05)


def test_horizon_must_be_a_positive_bar_count():
    with pytest.raises(ValueError, match="horizon_bars"):
        forecast_thresholds("1h", 0)


def test_uncertainty_has_the_dispersions_intervals_and_a_normal_var_and_es():
    from crypto_platform.lib.model.intervals import fit_dispersion

    rng = np.random.default_rng(1)
    dispersion = fit_dispersion(rng.normal(-0.2, 0.6, 500), levels=(0.8, 0.95))
    described = describe_uncertainty(0.04, dispersion)
    (i80, i95) = described.intervals
    assert (i80.level, i95.level) == (0.8, 0.95)
    assert i80.lower == pytest.approx(0.04 * math.exp(dispersion.lower[0] / 2))
    assert i95.upper == pytest.approx(0.04 * math.exp(dispersion.upper[1] / 2))
    assert i95.lower < i80.lower < 0.04 < i80.upper < i95.upper
    # r ~ N(0, 0.04²): VaR_99 = 1 − exp(−z·σ); ES is the mean loss beyond it, checked by simulation.
    z = 2.3263478740408408
    assert described.var_level == 0.99
    assert described.value_at_risk == pytest.approx(1 - math.exp(-z * 0.04), rel=1e-12)
    losses = 1 - np.exp(rng.normal(0.0, 0.04, 2_000_000))
    tail = losses[losses >= described.value_at_risk]
    assert described.expected_shortfall == pytest.approx(tail.mean(), rel=0.01)
    # Without a dispersion: no intervals, the tail risk still (it needs the forecast only).
    bare = describe_uncertainty(0.04, None)
    assert bare.intervals is None and bare.value_at_risk == described.value_at_risk
    with pytest.raises(ValueError, match="finite number"):
        describe_uncertainty(float("nan"), dispersion)
