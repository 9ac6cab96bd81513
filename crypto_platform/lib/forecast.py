"""How a volatility forecast is described: its regime, risk level and confidence, and when it is turbulent.

Read by every face that shows a forecast (the API's ml-signal, GraphQL, gRPC) and by the scorer's
forecast alert, so "the forecast is turbulent" means one thing everywhere.

Units. The forecast is the model's target (lib.model.windows): the realized volatility of the next
`horizon_bars` bars, √Σ r² of their log returns, a total over the horizon. The regime thresholds of
lib.signals are per-bar volatilities (vol24: the standard deviation of one bar's return). For
independent returns the total grows as √horizon, so a forecast at a per-bar volatility σ is about
σ·√horizon: the thresholds are scaled UP by √horizon to meet the forecast (the same as scaling the
forecast DOWN by √horizon to meet the per-bar thresholds). Comparing the raw forecast with the per-bar
thresholds would call almost every 24-bar forecast turbulent (0.015 per bar is ~0.073 over a day).

`realized_vol_24` and `realized_vol_168` of lib.features are on the same 24-bar total scale as the
forecast, so the risk step-up and the confidence compare like with like.

Uncertainty (`describe_uncertainty`, the same function for batch reports and every online face):
- predictive intervals on the next `horizon_bars` bars' realized volatility, one per level the model's
  `LogResidualDispersion` was fitted at (e.g. 80 % and 95 %), from `intervals.volatility_interval`
  (empirical quantiles of validation log-residuals); None when the model carries no dispersion (the
  window-contract LSTM and old registry versions).
- VaR and ES at `VAR_LEVEL` (99 %) of a unit long position over the same horizon (one day for the
  hourly, 24-bar champion), as a fraction of the position's value, from `intervals.value_at_risk` /
  `expected_shortfall`. Assumption: the horizon's log return is N(0, forecast²) — zero mean,
  conditionally normal given the forecast (RiskMetrics), ignoring the extra tail that the forecast's
  own uncertainty adds. Defined for every model, with or without a dispersion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from crypto_platform.lib.model.intervals import (
    VAR_LEVEL,
    LogResidualDispersion,
    expected_shortfall,
    value_at_risk,
    volatility_interval,
)
from crypto_platform.lib.signals import VolRegime, vol_thresholds

RiskLevel = Literal["low", "medium", "high"]

# Risk levels follow the forecast's regime; a forecast this far above the current realized volatility
# raises the level by one step (volatility is expected to rise, not just be high).
RISING_RATIO = 1.5
_LEVELS: tuple[RiskLevel, ...] = ("low", "medium", "high")
_REGIME_LEVEL: dict[VolRegime, int] = {"calm": 0, "normal": 1, "turbulent": 2}


@dataclass(frozen=True)
class ForecastDescription:
    """`regime`: calm / normal / turbulent on the heuristic's scale. `risk_level`: low / medium / high.
    `confidence` ∈ [0, 1]: how consistent the forecast is with the last week's realized volatility
    (a plausibility score, not a calibrated probability; 0 when there is no week to compare with)."""

    regime: VolRegime
    risk_level: RiskLevel
    confidence: float


def forecast_thresholds(timeframe: str, horizon_bars: int) -> tuple[float, float]:
    """(calm below, turbulent from) for a forecast of `horizon_bars` bars of `timeframe`: the per-bar
    thresholds of lib.signals × √horizon_bars."""
    if not (isinstance(horizon_bars, int) and horizon_bars >= 1):
        raise ValueError(f"horizon_bars must be an integer ≥ 1, got {horizon_bars!r}")
    calm, turbulent = vol_thresholds(timeframe)
    scale = math.sqrt(horizon_bars)
    return calm * scale, turbulent * scale


def turbulent_forecast_threshold(timeframe: str, horizon_bars: int) -> float:
    """The forecast from which it is turbulent (the scorer's default forecast-alert threshold)."""
    return forecast_thresholds(timeframe, horizon_bars)[1]


def forecast_regime(predicted: float, timeframe: str, horizon_bars: int) -> VolRegime:
    """'calm' below the scaled calm threshold, 'turbulent' from the scaled turbulent one, else 'normal'."""
    _check_forecast(predicted)
    calm, turbulent = forecast_thresholds(timeframe, horizon_bars)
    if predicted < calm:
        return "calm"
    if predicted >= turbulent:
        return "turbulent"
    return "normal"


def is_turbulent_forecast(predicted: float, timeframe: str, horizon_bars: int) -> bool:
    return forecast_regime(predicted, timeframe, horizon_bars) == "turbulent"


def risk_level(regime: VolRegime, predicted: float, realized_vol_24: float | None) -> RiskLevel:
    """low / medium / high from the regime, one step up (at most high) when the forecast is at least
    `RISING_RATIO` × the current 24-bar realized volatility (unknown or zero current vol: no step)."""
    level = _REGIME_LEVEL[regime]
    if realized_vol_24 is not None and realized_vol_24 > 0 and predicted >= RISING_RATIO * realized_vol_24:
        level = min(level + 1, len(_LEVELS) - 1)
    return _LEVELS[level]


def forecast_confidence(predicted: float, realized_vol_168: float | None) -> float:
    """1 / (1 + |ln(forecast / realized_vol_168)|): 1 when the forecast equals the last week's realized
    volatility, falling as they part in either direction; 0 without a positive week or forecast."""
    if realized_vol_168 is None or not realized_vol_168 > 0 or not predicted > 0:
        return 0.0
    return 1.0 / (1.0 + abs(math.log(predicted / realized_vol_168)))


def describe_forecast(
    predicted: float,
    timeframe: str,
    horizon_bars: int,
    realized_vol_24: float | None,
    realized_vol_168: float | None,
) -> ForecastDescription:
    """The description of a forecast of the next `horizon_bars` bars' realized volatility, given the
    newest bar's realized_vol_24 and realized_vol_168 (None where undefined)."""
    regime = forecast_regime(predicted, timeframe, horizon_bars)
    return ForecastDescription(
        regime=regime,
        risk_level=risk_level(regime, predicted, realized_vol_24),
        confidence=forecast_confidence(predicted, realized_vol_168),
    )


@dataclass(frozen=True)
class PredictiveInterval:
    """[lower, upper] holds the next horizon's realized volatility with probability `level` (0.8, 0.95),
    on the forecast's scale."""

    level: float
    lower: float
    upper: float


@dataclass(frozen=True)
class ForecastUncertainty:
    """Intervals (None without a dispersion) and the tail risk of a unit long position over the
    forecast's horizon at `var_level`, both as fractions of the position's value (see the module doc)."""

    intervals: tuple[PredictiveInterval, ...] | None
    value_at_risk: float
    expected_shortfall: float
    var_level: float


def describe_uncertainty(
    predicted: float, dispersion: LogResidualDispersion | None, var_level: float = VAR_LEVEL
) -> ForecastUncertainty:
    """The intervals of `dispersion`'s levels around the forecast `predicted`, and its VaR / ES."""
    _check_forecast(predicted)
    intervals = None
    if dispersion is not None:
        bounds = []
        for level in dispersion.levels:
            lower, upper = volatility_interval(predicted, dispersion, level)
            bounds.append(PredictiveInterval(float(level), float(lower), float(upper)))
        intervals = tuple(bounds)
    return ForecastUncertainty(
        intervals=intervals,
        value_at_risk=float(value_at_risk(predicted, var_level)),
        expected_shortfall=float(expected_shortfall(predicted, var_level)),
        var_level=float(var_level),
    )


def _check_forecast(predicted: float) -> None:
    if not (isinstance(predicted, int | float) and math.isfinite(predicted) and predicted >= 0):
        raise ValueError(f"a volatility forecast must be a finite number ≥ 0, got {predicted!r}")
