"""A training run's data read back from MLflow, and registered models scored on it.

`tracking.py` stores, with every training run, the holdout feature rows and forecasts and the training
window's feature values; here they come back as a `Holdout` (what promotion re-scores every model on) and
a `Reference` (the champion's drift reference). `predict_uri` and `safe_qlike` score a logged or
registered model as serving would run it.

`mlflow.pyfunc.load_model("models:/…")` resolves through the process-wide tracking URI, which the caller
sets (`MLPlatformResource.client()`).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from crypto_platform.lib.model import registry
from crypto_platform.lib.model.metrics import qlike
from crypto_platform.lib.model.packaging import OUTPUT_COLUMN
from crypto_platform.lib.model.tags import FAMILY_TAG, FEATURES_TAG
from crypto_platform.lib.model.tracking import (
    HOLDOUT_FEATURES,
    HOLDOUT_FORECASTS,
    HOLDOUT_META,
    REFERENCE_FEATURES,
)
from crypto_platform.lib.model.training import LSTM_NAME, holdout_windows
from crypto_platform.lib.model.windows import WindowSet


@dataclass(frozen=True)
class Holdout:
    run_id: str
    features: pl.DataFrame
    meta: dict[str, Any]
    forecasts: (
        pl.DataFrame
    )  # in-memory forecasts of the run's forecasters (ts, symbol, realized_vol, forecast_*)

    @property
    def feature_columns(self) -> list[str]:
        return list(self.meta["feature_columns"])

    def windows(self, columns: list[str]) -> WindowSet:
        return holdout_windows(
            self.features,
            columns,
            int(self.meta["holdout_start_ts"]),
            self.meta["timeframe"],
            int(self.meta["sequence_length"]),
            int(self.meta["horizon"]),
        )

    def baseline_forecasts(self) -> dict[str, pl.Series]:
        return {
            c.removeprefix("forecast_"): self.forecasts[c]
            for c in self.forecasts.columns
            if c.startswith("forecast_") and c != f"forecast_{LSTM_NAME}"
        }


def _download(run_id: str, artifact_path: str, dst: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst))


def load_holdout(run_id: str) -> Holdout:
    with tempfile.TemporaryDirectory() as tmp:
        features = pl.read_parquet(_download(run_id, HOLDOUT_FEATURES, tmp))
        forecasts = pl.read_parquet(_download(run_id, HOLDOUT_FORECASTS, tmp))
        meta = json.loads(_download(run_id, HOLDOUT_META, tmp).read_text())
    return Holdout(run_id=run_id, features=features, meta=meta, forecasts=forecasts)


def version_feature_columns(mv: ModelVersion, default: list[str]) -> list[str]:
    raw = (mv.tags or {}).get(FEATURES_TAG)
    return list(json.loads(raw)) if raw else list(default)


def version_family(mv: ModelVersion) -> str:
    return (mv.tags or {}).get(FAMILY_TAG, "unknown")


def predict_uri(model_uri: str, windows: WindowSet) -> np.ndarray:
    """Forecasts of a logged/registered pyfunc for these windows, as serving would compute them."""
    model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict(np.ascontiguousarray(windows.X, dtype=np.float32))
    return np.asarray(out[OUTPUT_COLUMN], dtype=np.float64).reshape(-1)


def safe_qlike(realized_vol: np.ndarray, forecast_vol: np.ndarray) -> float:
    """Holdout QLIKE, or +inf for forecasts QLIKE cannot score (non-finite or non-positive)."""
    if (
        forecast_vol.shape != realized_vol.shape
        or not np.all(np.isfinite(forecast_vol))
        or np.any(forecast_vol <= 0)
    ):
        return math.inf
    return qlike(realized_vol**2, forecast_vol**2)


@dataclass(frozen=True)
class Reference:
    version: str
    run_id: str
    feature_columns: list[str]
    frame: pl.DataFrame


def load_reference(client: MlflowClient, model_name: str = registry.MODEL_NAME) -> Reference | None:
    """The champion's drift reference (training-window feature values), or None when it has none."""
    champion = registry.alias_version(client, registry.CHAMPION, model_name)
    if champion is None or not champion.run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            frame = pl.read_parquet(_download(champion.run_id, REFERENCE_FEATURES, tmp))
    except (MlflowException, OSError):
        return None
    columns = version_feature_columns(champion, [c for c in frame.columns if c not in ("ts", "symbol")])
    return Reference(str(champion.version), champion.run_id, columns, frame)
