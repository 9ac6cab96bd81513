"""Logging a training run to MLflow: params, metrics, evaluation, figures, data samples, and the models.

A training run stores, besides the LSTM and the best servable baseline (logged; registered only when
promotion needs it, see `promotion.py`), the holdout feature rows (`holdout/features.parquet`), so that
any model — an older champion trained on other features included — can be re-scored on exactly that most
recent holdout, and the training window's feature values (`reference/features.parquet`), the drift
reference. `holdout.py` reads them back; the artifact paths below are the contract between the two.

Every registered version of `crypto-volatility` serves the same contract (raw feature windows in,
volatility out, see `packaging.py`) and carries the version tags of `tags.py`.

The caller owns the MLflow run (the Dagster asset gets it from dagster-mlflow) and the tracking URI.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import polars as pl
from mlflow import MlflowClient

from crypto_platform.lib.model import registry
from crypto_platform.lib.model.baseline_serving import CLASS_PATH as BASELINE_CLASS
from crypto_platform.lib.model.baseline_serving import ServableBaseline
from crypto_platform.lib.model.packaging import log_forecaster, log_lstm_model
from crypto_platform.lib.model.tags import (
    CANDIDATE_BASELINE_TAG,
    CANDIDATE_BASELINE_URI_TAG,
    FAMILY_TAG,
    FEATURES_TAG,
    LSTM_FAMILY,
    TIMEFRAME_TAG,
    TRAINING_RUN_TAG,
)
from crypto_platform.lib.model.training import (
    LSTM_NAME,
    TrainingResult,
    holdout_features,
    reference_features,
)

LSTM_MODEL = "model"  # logged-model names inside a training run
BASELINE_MODEL = "baseline_model"
EVALUATION_JSON = "evaluation/holdout.json"
EVALUATION_MD = "evaluation/holdout.md"
EVALUATION_TABLE = "evaluation/holdout_table.json"
HOLDOUT_FEATURES = "holdout/features.parquet"
HOLDOUT_META = "holdout/meta.json"
HOLDOUT_FORECASTS = "holdout/forecasts.parquet"
REFERENCE_FEATURES = "reference/features.parquet"
# Run tags of the request that started the training (the promotion gate reads the margin back).
PROMOTION_MARGIN_TAG = "promotion_margin"
# Run and version tags of the data window (`DataWindow.tags`), copied onto a baseline registered later.
DATA_WINDOW_TAGS = (
    "data_window",
    "data_window_start",
    "data_window_end",
    "symbols",
    TIMEFRAME_TAG,
    "code_version",
    "data_fingerprint",
)
FINGERPRINT_TAG = "data_fingerprint"


def window_fingerprint(features: pl.DataFrame) -> str:
    """sha256 of a training window's content: the same rows and values give the same fingerprint, in
    whatever order they were read; any changed, added or removed value or column gives another.

    Rows are put in (symbol, ts) order and columns in name order first (reading partitions in another
    order must not change it). Each column contributes its name, dtype and values: numbers as their
    little-endian float64/int64 bytes (nulls as a separate mask), text as length-prefixed UTF-8, so
    no two different frames share a byte stream."""
    keys = [c for c in ("symbol", "ts") if c in features.columns]
    frame = features.sort(keys) if keys else features
    digest = hashlib.sha256(f"rows={frame.height}".encode())
    for name in sorted(frame.columns):
        column = frame.get_column(name)
        digest.update(f"|{name}:{column.dtype}|".encode())
        digest.update(column.is_null().to_numpy().tobytes())
        if column.dtype.is_numeric() or column.dtype == pl.Boolean:
            kind = pl.Float64 if column.dtype.is_float() else pl.Int64
            digest.update(
                column.cast(kind)
                .fill_null(0)
                .to_numpy()
                .astype(f"<{'f8' if kind == pl.Float64 else 'i8'}")
                .tobytes()
            )
        else:
            for value in column.cast(pl.String).fill_null("").to_list():
                encoded = value.encode()
                digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()


@dataclass(frozen=True)
class DataWindow:
    """What a model was trained on (run and version tags)."""

    symbols: tuple[str, ...]
    start: str  # first UTC day
    end: str  # last UTC day
    timeframe: str = "1h"
    code_version: str = "unknown"
    fingerprint: str | None = None  # `window_fingerprint` of the features trained on

    def tags(self) -> dict[str, str]:
        fingerprint = {FINGERPRINT_TAG: self.fingerprint} if self.fingerprint else {}
        return {
            **fingerprint,
            "data_window": f"{self.start}..{self.end}",
            "data_window_start": self.start,
            "data_window_end": self.end,
            "symbols": ",".join(self.symbols),
            TIMEFRAME_TAG: self.timeframe,
            "code_version": self.code_version,
        }


@dataclass(frozen=True)
class LoggedTraining:
    run_id: str
    lstm_version: str
    lstm_model_uri: str
    baseline_name: str
    baseline_model_uri: str
    evaluation_records: list[dict[str, Any]]


def _log_bytes(data: bytes, artifact_path: str) -> None:
    directory, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=directory or None)


def _log_parquet(frame: pl.DataFrame, artifact_path: str) -> None:
    directory, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.write_parquet(path, compression="zstd")
        mlflow.log_artifact(str(path), artifact_path=directory or None)


def log_training(
    result: TrainingResult,
    features: pl.DataFrame,
    window: DataWindow,
    client: MlflowClient,
    figures: Mapping[str, bytes] | None = None,
    model_name: str = registry.MODEL_NAME,
) -> LoggedTraining:
    """Log a training result to the ACTIVE MLflow run and register the LSTM with alias `challenger`.

    Logs params, per-epoch losses (step metrics, via `packaging.log_lstm_model`), the holdout
    evaluation of every forecaster (metrics, a logged table, JSON and markdown), `figures` as
    artifacts, the holdout and reference feature samples, the LSTM pyfunc (+ Keras model) and the best
    servable baseline's pyfunc, both with signature and input example.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_training needs an active MLflow run")
    run_id = run.info.run_id
    spec = result.spec
    holdout = result.holdout
    feature_list = json.dumps(list(spec.feature_columns))
    holdout_start = result.split.boundaries[1]
    best_servable = result.best_baseline(servable_only=True)

    mlflow.set_tags(
        {
            **window.tags(),
            FEATURES_TAG: feature_list,
            "best_baseline": result.evaluation.best_baseline or "",
            CANDIDATE_BASELINE_TAG: best_servable,
            "holdout_start_ts": str(holdout_start),
        }
    )
    mlflow.log_params(
        {**spec.to_params(), "training_days_start": window.start, "training_days_end": window.end}
    )
    mlflow.log_dict(
        {
            "split": result.split.summary(),
            "baseline_params": {name: b.params() for name, b in result.baselines.items()},
            "skipped_baselines": result.skipped_baselines,
            "seconds": result.seconds,
        },
        "training/summary.json",
    )
    for name, forecaster in result.baselines.items():
        if name == "ewma":
            mlflow.log_param("ewma_lambda", forecaster.params()["lambda"])
    mlflow.log_metrics(
        {
            **result.metrics(),
            "windows_train": len(result.split.train),
            "windows_validation": len(result.split.validation),
            "windows_holdout": len(holdout),
        }
    )

    records = result.evaluation.to_records()
    mlflow.log_table(
        {key: [r[key] for r in records] for key in records[0]} if records else {},
        artifact_file=EVALUATION_TABLE,
    )
    mlflow.log_dict(
        {
            "primary": result.evaluation.primary,
            "best_baseline": result.evaluation.best_baseline,
            "hac_lag": result.evaluation.hac_lag,
            "rows": records,
        },
        EVALUATION_JSON,
    )
    mlflow.log_text(result.evaluation.to_markdown(), EVALUATION_MD)
    for artifact_path, png in (figures or {}).items():
        _log_bytes(png, artifact_path)

    _log_parquet(holdout_features(features, spec, holdout_start), HOLDOUT_FEATURES)
    _log_parquet(result.holdout_frame(), HOLDOUT_FORECASTS)
    _log_parquet(reference_features(features, holdout_start, spec.feature_columns), REFERENCE_FEATURES)
    mlflow.log_dict(
        {
            "holdout_start_ts": holdout_start,
            "feature_columns": list(spec.feature_columns),
            "timeframe": spec.timeframe,
            "sequence_length": spec.sequence_length,
            "horizon": spec.horizon,
        },
        HOLDOUT_META,
    )

    example = holdout.X[: min(5, len(holdout))]
    if result.lstm.trained is None:
        raise RuntimeError("the LSTM of this result was never trained")
    logged = log_lstm_model(result.lstm.trained, LSTM_MODEL, example)
    baseline_info = log_forecaster(
        ServableBaseline.from_fitted(result.baselines[best_servable], holdout),
        name=BASELINE_MODEL,
        input_example=example,
        forecaster_class=BASELINE_CLASS,
    )
    mlflow.set_tag(CANDIDATE_BASELINE_URI_TAG, baseline_info.model_uri)

    version_tags = {
        **window.tags(),
        FAMILY_TAG: LSTM_FAMILY,
        FEATURES_TAG: feature_list,
        TRAINING_RUN_TAG: run_id,
        "holdout_qlike": f"{result.evaluation.row(LSTM_NAME).qlike:.6g}",
    }
    version = registry.register_version(
        client,
        logged.model_uri,
        run_id,
        version_tags,
        model_name=model_name,
        description="LSTM next-24-bar volatility forecaster",
        model_id=logged.model_id,
    )
    registry.move_alias(client, registry.CHALLENGER, version.version, model_name)
    return LoggedTraining(
        run_id=run_id,
        lstm_version=str(version.version),
        lstm_model_uri=logged.model_uri,
        baseline_name=best_servable,
        baseline_model_uri=baseline_info.model_uri,
        evaluation_records=records,
    )


def code_version(override: str | None = None) -> str:
    """The git commit the code runs from: `override` (settings.code_version) if given, else `git rev-parse`,
    'unknown' outside a checkout."""
    if override:
        return override
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_training_request(asset_name: str, margin: float, fast_preset: bool, training_days: int) -> None:
    """Tag the ACTIVE run with what asked for it: the asset, the promotion margin, preset, window length."""
    mlflow.set_tags({"dagster_asset": asset_name, PROMOTION_MARGIN_TAG: f"{margin:g}"})
    mlflow.log_params({"fast_preset": fast_preset, "training_days": training_days})


def recorded_margin(client: MlflowClient, run_id: str) -> float | None:
    """The promotion margin the training run `run_id` was asked for, None when it recorded none."""
    tag = client.get_run(run_id).data.tags.get(PROMOTION_MARGIN_TAG)
    return float(tag) if tag else None
