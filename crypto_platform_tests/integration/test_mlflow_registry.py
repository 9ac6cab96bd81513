"""Registry helpers against a real `mlflow server` process."""

from __future__ import annotations

import threading

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from crypto_platform.lib.model import registry

pytestmark = pytest.mark.integration


class _Scale(mlflow.pyfunc.PythonModel):
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"predicted_volatility": model_input["x"].to_numpy() * self.factor})


def _log_version(client: MlflowClient, factor: float, model_name: str) -> str:
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_Scale(factor),
            input_example=pd.DataFrame({"x": [1.0]}),
            pip_requirements=["mlflow", "pandas"],
        )
    version = registry.register_version(
        client, info.model_uri, run.info.run_id, {"factor": str(factor)}, model_name=model_name
    )
    return version.version


@pytest.fixture
def client(mlflow_server, monkeypatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("registry-test")
    return MlflowClient(tracking_uri=mlflow_server.url)


def test_register_alias_and_load_champion_from_server(client):
    name = "crypto-volatility-registry-test"
    assert registry.alias_version(client, registry.CHAMPION, name) is None
    v1 = _log_version(client, 2.0, name)
    move = registry.move_alias(client, registry.CHAMPION, v1, name)
    assert move.old_version is None and move.new_version == v1

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = model.predict(pd.DataFrame({"x": [0.5, 1.5]}))
    np.testing.assert_allclose(out["predicted_volatility"], [1.0, 3.0])

    v2 = _log_version(client, 3.0, name)
    registry.move_alias(client, registry.CHALLENGER, v2, name)
    registry.tag_version(client, v2, {"promotion.decision": "promoted"}, name)
    move = registry.move_alias(client, registry.CHAMPION, v2, name)
    assert (move.old_version, move.new_version) == (v1, v2)
    assert client.get_model_version(name, v2).tags["promotion.decision"] == "promoted"
    reloaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    np.testing.assert_allclose(reloaded.predict(pd.DataFrame({"x": [1.0]}))["predicted_volatility"], [3.0])


def test_alias_moves_atomically_under_concurrent_reads(client):
    name = "crypto-volatility-atomic-test"
    versions = [_log_version(client, f, name) for f in (1.0, 2.0)]
    registry.move_alias(client, registry.CHAMPION, versions[0], name)
    seen: list[str | None] = []
    stop = threading.Event()

    def reader() -> None:
        reader_client = MlflowClient(tracking_uri=client.tracking_uri)
        while not stop.is_set():
            mv = registry.alias_version(reader_client, registry.CHAMPION, name)
            seen.append(mv.version if mv else None)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(10):
            registry.move_alias(client, registry.CHAMPION, versions[(i + 1) % 2], name)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert seen, "reader saw nothing"
    assert set(seen) <= set(versions), f"alias pointed nowhere or elsewhere: {set(seen)}"
