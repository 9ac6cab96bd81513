"""A training run's walk-forward evidence as data, and back: what promotion re-runs the gate on.

`trained_model` stores, with the run, the pooled out-of-sample series of every candidate
(`evidence_frame`: one row per out-of-sample window — fold, ts, symbol, realized volatility, the
window's current realized volatility for the sanity probes, and `forecast_<candidate>`) and the JSON
summary (`WalkForwardResult.summary()`: reference, fingerprint, fold layout, skipped candidates).
`result_from_evidence(frame, summary)` rebuilds a `WalkForwardResult` from the two, scoring each
fold's rows and the pooled series exactly as `walk_forward` did, so `decide_against_all([incumbent,
best_baseline])` in promotion sees the very per-hour losses (and DM tests) the training run saw.
Pure: polars and numpy only; `tracking.py` writes the artifacts, `promotion.py` reads them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from crypto_platform.lib.model.walk_forward import FoldResult, WalkForwardResult, score_block

# Run artifacts: written by `selection_tracking.log_selection`, read by `promotion.promote`.
WALK_FORWARD_JSON = "walk_forward.json"
EVIDENCE_PARQUET = "walk_forward/out_of_sample.parquet"
FORECAST_PREFIX = "forecast_"
RECENT_VOL_COLUMN = "recent_realized_vol"


def evidence_frame(result: WalkForwardResult, recent_realized_vol: np.ndarray | None = None) -> pl.DataFrame:
    """The pooled out-of-sample series, row for row as in `result` (fold by fold).

    `recent_realized_vol`: one per pooled row, the window's realized volatility at bar t (what the
    sanity probes sort by); NaN-filled when not given."""
    n = result.y.size
    recent = np.full(n, np.nan) if recent_realized_vol is None else np.asarray(recent_realized_vol, float)
    if recent.shape != (n,):
        raise ValueError(f"recent_realized_vol must have shape ({n},), got {recent.shape}")
    return pl.DataFrame(
        {
            "fold": result.fold_of_row.astype(np.int32),
            "ts": result.ts.astype(np.int64),
            "symbol": result.symbol.astype(str),
            "realized_vol": result.y.astype(np.float64),
            RECENT_VOL_COLUMN: recent,
            **{f"{FORECAST_PREFIX}{n}": result.forecasts[n].astype(np.float64) for n in result.names},
        }
    )


def result_from_evidence(frame: pl.DataFrame, summary: dict[str, Any]) -> WalkForwardResult:
    """The `WalkForwardResult` whose `evidence_frame` and `summary()` these are (models, per-fold
    parameters, timings and dispersions are not stored: the gate does not read them)."""
    names = tuple(c.removeprefix(FORECAST_PREFIX) for c in frame.columns if c.startswith(FORECAST_PREFIX))
    reference = summary["reference"]
    if reference not in names:
        raise ValueError(f"the evidence has no forecasts of its reference {reference!r}; have {list(names)}")
    fold_of_row = frame["fold"].to_numpy().astype(np.int64)
    y = frame["realized_vol"].to_numpy().astype(np.float64)
    ts = frame["ts"].to_numpy().astype(np.int64)
    symbol = frame["symbol"].to_numpy().astype(object)
    forecasts = {n: frame[f"{FORECAST_PREFIX}{n}"].to_numpy().astype(np.float64) for n in names}
    folds = []
    for info in summary["folds"]:
        k = int(info["fold"])
        rows = fold_of_row == k
        fold_forecasts = {n: f[rows] for n, f in forecasts.items()}
        fold_table, fold_dm = score_block(y[rows], fold_forecasts, reference, ts[rows])
        folds.append(
            FoldResult(
                fold=k,
                train_windows=int(info["train_windows"]),
                test_windows=int(info["test_windows"]),
                test_start_ts=int(info["test_start_ts"]),
                test_end_ts=int(info["test_end_ts"]),
                table=fold_table,
                dm_vs_reference=fold_dm,
                params={},
                seconds={},
                skipped=dict(info.get("skipped") or {}),
                dispersions={},
                forecasts=fold_forecasts,
            )
        )
    if sorted(f.fold for f in folds) != sorted(set(fold_of_row.tolist())):
        raise ValueError("the evidence's folds do not match its summary's fold layout")
    table, dm = score_block(y, forecasts, reference, ts)
    return WalkForwardResult(
        reference=reference,
        folds=tuple(folds),
        names=names,
        y=y,
        ts=ts,
        symbol=symbol,
        fold_of_row=fold_of_row,
        forecasts=forecasts,
        table=table,
        dm_vs_reference=dm,
        forward_log_return=None,
        fingerprint=str(summary.get("fingerprint", "")),
        n_windows=int(summary.get("n_windows", y.size)),
        first_ts=int(ts.min()) if ts.size else 0,
        last_ts=int(ts.max()) if ts.size else 0,
    )


def recent_realized_vol(frame: pl.DataFrame) -> np.ndarray:
    return frame[RECENT_VOL_COLUMN].to_numpy().astype(np.float64)
