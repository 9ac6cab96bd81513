"""Shared pieces of training, framework-free: the label column, the too-little-data error, fitting the
baselines on a block, the drift reference sample and column selection of windows.

The pipeline's training step is `selection.select_and_fit` (walk-forward of every candidate, the gate,
the winner refitted); the track record (`lib.track_record`) refits the baselines with `fit_baselines`.
Nothing here touches network or disk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from crypto_platform.lib.model.baselines import BASELINES, Forecaster
from crypto_platform.lib.model.windows import WindowSet

LABEL_COLUMN = "realized_vol_24"  # current realized volatility: the probes' and label drift's yardstick


class InsufficientDataError(ValueError):
    """Too few complete windows to train and evaluate."""


def fit_baselines(train: WindowSet, names: Sequence[str]) -> tuple[dict[str, Forecaster], dict[str, str]]:
    """Fit each named baseline on the training block; one that cannot be fitted is reported, not fatal.

    GARCH needs 500 training returns per symbol and can fail to converge; a missing baseline is worth a
    line in the report, not a failed retrain.
    """
    fitted: dict[str, Forecaster] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            fitted[name] = BASELINES[name]().fit(train)
        except (ValueError, RuntimeError) as exc:
            skipped[name] = str(exc)
    if not fitted:
        raise InsufficientDataError(f"no baseline could be fitted: {skipped}")
    return fitted, skipped


def reference_features(
    features: pl.DataFrame, before_ts: int, columns: Sequence[str], label_column: str = LABEL_COLUMN
) -> pl.DataFrame:
    """The feature values the model learned from (rows before `before_ts`): the drift reference."""
    keep = [
        "ts",
        *(["symbol"] if "symbol" in features.columns else []),
        *dict.fromkeys([*columns, label_column]),
    ]
    return features.filter(pl.col("ts") < before_ts).select(keep)


def select_columns(windows: WindowSet, columns: Sequence[str]) -> WindowSet:
    """The same samples with only `columns`, in that order (each model reads its own feature list)."""
    idx = [windows.column_index(c) for c in columns]
    return WindowSet(
        X=np.ascontiguousarray(windows.X[:, :, idx]),
        y=windows.y,
        ts=windows.ts,
        symbol=windows.symbol,
        feature_columns=tuple(columns),
        bar_ms=windows.bar_ms,
        horizon=windows.horizon,
    )
