"""The served champion: loaded from the MLflow registry, polled, swapped atomically.

Fast path: the registered pyfunc is a `VolatilityPyfunc` (packaging.py) wrapping a forecaster with
`predict(X: ndarray) -> ndarray` (the numpy LSTM or a servable baseline). After `mlflow.pyfunc.load_model`
the wrapper is unwrapped and requests call the forecaster directly: no pandas DataFrame, no schema
enforcement, no Keras per request (the input is built here, from our own feature frame, in the
model's feature order, so the checks MLflow would do are done once at load time instead).

Two input contracts (the registered version says which: its `input_contract` tag, else the pyfunc's
metadata of that name, else — versions registered before the tag existed — the window contract):
- `window-array/v1`, a `VolatilityPyfunc`: `LoadedModel.predict(X[n, seq, features])` (the LSTM, the
  window baselines, every older version).
- `feature-frame/v1`, a `FeatureFramePyfunc` around a `frame_serving.FrameForecaster` (HAR+, its
  residual, the combination, the per-symbol baselines): `LoadedModel.predict_frame(frame)` takes rows
  of `har_plus_features(compute_features(bars))` for every symbol in `LoadedModel.symbols` at once and
  returns one forecast per row (`frame_serving`'s docstring). Its `dispersion` gives the intervals.
A caller branches on `LoadedModel.is_frame`; `predict` of a frame model raises (a window array has
no symbol, time or cross-asset column to give it). The MLflow signature is checked once, here.

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
import pandas as pd
import polars as pl

from crypto_platform.lib.model.frame_serving import FRAME_CONTRACT, INPUT_CONTRACT_TAG, WINDOW_CONTRACT
from crypto_platform.lib.model.intervals import LogResidualDispersion
from crypto_platform.lib.model.tags import FAMILY_TAG, FEATURES_TAG, TIMEFRAME_TAG
from crypto_platform.lib.model.windows import HORIZON_BARS
from serving.core.redaction import redact

log = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """No champion is loaded (none registered, MLflow unreachable, or the load failed)."""


CONTRACTS = (WINDOW_CONTRACT, FRAME_CONTRACT)


def _frame_model_takes_no_windows(X: np.ndarray) -> np.ndarray:
    raise TypeError(f"a {FRAME_CONTRACT} model scores feature frames (predict_frame), not window arrays")


@dataclass(frozen=True)
class LoadedModel:
    """A champion ready to score: raw feature windows [n, sequence_length, n_features] (`predict`, the
    window contract) or a cross-symbol feature frame (`predict_frame`, the frame contract)."""

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
    contract: str = WINDOW_CONTRACT
    # Frame contract: feature rows (symbol, ts, feature_columns) → one forecast row per input row.
    predict_frame: Callable[[pl.DataFrame], pd.DataFrame] | None = field(default=None, repr=False)
    symbols: tuple[str, ...] = ()  # the symbols a frame model was fitted on (its cross-asset set)
    dispersion: LogResidualDispersion | None = field(default=None, repr=False)

    @property
    def is_frame(self) -> bool:
        return self.contract == FRAME_CONTRACT

    @property
    def interval_levels(self) -> tuple[float, ...]:
        return self.dispersion.levels if self.dispersion is not None else ()

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
            "input_contract": self.contract,
            "interval_levels": list(self.interval_levels),
            "symbols": list(self.symbols),
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


def version_contract(name: str, version: str, tags: dict[str, str], metadata: dict[str, Any] | None) -> str:
    """The version's input contract: its registry tag, else the pyfunc metadata, else the window one."""
    tagged = tags.get(INPUT_CONTRACT_TAG)
    logged = (metadata or {}).get(INPUT_CONTRACT_TAG)
    if tagged and logged and tagged != logged:
        raise ValueError(
            f"models:/{name}/{version}: the {INPUT_CONTRACT_TAG} tag says {tagged!r}, "
            f"the model's metadata {logged!r}"
        )
    contract = tagged or logged or WINDOW_CONTRACT
    if contract not in CONTRACTS:
        raise ValueError(f"models:/{name}/{version}: unknown input contract {contract!r}; known: {CONTRACTS}")
    return contract


