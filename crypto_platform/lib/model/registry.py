"""MLflow model-registry helpers: one registered model, versions promoted with aliases.

MLflow 3 promotes with aliases, not stages. `champion` is what serving loads; `challenger` is the
newest trained candidate. Moving an alias is a single registry update, so a reader sees either the
old or the new version, never none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

MODEL_NAME = "crypto-volatility"
CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class AliasMove:
    alias: str
    old_version: str | None
    new_version: str


def champion_uri(model_name: str = MODEL_NAME) -> str:
    return f"models:/{model_name}@{CHAMPION}"


def ensure_registered_model(client: MlflowClient, model_name: str = MODEL_NAME) -> None:
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(
            model_name, description="Next-24 h realized volatility forecaster (LSTM or baseline)."
        )


def alias_version(client: MlflowClient, alias: str, model_name: str = MODEL_NAME) -> ModelVersion | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def register_version(
    client: MlflowClient,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    model_name: str = MODEL_NAME,
    description: str | None = None,
    model_id: str | None = None,
) -> ModelVersion:
    """Register a logged model as a new version of `model_name` and wait until it is READY.

    MLflow 3 logs models as LoggedModels (`models:/m-<id>`); the registry needs that id alongside the
    source, so it is taken from the URI when not given.
    """
    ensure_registered_model(client, model_name)
    if model_id is None and model_uri.startswith("models:/m-"):
        model_id = model_uri.removeprefix("models:/")
    return client.create_model_version(
        name=model_name,
        source=model_uri,
        run_id=run_id,
        model_id=model_id,
        tags={k: str(v) for k, v in tags.items()},
        description=description,
        await_creation_for=120,
    )


def move_alias(client: MlflowClient, alias: str, version: str, model_name: str = MODEL_NAME) -> AliasMove:
    old = alias_version(client, alias, model_name)
    client.set_registered_model_alias(model_name, alias, str(version))
    return AliasMove(alias, old.version if old else None, str(version))


def tag_version(
    client: MlflowClient, version: str, tags: dict[str, str], model_name: str = MODEL_NAME
) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, str(value))


def champion_age_seconds(
    client: MlflowClient, model_name: str = MODEL_NAME, now: float | None = None
) -> float | None:
    """Seconds since the champion version was created, None without a champion."""
    champion = alias_version(client, CHAMPION, model_name)
    if champion is None:
        return None
    created = (champion.creation_timestamp or 0) / 1000.0
    return (time.time() if now is None else now) - created
