"""Resources of the ML group: where MLflow is, which model, which symbols, how to reach serving.

MLflow tracking of the training run goes through dagster-mlflow's `mlflow_tracking` resource (key
`mlflow`); registry work (aliases, promotion, loading models) needs only a client and the process-wide
tracking URI, which `MLPlatformResource.client()` sets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
from dagster import ConfigurableResource
from dagster_mlflow import mlflow_tracking
from mlflow import MlflowClient

from crypto_platform.defs.ml.config import EXPERIMENT_NAME, training_run_config
from crypto_platform.lib.model.registry import MODEL_NAME
from crypto_platform.settings import Settings

_SQLITE = "sqlite:///"


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///mlflow.db` → `sqlite:////abs/dir/mlflow.db`.

    Runs launched from the webserver execute in a subprocess whose working directory may differ; a
    relative SQLite path would silently open another (empty) tracking database there.
    """
    if uri.startswith(_SQLITE) and not uri.startswith(_SQLITE + "/") and ":memory:" not in uri:
        return _SQLITE + str(Path(uri[len(_SQLITE) :]).expanduser().resolve())
    return uri


class MLPlatformResource(ConfigurableResource):
    tracking_uri: str
    model_name: str = MODEL_NAME
    experiment_name: str = EXPERIMENT_NAME
    symbols: list[str]
    timeframe: str = "1h"
    # Run config of the retrains the sensor and the schedule request: the fast preset for the demo.
    fast_training: bool = False
    serving_url: str | None = None
    admin_api_key: str | None = None

    def client(self) -> MlflowClient:
        # `models:/` URIs (pyfunc loading) resolve through the process-wide URI, not a client's.
        mlflow.set_tracking_uri(self.tracking_uri)
        return MlflowClient(tracking_uri=self.tracking_uri)

    def retrain_run_config(self) -> dict[str, Any]:
        return training_run_config(fast=self.fast_training)


def ml_resources(settings: Settings) -> dict[str, Any]:
    """Resources the ML assets, checks, sensors and schedules need, besides `data_store`."""
    uri = absolute_tracking_uri(settings.mlflow_tracking_uri)
    env = os.environ
    return {
        "mlflow": mlflow_tracking.configured(
            {"experiment_name": EXPERIMENT_NAME, "mlflow_tracking_uri": uri}
        ),
        "ml": MLPlatformResource(
            tracking_uri=uri,
            symbols=list(settings.symbols),
            timeframe=settings.timeframe,
            # Not Settings fields yet (the lead owns settings.py): read here, once, like Settings does.
            fast_training=env.get("CRYPTO_ML_FAST", "").strip().lower() in ("1", "true", "yes"),
            serving_url=env.get("CRYPTO_SERVING_URL") or None,
            admin_api_key=env.get("CRYPTO_ADMIN_API_KEY") or None,
        ),
    }
