"""Forecast combination: a convex, QLIKE-optimal mix of several forecasters' log variances.

    ln ĥ_comb = Σ_i w_i ln ĥ_i + ln c,   w_i ≥ 0, Σ w_i = 1

Weights are fitted on a validation block (forecasts of models not fitted on it) by minimising QLIKE,
parameterised by a softmax so the optimiser works unconstrained; c is then the QLIKE-optimal scale of
the mixed forecast (mean of RV² / ĥ), because a geometric mean of unbiased forecasts is biased low.
Combining in logs keeps every mixture positive and treats a forecaster's relative errors alike at every
volatility level. Convexity (no negative weights, no free intercept) is what keeps combinations stable
out of sample: unconstrained regression weights on collinear forecasts overfit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from crypto_platform.lib.model.metrics import qlike


@dataclass(frozen=True)
class CombinationWeights:
    weights: dict[str, float]
    log_scale: float
    validation_qlike: float

    def to_dict(self) -> dict[str, object]:
        return {
            "weights": dict(self.weights),
            "log_scale": self.log_scale,
            "validation_qlike": self.validation_qlike,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CombinationWeights:
        weights = data["weights"]
        if not isinstance(weights, dict) or not weights:
            raise ValueError("a combination needs a non-empty weights mapping")
        return cls(
            weights={str(k): float(v) for k, v in weights.items()},
            log_scale=float(data["log_scale"]),  # type: ignore[arg-type]
            validation_qlike=float(data["validation_qlike"]),  # type: ignore[arg-type]
        )


def _stack(forecast_vol: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    cols = []
    for name in names:
        f = np.asarray(forecast_vol[name], dtype=np.float64)
        if not (np.all(np.isfinite(f)) and np.all(f > 0)):
            raise ValueError(f"forecast {name!r} must be finite and > 0 volatility")
        cols.append(2.0 * np.log(f))
    return np.column_stack(cols)


def fit_combination(realized_vol: np.ndarray, forecast_vol: Mapping[str, np.ndarray]) -> CombinationWeights:
    """Convex log-space weights minimising validation QLIKE (rows with zero RV are skipped)."""
    from scipy.optimize import minimize  # scipy comes with arch

    names = list(forecast_vol)
    if not names:
        raise ValueError("no forecasts to combine")
    y = np.asarray(realized_vol, dtype=np.float64)
    keep = np.isfinite(y) & (y > 0)
    logs = _stack(forecast_vol, names)[keep]
    rv2 = y[keep] ** 2
    if rv2.size < 20:
        raise ValueError(f"need at least 20 validation rows to fit a combination, got {rv2.size}")

    def loss(theta: np.ndarray) -> float:
        w = np.exp(theta - theta.max())
        w /= w.sum()
        log_h = logs @ w
        # Profile the scale out: for a given mix, c = mean(RV²/h) minimises QLIKE.
        log_h = log_h + math.log(float(np.mean(rv2 * np.exp(-log_h))))
        ratio = rv2 * np.exp(-log_h)
        return float(np.mean(ratio - np.log(ratio) - 1.0))

    best = minimize(
        loss,
        np.zeros(len(names)),
        method="Nelder-Mead" if len(names) > 1 else "Powell",
        options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000},
    )
    theta = best.x
    w = np.exp(theta - theta.max())
    w /= w.sum()
    log_h = logs @ w
    log_scale = math.log(float(np.mean(rv2 * np.exp(-log_h))))
    weights = {n: float(v) for n, v in zip(names, w, strict=True)}
    return CombinationWeights(weights, log_scale, qlike(rv2, np.exp(log_h + log_scale)))


def combine(weights: CombinationWeights, forecast_vol: Mapping[str, np.ndarray]) -> np.ndarray:
    """The combined volatility forecast for new rows (every weighted forecaster must be present)."""
    missing = [n for n in weights.weights if n not in forecast_vol]
    if missing:
        raise KeyError(f"the combination needs forecasts from {missing}")
    names = list(weights.weights)
    w = np.array([weights.weights[n] for n in names])
    log_h = _stack(forecast_vol, names) @ w + weights.log_scale
    return np.exp(0.5 * log_h)
