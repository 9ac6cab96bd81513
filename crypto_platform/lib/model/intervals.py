"""Uncertainty around a volatility forecast: a predictive interval and 1-day VaR / ES, pure functions.

Predictive interval. The log-residual e = ln(RV²) − ln(ĥ) of a forecaster, measured on a validation
block it was not fitted on, is summarised by its empirical quantiles (`LogResidualDispersion`). The
interval for the next-24-bar realized volatility at level p is

    [ √ĥ · exp(q_{(1−p)/2} / 2),  √ĥ · exp(q_{(1+p)/2} / 2) ]

Empirical quantiles rather than ±z·s: the log-residuals of a 24-return RV are left-skewed (quiet days
are quieter than loud days are loud), so a symmetric normal band would be off at both ends.

VaR / ES. For a unit long position over the 24 bars, the log return is taken as r ~ N(0, ĥ)
(zero mean, conditionally normal given the forecast variance — the usual RiskMetrics assumption; it
ignores the extra tail mass the uncertainty of ĥ itself adds). Loss L = 1 − e^r (a fraction of the
position's value):

    VaR_α = 1 − exp(−z_α √ĥ)
    ES_α  = E[L | L ≥ VaR_α] = 1 − exp(ĥ/2) · Φ(−z_α − √ĥ) / (1 − α)

with z_α the standard normal α-quantile (the ES line is E[e^r; r < −z√ĥ] for a normal r).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_LEVELS: tuple[float, ...] = (0.8, 0.95)
VAR_LEVEL = 0.99


def _normal_ppf(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr  # vectorised Φ; scipy is already a dependency through arch

    return ndtr(x)


@dataclass(frozen=True)
class LogResidualDispersion:
    """Empirical quantiles of ln(RV²) − ln(ĥ) at the interval ends of `levels`, plus mean and sd."""

    levels: tuple[float, ...]
    lower: tuple[float, ...]  # q_{(1−p)/2} per level
    upper: tuple[float, ...]  # q_{(1+p)/2} per level
    mean: float
    sd: float
    n: int

    def to_dict(self) -> dict[str, object]:
        return {
            "levels": list(self.levels),
            "lower_log_residual": list(self.lower),
            "upper_log_residual": list(self.upper),
            "mean": self.mean,
            "sd": self.sd,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LogResidualDispersion:
        return cls(
            levels=tuple(float(v) for v in data["levels"]),  # type: ignore[union-attr]
            lower=tuple(float(v) for v in data["lower_log_residual"]),  # type: ignore[union-attr]
            upper=tuple(float(v) for v in data["upper_log_residual"]),  # type: ignore[union-attr]
            mean=float(data["mean"]),  # type: ignore[arg-type]
            sd=float(data["sd"]),  # type: ignore[arg-type]
            n=int(data["n"]),  # type: ignore[call-overload]
        )


def log_residuals(realized_vol: np.ndarray, forecast_vol: np.ndarray) -> np.ndarray:
    """ln(RV²) − ln(ĥ) for positive realized volatilities (zero-RV rows are dropped: no log)."""
    y = np.asarray(realized_vol, dtype=np.float64)
    f = np.asarray(forecast_vol, dtype=np.float64)
    if y.shape != f.shape or y.ndim != 1:
        raise ValueError(
            f"realized and forecast volatility must be 1-d of one length, got {y.shape}, {f.shape}"
        )
    if not (np.all(np.isfinite(f)) and np.all(f > 0)):
        raise ValueError("forecast volatility must be finite and > 0")
    keep = np.isfinite(y) & (y > 0)
    return 2.0 * (np.log(y[keep]) - np.log(f[keep]))


def fit_dispersion(residuals: np.ndarray, levels: Sequence[float] = DEFAULT_LEVELS) -> LogResidualDispersion:
    """Quantiles of validation log-residuals (from `log_residuals`) for each central interval level."""
    e = np.asarray(residuals, dtype=np.float64)
    e = e[np.isfinite(e)]
    levels = tuple(float(p) for p in levels)
    if any(not 0.0 < p < 1.0 for p in levels):
        raise ValueError(f"interval levels must be in (0, 1), got {levels}")
    if e.size < 20:
        raise ValueError(f"need at least 20 validation residuals for an interval, got {e.size}")
    lower = tuple(float(np.quantile(e, (1.0 - p) / 2.0)) for p in levels)
    upper = tuple(float(np.quantile(e, (1.0 + p) / 2.0)) for p in levels)
    return LogResidualDispersion(levels, lower, upper, float(e.mean()), float(e.std()), int(e.size))


def volatility_interval(
    forecast_vol: np.ndarray, dispersion: LogResidualDispersion, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bounds on the next-24-bar realized volatility at one of the dispersion's levels."""
    try:
        k = next(i for i, p in enumerate(dispersion.levels) if abs(p - level) < 1e-12)
    except StopIteration:
        raise ValueError(
            f"level {level} was not fitted; the dispersion has {list(dispersion.levels)}"
        ) from None
    f = np.asarray(forecast_vol, dtype=np.float64)
    return f * math.exp(0.5 * dispersion.lower[k]), f * math.exp(0.5 * dispersion.upper[k])


def interval_coverage(
    realized_vol: np.ndarray, forecast_vol: np.ndarray, dispersion: LogResidualDispersion
) -> dict[float, float]:
    """Share of realized volatilities inside each level's interval (zero RVs count as below it)."""
    y = np.asarray(realized_vol, dtype=np.float64)
    out = {}
    for level in dispersion.levels:
        lo, hi = volatility_interval(forecast_vol, dispersion, level)
        out[level] = float(np.mean((y >= lo) & (y <= hi)))
    return out


def value_at_risk(forecast_vol: np.ndarray, level: float = VAR_LEVEL) -> np.ndarray:
    """VaR_α of a unit long position over the forecast horizon (fraction of value), r ~ N(0, ĥ)."""
    if not 0.5 < level < 1.0:
        raise ValueError(f"VaR level must be in (0.5, 1), got {level}")
    sigma = np.asarray(forecast_vol, dtype=np.float64)
    return 1.0 - np.exp(-_normal_ppf(level) * sigma)


def expected_shortfall(forecast_vol: np.ndarray, level: float = VAR_LEVEL) -> np.ndarray:
    """ES_α = E[1 − e^r | r < −z_α σ] of a unit long position, r ~ N(0, σ²)."""
    if not 0.5 < level < 1.0:
        raise ValueError(f"ES level must be in (0.5, 1), got {level}")
    sigma = np.asarray(forecast_vol, dtype=np.float64)
    z = _normal_ppf(level)
    return 1.0 - np.exp(0.5 * sigma**2) * _normal_cdf(-z - sigma) / (1.0 - level)


def var_breach_rate(
    forward_log_return: np.ndarray, forecast_vol: np.ndarray, level: float = VAR_LEVEL
) -> float:
    """Share of horizons whose realised loss 1 − e^r exceeded the VaR (nominal 1 − level)."""
    r = np.asarray(forward_log_return, dtype=np.float64)
    loss = 1.0 - np.exp(r)
    return float(np.mean(loss > value_at_risk(forecast_vol, level)))
