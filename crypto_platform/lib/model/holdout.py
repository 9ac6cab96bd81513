"""A registered version's training data read back from MLflow: the champion's drift reference.

`selection_tracking.log_selection` stores, with every training run, the feature values the model was
trained on (`tracking.REFERENCE_FEATURES`); `load_reference` brings the champion's back for the
`feature_drift` asset. `version_family` / `version_feature_columns` read a version's tags.

`mlflow.artifacts.download_artifacts` resolves through the process-wide tracking URI, which the caller
sets (`MLPlatformResource.client()`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import polars as pl
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from crypto_platform.lib.model import registry
from crypto_platform.lib.model.tags import FAMILY_TAG, FEATURES_TAG
from crypto_platform.lib.model.tracking import REFERENCE_FEATURES


def _download(run_id: str, artifact_path: str, dst: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst))


def version_feature_columns(mv: ModelVersion, default: list[str]) -> list[str]:
    raw = (mv.tags or {}).get(FEATURES_TAG)
    return list(json.loads(raw)) if raw else list(default)


def version_family(mv: ModelVersion) -> str:
    return (mv.tags or {}).get(FAMILY_TAG, "unknown")


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
    stored = [c for c in frame.columns if c not in ("ts", "symbol")]
    # A feature-frame version (HAR+) reads columns derived from the stored features, which the reference
    # does not hold: its drift is judged on the stored model features it was computed from.
    columns = [c for c in version_feature_columns(champion, stored) if c in stored] or stored
    return Reference(str(champion.version), champion.run_id, columns, frame)
