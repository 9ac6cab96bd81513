"""Training orchestration, framework-free: features → windows → purged chronological split → fitted
baselines and LSTM → every forecaster scored on the same most recent holdout.

The Dagster asset, the tests and the model-quality benchmark all call `train_and_evaluate`; MLflow
logging lives in `tracking.py` and promotion in `promotion.py`, so this module never touches network
or disk.

Blocks, oldest first: train (fits the baselines and the LSTM weights), validation (early stopping
only), holdout (the most recent block; scores every forecaster and later the champion). The gap
between blocks is the purge: at least the 24-bar target horizon AND at least 24 hours, so no target
of an earlier block reads a bar of a later one (see `windows.chronological_split`).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from crypto_platform.lib.features import MODEL_FEATURES
from crypto_platform.lib.market.timeframes import HOUR_MS, timeframe_ms
from crypto_platform.lib.model.baseline_serving import SERVABLE_BASELINES
from crypto_platform.lib.model.baselines import BASELINES, Forecaster
from crypto_platform.lib.model.evaluation import EvaluationTable, evaluate_forecasts
from crypto_platform.lib.model.lstm import LSTMConfig, LSTMForecaster
from crypto_platform.lib.model.windows import (
    HORIZON_BARS,
    SEQUENCE_LENGTH,
    WindowSet,
    build_windows,
    chronological_split,
)

LSTM_NAME = "lstm"
LABEL_COLUMN = "realized_vol_24"  # current realized volatility: the probes' and label drift's yardstick
PURGE_MIN_HOURS = 24
# Below this many windows in a block the metrics (and early stopping) are noise, not evidence.
MIN_BLOCK_WINDOWS = 50


class InsufficientDataError(ValueError):
    """Too few complete windows to train and evaluate."""


@dataclass(frozen=True)
class TrainingSpec:
    feature_columns: tuple[str, ...] = MODEL_FEATURES
    timeframe: str = "1h"
    sequence_length: int = SEQUENCE_LENGTH
    horizon: int = HORIZON_BARS
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, holdout
    lstm: LSTMConfig = field(default_factory=LSTMConfig.default)
    baselines: tuple[str, ...] = tuple(BASELINES)
    min_block_windows: int = MIN_BLOCK_WINDOWS

    @property
    def bar_ms(self) -> int:
        return timeframe_ms(self.timeframe)

    @property
    def purge_bars(self) -> int:
        """≥ the target horizon (no overlapping targets) and ≥ 24 h whatever the bar length."""
        return max(self.horizon, math.ceil(PURGE_MIN_HOURS * HOUR_MS / self.bar_ms))

    def to_params(self) -> dict[str, Any]:
        return {
            "feature_columns": ",".join(self.feature_columns),
            "timeframe": self.timeframe,
            "sequence_length": self.sequence_length,
            "horizon_bars": self.horizon,
            "split_fractions": ",".join(f"{f:g}" for f in self.fractions),
            "purge_bars": self.purge_bars,
            "baselines": ",".join(self.baselines),
        }


@dataclass(frozen=True)
class SplitWindows:
    """The windows of a features frame cut into train / validation / holdout by time."""

    train: WindowSet
    validation: WindowSet
    holdout: WindowSet
    boundaries: tuple[int, int]  # first ts of validation, first ts of the holdout
    purge_bars: int

    def summary(self) -> dict[str, Any]:
        def span(w: WindowSet) -> dict[str, Any]:
            return {
                "windows": len(w),
                "first_ts": int(w.ts.min()) if len(w) else None,
                "last_ts": int(w.ts.max()) if len(w) else None,
            }

        return {
            "train": span(self.train),
            "validation": span(self.validation),
            "holdout": span(self.holdout),
            "validation_start_ts": self.boundaries[0],
            "holdout_start_ts": self.boundaries[1],
            "purge_bars": self.purge_bars,
        }


def build_split(features: pl.DataFrame, spec: TrainingSpec) -> SplitWindows:
    """Pooled multi-symbol windows, split chronologically (one cut time for all symbols) with purge."""
    windows = build_windows(
        features, spec.feature_columns, spec.timeframe, spec.sequence_length, spec.horizon, with_target=True
    )
    need = spec.min_block_windows / min(spec.fractions)
    if len(windows) < need:
        raise InsufficientDataError(
            f"{len(windows)} complete windows in the features frame; at least {math.ceil(need)} are needed "
            f"for {spec.min_block_windows} per block. Each window needs {spec.sequence_length} consecutive "
            f"bars with every feature plus {spec.horizon} bars of target: materialize more history."
        )
    split = chronological_split(windows.ts, spec.fractions, purge_bars=spec.purge_bars, bar_ms=windows.bar_ms)
    blocks = {
        "train": windows.take(split.train),
        "validation": windows.take(split.validation),
        "holdout": windows.take(split.test),
    }
    small = {name: len(block) for name, block in blocks.items() if len(block) < spec.min_block_windows}
    if small:
        raise InsufficientDataError(f"too few windows in {small} (need {spec.min_block_windows} each)")
    return SplitWindows(
        train=blocks["train"],
        validation=blocks["validation"],
        holdout=blocks["holdout"],
        boundaries=split.boundaries,
        purge_bars=spec.purge_bars,
    )


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


@dataclass(frozen=True)
class TrainingResult:
    spec: TrainingSpec
    split: SplitWindows
    baselines: dict[str, Forecaster]
    skipped_baselines: dict[str, str]
    lstm: LSTMForecaster
    forecasts: dict[str, np.ndarray]  # holdout volatility forecasts per forecaster (lstm + baselines)
    evaluation: EvaluationTable
    seconds: dict[str, float]

    @property
    def holdout(self) -> WindowSet:
        return self.split.holdout

    def best_baseline(self, servable_only: bool = False) -> str:
        allowed = [n for n in self.baselines if not servable_only or n in SERVABLE_BASELINES]
        if not allowed:
            raise ValueError("no servable baseline was fitted")
        return min(allowed, key=lambda n: self.evaluation.row(n).qlike)

    def holdout_frame(self) -> pl.DataFrame:
        """One row per holdout window: ts, symbol, realized volatility and every forecaster's forecast."""
        h = self.holdout
        return pl.DataFrame(
            {
                "ts": h.ts,
                "symbol": h.symbol.astype(str),
                "realized_vol": h.y,
                **{f"forecast_{name}": values for name, values in self.forecasts.items()},
            }
        )

    def metrics(self) -> dict[str, float]:
        """Flat holdout metrics for tracking: `holdout_<metric>_<forecaster>` (NaN left out)."""
        out: dict[str, float] = {}
        for row in self.evaluation.rows:
            for metric in ("qlike", "mse_var", "rmse_vol", "mz_r2", "dm_stat", "dm_pvalue"):
                value = float(getattr(row, metric))
                if math.isfinite(value):
                    out[f"holdout_{metric}_{row.name}"] = value
        return out


