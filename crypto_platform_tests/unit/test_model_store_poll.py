"""ModelStore.refresh follows the alias: a poll that sees the version already served loads nothing.

The registry is faked (a client answering the alias lookup) because the point is the comparison of what
the registry returns (an int from SQL-backed stores, a string over REST) with the served version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from serving.core import model_store
from serving.core.model_store import LoadedModel, ModelStore


@dataclass
class _Version:
    version: int | str
    run_id: str = "run-1"
    tags: dict[str, str] = field(default_factory=dict)


class _Registry:
    """Stands in for MlflowClient: the alias resolves to `self.version`."""

    version: int | str = 2

    def __init__(self, tracking_uri: str) -> None:
        pass

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        return _Version(_Registry.version)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import mlflow

    calls: list[str] = []

    def load_version(tracking_uri, name, version, alias, tags, run_id) -> LoadedModel:
        calls.append(version)
        return LoadedModel(
            name, version, alias, "lstm", run_id, 0.0, {}, 48, ("f",), "1h", 24, predict=lambda x: np.zeros(1)
        )

    monkeypatch.setattr(mlflow, "MlflowClient", _Registry)
    monkeypatch.setattr(model_store, "load_version", load_version)
    return calls


@pytest.mark.parametrize("registry_version", [2, "2"], ids=["int (SQL store)", "str (REST)"])
def test_a_poll_that_sees_the_served_version_loads_nothing(loads, registry_version):
    _Registry.version = registry_version
    store = ModelStore("http://registry", "m", "champion")
    first = store.refresh()
    assert first.success and first.new_version == "2" and loads == ["2"]
    served = store.current
    for _ in range(3):
        again = store.refresh()
        assert again.message == "version 2 is current" and again.new_version == "2"
    assert loads == ["2"] and store.current is served  # nothing reloaded, nothing swapped
    _Registry.version = 3 if isinstance(registry_version, int) else "3"
    moved = store.refresh()
    assert moved.old_version == "2" and moved.new_version == "3" and loads == ["2", "3"]
    assert store.refresh(force=True).new_version == "3" and loads == ["2", "3", "3"]