def _run_metrics(tracking_uri: str, run_id: str | None) -> dict[str, float]:
    from mlflow import MlflowClient

    if not run_id:
        return {}
    with contextlib.suppress(Exception):  # metrics are informative; a missing run must not block serving
        return _finite_metrics(MlflowClient(tracking_uri).get_run(run_id).data.metrics)
    return {}


def load_version(
    tracking_uri: str, name: str, version: str, alias: str, tags: dict[str, str], run_id: str | None
) -> LoadedModel:
    """Load one registered version through the pyfunc flavor and unwrap it to its forecaster."""
    import mlflow

    # mlflow.pyfunc.load_model resolves models:/ URIs through the process-wide registry URI; the
    # serving process talks to one MLflow, so setting it here is not a surprise to anyone else.
    mlflow.set_tracking_uri(tracking_uri)
    pyfunc_model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    wrapper = pyfunc_model.unwrap_python_model()
    contract = version_contract(name, version, tags, getattr(pyfunc_model.metadata, "metadata", None))
    if contract == FRAME_CONTRACT:
        return _frame_model(tracking_uri, name, version, alias, tags, run_id, pyfunc_model, wrapper)
    forecaster = getattr(wrapper, "_forecaster", None)
    if forecaster is None or not callable(getattr(forecaster, "predict", None)):
        raise TypeError(
            f"models:/{name}/{version} is not a VolatilityPyfunc with a loaded forecaster "
            f"(got {type(wrapper).__name__}); only models logged by lib.model.packaging can be served"
        )
    if callable(getattr(forecaster, "predict_frame", None)):
        raise TypeError(
            f"models:/{name}/{version} is a frame forecaster without the {FRAME_CONTRACT} contract"
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
        metrics=_run_metrics(tracking_uri, run_id),
        sequence_length=int(sequence_length),
        feature_columns=columns,
        timeframe=tags.get(TIMEFRAME_TAG, "1h"),
        horizon_bars=horizon,
        predict=forecaster.predict,
        reference_values=reference,
        dispersion=getattr(forecaster, "dispersion", None),
    )


def _frame_model(
    tracking_uri: str,
    name: str,
    version: str,
    alias: str,
    tags: dict[str, str],
    run_id: str | None,
    pyfunc_model: Any,
    wrapper: Any,
) -> LoadedModel:
    """A `FeatureFramePyfunc` version, unwrapped to its `FrameForecaster.predict_frame`."""
    forecaster = getattr(wrapper, "_forecaster", None)
    if forecaster is None or not callable(getattr(forecaster, "predict_frame", None)):
        raise TypeError(
            f"models:/{name}/{version} speaks {FRAME_CONTRACT} but is not a FeatureFramePyfunc with a "
            f"loaded FrameForecaster (got {type(wrapper).__name__})"
        )
    columns = tuple(forecaster.feature_columns)
    schema = pyfunc_model.metadata.get_input_schema()
    signed = tuple(schema.input_names()) if schema is not None else ()
    # The signature MLflow would enforce per request: checked once, as requests bypass the pyfunc.
    if signed and signed != ("symbol", "ts", *columns):
        raise ValueError(
            f"models:/{name}/{version}: the signature's columns {list(signed)} are not symbol, ts and the "
            f"forecaster's feature columns {list(columns)}"
        )
    timeframe = tags.get(TIMEFRAME_TAG, forecaster.timeframe)
    if timeframe != forecaster.timeframe:
        raise ValueError(
            f"models:/{name}/{version}: tagged timeframe {timeframe!r}, "
            f"the forecaster's is {forecaster.timeframe!r}"
        )
    return LoadedModel(
        name=name,
        version=str(version),
        alias=alias,
        family=tags.get(FAMILY_TAG, forecaster.kind),
        run_id=run_id,
        load_time=time.time(),
        metrics=_run_metrics(tracking_uri, run_id),
        sequence_length=int(forecaster.sequence_length),
        feature_columns=columns,
        timeframe=timeframe,
        horizon_bars=int(forecaster.horizon),
        predict=_frame_model_takes_no_windows,
        contract=FRAME_CONTRACT,
        predict_frame=forecaster.predict_frame,
        symbols=tuple(sorted(forecaster.symbols or ())),
        dispersion=forecaster.dispersion,
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
