"""The served champion: loaded from the MLflow registry, polled, swapped atomically.

Fast path: the registered pyfunc is a `VolatilityPyfunc` (packaging.py) wrapping a forecaster with
`predict(X: ndarray) -> ndarray` (the numpy LSTM or a servable baseline). After `mlflow.pyfunc.load_model`
the wrapper is unwrapped and requests call the forecaster directly: no pandas DataFrame, no schema
enforcement, no Keras per request (the input is built here, from our own feature frame, in the
model's feature order, so the checks MLflow would do are done once at load time instead).

Swap: requests read `store.current` once and use that object to the end, and a reload replaces the
reference in one assignment, so a request sees the old or the new model, never a mix. A failed load
leaves the old model in place; MLflow being down at start-up leaves the store empty (the API answers
503 on model endpoints) and the poller keeps trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crypto_platform.lib.model.tags import FAMILY_TAG, FEATURES_TAG, TIMEFRAME_TAG
from crypto_platform.lib.model.windows import HORIZON_BARS
from serving.core.redaction import redact

log = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """No champion is loaded (none registered, MLflow unreachable, or the load failed)."""


@dataclass(frozen=True)
class LoadedModel:
    """A champion ready to score raw feature windows [n, sequence_length, n_features]."""

    name: str
    version: str
    alias: str
    family: str
    run_id: str | None
    load_time: float  # epoch seconds
    metrics: dict[str, float]
    sequence_length: int
    feature_columns: tuple[str, ...]
    timeframe: str
    horizon_bars: int
    predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    # Per-feature value that stands for "no information" in occlusion attributions: the training
    # mean of the LSTM's normaliser when the forecaster has one (None: use the window's own mean).
    reference_values: np.ndarray | None = field(default=None, repr=False)

    def info(self) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "model_version": self.version,
            "alias": self.alias,
            "model_family": self.family,
            "run_id": self.run_id,
            "load_time": self.load_time,
            "metrics": self.metrics,
            "sequence_length": self.sequence_length,
            "feature_columns": list(self.feature_columns),
            "timeframe": self.timeframe,
            "horizon_bars": self.horizon_bars,
        }


@dataclass(frozen=True)
class ReloadOutcome:
    success: bool
    old_version: str | None
    new_version: str | None
    message: str


def _finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)
            if np.isfinite(number):
                out[key] = number
    return out


def load_version(
    tracking_uri: str, name: str, version: str, alias: str, tags: dict[str, str], run_id: str | None
) -> LoadedModel:
    """Load one registered version through the pyfunc flavor and unwrap it to the numpy forecaster."""
    import mlflow
    from mlflow import MlflowClient

    # mlflow.pyfunc.load_model resolves models:/ URIs through the process-wide registry URI; the
    # serving process talks to one MLflow, so setting it here is not a surprise to anyone else.
    mlflow.set_tracking_uri(tracking_uri)
    pyfunc_model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    wrapper = pyfunc_model.unwrap_python_model()
    forecaster = getattr(wrapper, "_forecaster", None)
    if forecaster is None or not callable(getattr(forecaster, "predict", None)):
        raise TypeError(
            f"models:/{name}/{version} is not a VolatilityPyfunc with a loaded forecaster "
            f"(got {type(wrapper).__name__}); only models logged by lib.model.packaging can be served"
        )
    schema = pyfunc_model.metadata.get_input_schema()
    shape = tuple(schema.inputs[0].shape) if schema is not None and schema.inputs else ()
    if len(shape) != 3:
        raise ValueError(f"models:/{name}/{version} input signature must be [n, seq, features], got {shape}")
    _, sequence_length, n_features = shape
    columns = getattr(forecaster, "feature_columns", None) or ()
    if not columns and tags.get(FEATURES_TAG):
        columns = json.loads(tags[FEATURES_TAG])
    columns = tuple(columns)
    if len(columns) != n_features:
        raise ValueError(
            f"models:/{name}/{version}: {len(columns)} feature columns known for {n_features} inputs; "
            "the version needs a feature_columns tag or a forecaster that records them"
        )
    metrics: dict[str, float] = {}
    if run_id:
        with contextlib.suppress(Exception):  # metrics are informative; a missing run must not block serving
            metrics = _finite_metrics(MlflowClient(tracking_uri).get_run(run_id).data.metrics)
    mean = getattr(forecaster, "mean", None)
    reference = np.asarray(mean, dtype=np.float32) if mean is not None and len(mean) == n_features else None
    horizon = int(getattr(forecaster, "horizon", HORIZON_BARS) or HORIZON_BARS)
    return LoadedModel(
        name=name,
        version=str(version),
        alias=alias,
        family=tags.get(FAMILY_TAG, type(forecaster).__name__),
        run_id=run_id,
        load_time=time.time(),
        metrics=metrics,
        sequence_length=int(sequence_length),
        feature_columns=columns,
        timeframe=tags.get(TIMEFRAME_TAG, "1h"),
        horizon_bars=horizon,
        predict=forecaster.predict,
        reference_values=reference,
    )


class ModelStore:
    """Holds the current champion; `refresh()` follows the alias (blocking; run it off the event loop)."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        alias: str,
        poll_s: float = 60.0,
        on_change: Callable[[LoadedModel | None], None] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.alias = alias
        self.poll_s = poll_s
        self.on_change = on_change
        self._current: LoadedModel | None = None
        self._refresh_lock = threading.Lock()  # one load at a time (poller and admin reload)
        self.last_error: str | None = "the model has not been loaded yet"
        self.last_check: float | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelUnavailableError(
                f"no {self.model_name}@{self.alias} model is loaded: {self.last_error or 'unknown reason'}"
            )
        return model

    def swap(self, model: LoadedModel | None) -> None:
        self._current = model  # one reference assignment: atomic for readers
        if self.on_change is not None:
            self.on_change(model)

    def refresh(self, force: bool = False) -> ReloadOutcome:
        """Resolve the alias; load and swap in its version if it differs from the one served."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        with self._refresh_lock:
            old = self._current
            old_version = old.version if old else None
            self.last_check = time.time()
            try:
                client = MlflowClient(tracking_uri=self.tracking_uri)
                try:
                    mv = client.get_model_version_by_alias(self.model_name, self.alias)
                except MlflowException as exc:
                    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                        raise ModelUnavailableError(
                            f"{self.model_name}@{self.alias} does not exist in the registry yet"
                        ) from exc
                    raise
                # The registry's version is an int from SQL-backed stores and a string over REST;
                # LoadedModel keeps it as a string, so the two are compared as strings (comparing
                # 2 with "2" reloaded the champion on every poll).
                version = str(mv.version)
                if old is not None and version == old.version and not force:
                    self.last_error = None
                    return ReloadOutcome(True, old_version, old_version, f"version {old_version} is current")
                model = load_version(
                    self.tracking_uri, self.model_name, version, self.alias, dict(mv.tags or {}), mv.run_id
                )
            except Exception as exc:  # any failure keeps the old model: serving must not go dark
                # Redacted where it is made: last_error reaches health answers, views and logs alike.
                reason = f"{type(exc).__name__}: {redact(exc)}"
                self.last_error = (
                    reason if old is None else f"reload failed, still serving {old_version}: {reason}"
                )
                log.warning("model refresh of %s@%s failed: %s", self.model_name, self.alias, reason)
                return ReloadOutcome(False, old_version, old_version, self.last_error)
            self.swap(model)
            self.last_error = None
            log.info("serving %s version %s (was %s)", self.model_name, model.version, old_version)
            return ReloadOutcome(True, old_version, model.version, f"loaded version {model.version}")

    async def run_poller(self, first_attempt_done: asyncio.Event | None = None) -> None:
        """Background task: refresh now, then every `poll_s` (every few seconds while nothing is loaded)."""
        while True:
            await asyncio.to_thread(self.refresh)
            if first_attempt_done is not None:
                first_attempt_done.set()
                first_attempt_done = None
            if self.poll_s <= 0 and self._current is not None:
                return
            delay = self.poll_s if self._current is not None else min(self.poll_s or 5.0, 5.0)
            await asyncio.sleep(max(delay, 0.05))
