"""One evaluation table for every forecaster scored on the same block.

The comparison that matters is a model against the best baseline, not against the naive one: the
best baseline (lowest primary loss among the baselines present) is the reference of every
Diebold–Mariano test in the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from crypto_platform.lib.model.baselines import BASELINE_NAMES
from crypto_platform.lib.model.metrics import (
    DEFAULT_HAC_LAG,
    DieboldMariano,
    diebold_mariano,
    mincer_zarnowitz,
    mse_var,
    qlike,
    qlike_losses,
    rmse_vol,
    squared_error_losses,
)


def _squared_vol_errors(realized_var: np.ndarray, forecast_var: np.ndarray) -> np.ndarray:
    return (np.sqrt(realized_var) - np.sqrt(forecast_var)) ** 2


# Per-observation loss whose mean is (the square of, for rmse) the primary metric; DM tests its differential.
_LOSSES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "qlike": qlike_losses,
    "mse_var": squared_error_losses,
    "rmse_vol": _squared_vol_errors,
}


@dataclass(frozen=True)
class EvaluationRow:
    name: str
    kind: str  # "baseline" or "model"
    qlike: float
    mse_var: float
    rmse_vol: float
    mz_a: float
    mz_b: float
    mz_r2: float
    dm_stat: float  # vs the best baseline; negative = this forecaster has the lower loss
    dm_pvalue: float
    n: int


@dataclass(frozen=True)
class EvaluationTable:
    rows: tuple[EvaluationRow, ...]  # sorted by the primary metric, best first
    primary: str
    best_baseline: str | None
    hac_lag: int
    dm_loss: str

    @property
    def best(self) -> str:
        return self.rows[0].name

    def row(self, name: str) -> EvaluationRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no forecaster {name!r} in the table; have {[r.name for r in self.rows]}")

    def to_records(self) -> list[dict[str, float | int | str | None]]:
        """JSON-friendly rows (NaN becomes None)."""
        out = []
        for r in self.rows:
            rec = asdict(r)
            out.append(
                {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
            )
        return out

    def to_markdown(self) -> str:
        head = (
            "| forecaster | kind | QLIKE | MSE (var) | RMSE (vol) | MZ a | MZ b | MZ R² | "
            f"DM vs {self.best_baseline or '—'} | p | n |"
        )
        lines = [head, "|" + "---|" * 11]
        for r in self.rows:
            cells = [
                f"**{r.name}**" if r.name == self.best else r.name,
                r.kind,
                _fmt(r.qlike, ".4f"),
                _fmt(r.mse_var, ".3e"),
                _fmt(r.rmse_vol, ".5f"),
                _fmt(r.mz_a, ".2e"),
                _fmt(r.mz_b, ".3f"),
                _fmt(r.mz_r2, ".3f"),
                _fmt(r.dm_stat, ".2f"),
                _fmt(r.dm_pvalue, ".3g"),
                str(r.n),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"\nPrimary metric: {self.primary} (lower is better). DM: two-sided Diebold–Mariano on the "
            f"{self.dm_loss} loss differential against the best baseline, "
            f"Newey–West HAC with {self.hac_lag} lags."
        )
        return "\n".join(lines)


def _fmt(value: float, spec: str) -> str:
    return "—" if not math.isfinite(value) else format(value, spec)


def _by_time(d: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
    """Mean loss differential per timestamp, in time order.

    Symbols scored at the same hour have strongly correlated losses (BTC and ETH crash together);
    treating them as separate observations would overstate the evidence, so the test runs on the
    cross-sectional mean series instead.
    """
    if ts is None:
        return d
    uniq, inverse = np.unique(np.asarray(ts), return_inverse=True)
    return np.bincount(inverse, weights=d, minlength=uniq.size) / np.bincount(inverse, minlength=uniq.size)


def evaluate_forecasts(
    y_true_vol: np.ndarray,
    forecasts: Mapping[str, np.ndarray],
    primary: str = "qlike",
    hac_lag: int = DEFAULT_HAC_LAG,
    baseline_names: Collection[str] = BASELINE_NAMES,
    ts: np.ndarray | None = None,
    hln: bool = False,
) -> EvaluationTable:
    """Score each forecast (volatility, same units as the target) on realized volatility `y_true_vol`.

    `ts` (optional, one per observation) makes the Diebold–Mariano test run on the per-timestamp mean
    loss differential, which is what pooled multi-symbol blocks need. Forecasts named in
    `baseline_names` are baselines; every other one is a model.
    """
    if primary not in _LOSSES:
        raise ValueError(f"primary must be one of {sorted(_LOSSES)}, got {primary!r}")
    if not forecasts:
        raise ValueError("no forecasts to evaluate")
    y = np.asarray(y_true_vol, dtype=np.float64)
    if ts is not None and np.shape(ts) != y.shape:
        raise ValueError(f"ts must have the shape of y_true_vol {y.shape}, got {np.shape(ts)}")
    realized_var = y**2
    fvar: dict[str, np.ndarray] = {}
    for name, f in forecasts.items():
        f = np.asarray(f, dtype=np.float64)
        if f.shape != y.shape:
            raise ValueError(f"forecast {name!r} has shape {f.shape}, the target {y.shape}")
        if not np.all(np.isfinite(f)) or np.any(f <= 0):
            raise ValueError(f"forecast {name!r} must be finite and strictly positive volatility")
        fvar[name] = f**2

    scores = {}
    for name, h in fvar.items():
        mz = mincer_zarnowitz(realized_var, h)
        scores[name] = {
            "qlike": qlike(realized_var, h),
            "mse_var": mse_var(realized_var, h),
            "rmse_vol": rmse_vol(y, np.sqrt(h)),
            "mz_a": mz.a,
            "mz_b": mz.b,
            "mz_r2": mz.r2,
        }
    baselines = [n for n in fvar if n in baseline_names]
    best_baseline = min(baselines, key=lambda n: scores[n][primary]) if baselines else None

    loss = _LOSSES[primary]
    rows = []
    for name, h in fvar.items():
        dm_stat = dm_p = math.nan
        if best_baseline is not None and name != best_baseline:
            d = loss(realized_var, h) - loss(realized_var, fvar[best_baseline])
            series = _by_time(d, ts)
            dm = diebold_mariano(series, np.zeros_like(series), lag=hac_lag, hln=hln)
            dm_stat, dm_p = dm.stat, dm.pvalue
        rows.append(
            EvaluationRow(
                name=name,
                kind="baseline" if name in baseline_names else "model",
                dm_stat=dm_stat,
                dm_pvalue=dm_p,
                n=int(y.size),
                **scores[name],
            )
        )
    rows.sort(key=lambda r: (getattr(r, primary), r.name))
    return EvaluationTable(
        rows=tuple(rows), primary=primary, best_baseline=best_baseline, hac_lag=hac_lag, dm_loss=primary
    )


def diebold_mariano_against(
    y_true_vol: np.ndarray,
    forecasts: Mapping[str, np.ndarray],
    reference: str,
    ts: np.ndarray | None = None,
    hac_lag: int = DEFAULT_HAC_LAG,
) -> dict[str, DieboldMariano]:
    """QLIKE Diebold–Mariano test of every forecast against one named reference (plain HAR, say).

    Same construction as the table's test against the best baseline: loss differential per observation,
    averaged per timestamp when `ts` is given, Newey–West with `hac_lag` lags. The reference itself is
    left out of the result.
    """
    if reference not in forecasts:
        raise KeyError(f"reference {reference!r} is not among the forecasts {sorted(forecasts)}")
    realized_var = np.asarray(y_true_vol, dtype=np.float64) ** 2
    ref_loss = qlike_losses(realized_var, np.asarray(forecasts[reference], dtype=np.float64) ** 2)
    out = {}
    for name, f in forecasts.items():
        if name == reference:
            continue
        d = qlike_losses(realized_var, np.asarray(f, dtype=np.float64) ** 2) - ref_loss
        series = _by_time(d, ts)
        out[name] = diebold_mariano(series, np.zeros_like(series), lag=hac_lag)
    return out