def train_and_evaluate(
    features: pl.DataFrame, spec: TrainingSpec | None = None, verbose: int = 0
) -> TrainingResult:
    """The whole training step on a features frame (one or many symbols, `symbol` column optional)."""
    spec = spec or TrainingSpec()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    split = build_split(features, spec)
    seconds["windows"] = time.perf_counter() - start

    start = time.perf_counter()
    baselines, skipped = fit_baselines(split.train, spec.baselines)
    seconds["baselines"] = time.perf_counter() - start

    start = time.perf_counter()
    lstm = LSTMForecaster(spec.lstm).fit(split.train, split.validation)
    seconds["lstm"] = time.perf_counter() - start

    holdout = split.holdout
    forecasts = {LSTM_NAME: lstm.predict(holdout)}
    forecasts.update(
        {name: np.asarray(b.predict(holdout), dtype=np.float64) for name, b in baselines.items()}
    )
    evaluation = evaluate_forecasts(holdout.y, forecasts, baseline_names=set(BASELINES), ts=holdout.ts)
    return TrainingResult(
        spec=spec,
        split=split,
        baselines=baselines,
        skipped_baselines=skipped,
        lstm=lstm,
        forecasts=forecasts,
        evaluation=evaluation,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------------
# Feature samples stored with a model: the drift reference and the holdout (for re-scoring champions).
# --------------------------------------------------------------------------------------------------


def reference_features(
    features: pl.DataFrame, before_ts: int, columns: Sequence[str], label_column: str = LABEL_COLUMN
) -> pl.DataFrame:
    """The feature values the model learned from (rows before the holdout): the drift reference."""
    keep = [
        "ts",
        *(["symbol"] if "symbol" in features.columns else []),
        *dict.fromkeys([*columns, label_column]),
    ]
    return features.filter(pl.col("ts") < before_ts).select(keep)


def holdout_features(features: pl.DataFrame, spec: TrainingSpec, holdout_start_ts: int) -> pl.DataFrame:
    """The rows the holdout windows are built from: the holdout bars and the input history before them.

    Stored with a training run, they let any model — the champion trained on other features included —
    be scored on exactly this holdout (`holdout_windows`).
    """
    first = holdout_start_ts - (spec.sequence_length - 1) * spec.bar_ms
    return features.filter(pl.col("ts") >= first)


def holdout_windows(
    frame: pl.DataFrame,
    columns: Sequence[str],
    holdout_start_ts: int,
    timeframe: str = "1h",
    sequence_length: int = SEQUENCE_LENGTH,
    horizon: int = HORIZON_BARS,
) -> WindowSet:
    """Holdout windows (with targets) over `columns`, rebuilt from `holdout_features` rows."""
    windows = build_windows(frame, columns, timeframe, sequence_length, horizon, with_target=True)
    return windows.take(np.flatnonzero(windows.ts >= holdout_start_ts))


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


# --------------------------------------------------------------------------------------------------
# Figures (PNG bytes). matplotlib's object API with the Agg canvas: no global pyplot state, no display.
# --------------------------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def forecast_plot_png(
    result: TrainingResult, names: Sequence[str] | None = None, symbol: str | None = None
) -> bytes:
    """Realized next-24-bar volatility on the holdout against the LSTM's and the best baseline's forecasts."""
    from matplotlib.figure import Figure

    h = result.holdout
    symbols = sorted({str(s) for s in h.symbol})
    symbol = symbol if symbol is not None else symbols[0]
    mask = h.symbol.astype(str) == symbol
    order = np.argsort(h.ts[mask], kind="stable")
    hours = (h.ts[mask][order] - h.ts[mask].min()) / HOUR_MS
    names = list(names) if names is not None else [LSTM_NAME, result.best_baseline()]
    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    ax.plot(hours, h.y[mask][order], color="black", linewidth=1.2, label="realized")
    for name in dict.fromkeys(names):
        ax.plot(hours, result.forecasts[name][mask][order], linewidth=1.0, label=f"{name} forecast")
    ax.set_xlabel("hours into the holdout")
    ax.set_ylabel("next-24-bar realized volatility")
    ax.set_title(f"{symbol or 'holdout'}: forecast vs realized")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def loss_curve_png(history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> bytes:
    """Per-epoch training and validation QLIKE of the LSTM."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for key, label in (("loss", "train QLIKE"), ("val_loss", "validation QLIKE")):
        values = list(history.get(key, []))
        if values:
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("QLIKE")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
