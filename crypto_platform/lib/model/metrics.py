"""Forecast losses and tests for volatility forecasts.

Conventions: σ² is the realized variance of the target window (y², y = realized volatility) and h
the forecast variance (forecast volatility²). Every loss takes arrays of equal length.

QLIKE (Patton 2011, the form robust to noise in the variance proxy, minimised at h = σ² and zero
there):  L(σ², h) = σ²/h − ln(σ²/h) − 1.  It punishes under-prediction of variance more than
over-prediction, which is what a risk number should do.

Non-positive forecasts raise a ValueError instead of being clipped: a model that predicts zero
variance is broken and must be seen as such.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# 24-bar targets of consecutive bars share 23 bars, so their loss differentials are autocorrelated up
# to lag 23 (an MA(23) under the null): the HAC variance needs at least that many lags.
DEFAULT_HAC_LAG = 23


def _pair(realized: np.ndarray, forecast: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    realized = np.asarray(realized, dtype=np.float64)
    forecast = np.asarray(forecast, dtype=np.float64)
    if realized.shape != forecast.shape or realized.ndim != 1:
        raise ValueError(
            "realized and forecast must be 1-d arrays of one length, "
            f"got {realized.shape} and {forecast.shape}"
        )
    if realized.size == 0:
        raise ValueError("no observations to score")
    if not np.all(np.isfinite(forecast)):
        raise ValueError(f"forecast {what} has {int((~np.isfinite(forecast)).sum())} non-finite values")
    if not np.all(np.isfinite(realized)):
        raise ValueError(f"realized {what} has {int((~np.isfinite(realized)).sum())} non-finite values")
    return realized, forecast


def _positive(values: np.ndarray, label: str) -> None:
    bad = values <= 0
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{label} must be strictly positive: {int(bad.sum())} of {values.size} are <= 0 "
            f"(first at index {first}: {values[first]!r}); fix the forecaster rather than clipping"
        )


def qlike_losses(realized_var: np.ndarray, forecast_var: np.ndarray) -> np.ndarray:
    """Per-observation QLIKE: σ²/h − ln(σ²/h) − 1."""
    realized_var, forecast_var = _pair(realized_var, forecast_var, "variance")
    _positive(forecast_var, "forecast variance")
    _positive(realized_var, "realized variance (QLIKE takes its log)")
    ratio = realized_var / forecast_var
    return ratio - np.log(ratio) - 1.0


def qlike(realized_var: np.ndarray, forecast_var: np.ndarray) -> float:
    return float(np.mean(qlike_losses(realized_var, forecast_var)))


def squared_error_losses(realized_var: np.ndarray, forecast_var: np.ndarray) -> np.ndarray:
    """Per-observation (σ² − h)², the MSE-on-variance loss (also robust in Patton's sense)."""
    realized_var, forecast_var = _pair(realized_var, forecast_var, "variance")
    _positive(forecast_var, "forecast variance")
    return (realized_var - forecast_var) ** 2


def mse_var(realized_var: np.ndarray, forecast_var: np.ndarray) -> float:
    return float(np.mean(squared_error_losses(realized_var, forecast_var)))


def rmse_vol(realized_vol: np.ndarray, forecast_vol: np.ndarray) -> float:
    """√mean((σ − √h)²), on volatilities (same units as the target y)."""
    realized_vol, forecast_vol = _pair(realized_vol, forecast_vol, "volatility")
    _positive(forecast_vol, "forecast volatility")
    return float(np.sqrt(np.mean((realized_vol - forecast_vol) ** 2)))


@dataclass(frozen=True)
class MincerZarnowitz:
    """σ² = a + b·h + e by OLS. An unbiased forecast has a = 0, b = 1; R² measures its information."""

    a: float
    b: float
    r2: float


def mincer_zarnowitz(realized_var: np.ndarray, forecast_var: np.ndarray) -> MincerZarnowitz:
    """NaNs (not an error) when the forecast is constant: then the slope is not identified."""
    realized_var, forecast_var = _pair(realized_var, forecast_var, "variance")
    _positive(forecast_var, "forecast variance")
    h_dev = forecast_var - forecast_var.mean()
    sxx = float(h_dev @ h_dev)
    if realized_var.size < 2 or np.ptp(forecast_var) <= 1e-12 * float(forecast_var.mean()):
        return MincerZarnowitz(math.nan, math.nan, math.nan)
    b = float(h_dev @ (realized_var - realized_var.mean())) / sxx
    a = float(realized_var.mean() - b * forecast_var.mean())
    resid = realized_var - a - b * forecast_var
    tss = float(np.sum((realized_var - realized_var.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / tss if tss > 0 else math.nan
    return MincerZarnowitz(a, b, r2)


def newey_west_variance(x: np.ndarray, lag: int) -> float:
    """Long-run variance of a series by Newey–West: γ̂0 + 2 Σ_{j=1..L} (1 − j/(L+1)) γ̂j,

    with γ̂j = (1/n) Σ_{t=j+1..n} (x_t − x̄)(x_{t−j} − x̄). Bartlett weights keep it non-negative.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("x must be a non-empty 1-d array")
    if lag < 0:
        raise ValueError("lag must be >= 0")
    n = x.size
    dev = x - x.mean()
    total = float(dev @ dev) / n
    for j in range(1, min(lag, n - 1) + 1):
        total += 2.0 * (1.0 - j / (lag + 1)) * float(dev[j:] @ dev[:-j]) / n
    return total


@dataclass(frozen=True)
class DieboldMariano:
    """d = loss_a − loss_b: a negative statistic means forecast a has the lower loss."""

    stat: float
    pvalue: float
    mean_diff: float
    lag: int
    n: int
    hln: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def diebold_mariano(
    loss_a: np.ndarray, loss_b: np.ndarray, lag: int = DEFAULT_HAC_LAG, hln: bool = False
) -> DieboldMariano:
    """Diebold–Mariano test of equal expected loss, two-sided.

    DM = d̄ / √(LRV/n), LRV the Newey–West (Bartlett) long-run variance of d with `lag` lags; the
    p-value is from N(0, 1). With `hln=True` the Harvey–Leybourne–Newbold (1997) small-sample
    correction is applied, DM·√((n + 1 − 2k + k(k−1)/n)/n) with forecast horizon k = lag + 1, and
    the p-value comes from Student t with n − 1 degrees of freedom. (HLN derived the factor for the
    rectangular-kernel variance; with Bartlett weights it is the customary approximation.)
    """
    a = np.asarray(loss_a, dtype=np.float64)
    b = np.asarray(loss_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("loss_a and loss_b must be 1-d arrays of one length")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("losses must be finite")
    d = a - b
    n = d.size
    if n < 2:
        raise ValueError("the Diebold–Mariano test needs at least 2 observations")
    mean = float(d.mean())
    lrv = newey_west_variance(d, lag)
    if lrv <= 0.0:
        # Identical losses (or a constant gap): no sampling variation to test against.
        stat = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        stat = mean / math.sqrt(lrv / n)
    if hln:
        k = lag + 1
        if n <= k:
            raise ValueError(f"HLN correction needs more observations than the horizon: n={n}, horizon {k}")
        factor = (n + 1 - 2 * k + k * (k - 1) / n) / n
        stat *= math.sqrt(factor)
        from scipy.stats import t as student_t  # scipy comes with arch; only needed for this option

        pvalue = 2.0 * float(student_t.sf(abs(stat), df=n - 1)) if math.isfinite(stat) else 0.0
    else:
        pvalue = math.erfc(abs(stat) / math.sqrt(2.0))
    return DieboldMariano(stat=stat, pvalue=pvalue, mean_diff=mean, lag=lag, n=n, hln=hln)
