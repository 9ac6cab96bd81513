"""Pipeline freshness as Prometheus gauges, read from what the pipeline stored and from the registry.

The Dagster pipeline runs as short-lived runs with no process to scrape, so its health is measured where
its results land: the newest bar in the stored `ohlcv` and `features` partitions per symbol (the data
location the API already reads), and the registration time of the model version the `champion` alias
points to. A stalled schedule, a failing blocking check (features stop advancing while ohlcv goes on) or
a retrain loop that never promotes all show up here, whatever the reason inside Dagster.

Metrics (module-level: a registry refuses a name twice; the last exporter refreshed wins):

* `crypto_pipeline_last_bar_timestamp_seconds{asset, symbol}` open time of the newest stored bar;
* `crypto_pipeline_stored_days{asset, symbol}` UTC day partitions stored;
* `crypto_model_champion_registered_timestamp_seconds` when the champion's version was registered
  (0 when there is no champion);
* `crypto_model_live_qlike{forecaster}` QLIKE of the served champion and of every baseline on the same
  bars, from the newest `forecast_track_record` (absent until one exists);
* `crypto_model_live_champion_worse` 1 when that track record finds the champion worse than the best
  baseline (a retrain reason), else 0;
* `crypto_model_track_record_day_timestamp_seconds` the UTC day (epoch s) the newest track record ends on;
* `crypto_model_drift_detected{kind}` 1 when the newest `feature_drift` found feature / label drift;
* `crypto_model_drifted_features` how many features it flagged;
* `crypto_pipeline_freshness_refreshed_timestamp_seconds` the last refresh that completed;
* `crypto_pipeline_freshness_errors_total{source}` failed reads (`store` or `registry`).

Reads happen in a worker thread every `interval_s` (`FreshnessExporter.run`), never on a scrape: the
metrics handler runs on the event loop, and an S3 listing there would stall every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from crypto_platform.lib.market.symbols import normalize_symbol
from crypto_platform.lib.storage import (
    DRIFT_PREFIX,
    FEATURES_ASSET,
    OHLCV_ASSET,
    TRACK_RECORD_PREFIX,
    ObjectNotFoundError,
    ObjectStore,
    day_start_ms,
    list_partitions,
    newest_json_key,
    partition_key,
    read_parquet,
)

if TYPE_CHECKING:
    from serving.api.services import Services

log = logging.getLogger(__name__)

TRACKED_ASSETS = (OHLCV_ASSET, FEATURES_ASSET)
# Newest partitions read per (asset, symbol) looking for a bar: today's partition is empty between
# midnight and the first closed bar, and a gap day may be empty too; further back is "stale" anyway.
MAX_FILES_READ = 3

LAST_BAR = Gauge(
    "crypto_pipeline_last_bar_timestamp_seconds",
    "Open time (epoch s) of the newest bar stored by the pipeline",
    ["asset", "symbol"],
)
STORED_DAYS = Gauge("crypto_pipeline_stored_days", "UTC day partitions stored", ["asset", "symbol"])
CHAMPION_REGISTERED = Gauge(
    "crypto_model_champion_registered_timestamp_seconds",
    "Registration time (epoch s) of the model version the champion alias points to; 0 without one",
)
REFRESHED = Gauge(
    "crypto_pipeline_freshness_refreshed_timestamp_seconds",
    "When the pipeline freshness gauges were last refreshed (epoch s)",
)
LIVE_QLIKE = Gauge(
    "crypto_model_live_qlike",
    "QLIKE of served forecasts (champion) and of each baseline on the same bars, newest track record",
    ["forecaster"],
)
LIVE_CHAMPION_WORSE = Gauge(
    "crypto_model_live_champion_worse",
    "1 when the newest track record finds the champion worse than the best baseline, else 0",
)
TRACK_RECORD_DAY = Gauge(
    "crypto_model_track_record_day_timestamp_seconds",
    "UTC day (epoch s) the newest forecast track record ends on",
)
DRIFT_DETECTED = Gauge(
    "crypto_model_drift_detected", "1 when the newest feature_drift found drift of this kind", ["kind"]
)
DRIFTED_FEATURES = Gauge("crypto_model_drifted_features", "Features the newest feature_drift flagged")
ERRORS = Counter("crypto_pipeline_freshness_errors", "Failed reads of the freshness exporter", ["source"])
# Both series exist from the start (at 0), so rate() and increase() see the first error.
for _source in ("store", "registry"):
    ERRORS.labels(source=_source)


@dataclass(frozen=True)
class AssetFreshness:
    asset: str
    symbol: str
    last_bar_ms: int | None
    stored_days: int


@dataclass(frozen=True)
class ModelEvidence:
    """What the newest track record and drift report say (None: that result does not exist yet)."""

    track_record_day: str | None = None
    live_qlike: dict[str, float] = field(default_factory=dict)
    champion_worse: bool | None = None
    drift_day: str | None = None
    feature_drift: bool | None = None
    label_drift: bool | None = None
    drifted_features: int | None = None


@dataclass(frozen=True)
class FreshnessSnapshot:
    assets: tuple[AssetFreshness, ...]
    champion_registered_ms: int | None
    errors: tuple[str, ...] = field(default=())
    evidence: ModelEvidence = field(default_factory=ModelEvidence)


def _finite_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def read_model_evidence(store: ObjectStore) -> ModelEvidence:
    """The newest `ml/track_record/<day>.json` and `ml/drift/<day>.json` the ML group wrote."""
    found: dict[str, object] = {}
    record_key = newest_json_key(store, TRACK_RECORD_PREFIX)
    if record_key is not None:
        record = json.loads(store.read_bytes(record_key))
        scores = record.get("scores") or {}
        qlike = {name: _finite_number((score or {}).get("qlike")) for name, score in scores.items()}
        found["track_record_day"] = record_key.rsplit("/", 1)[-1].removesuffix(".json")
        found["live_qlike"] = {name: value for name, value in qlike.items() if value is not None}
        worse = record.get("champion_worse_than_best_baseline")
        found["champion_worse"] = worse if isinstance(worse, bool) else None
    drift_key = newest_json_key(store, DRIFT_PREFIX)
    if drift_key is not None:
        drift = json.loads(store.read_bytes(drift_key))
        found["drift_day"] = drift_key.rsplit("/", 1)[-1].removesuffix(".json")
        found["feature_drift"] = bool(drift.get("feature_drift_detected"))
        found["label_drift"] = bool(drift.get("label_drift_detected"))
        found["drifted_features"] = len(drift.get("drifted_features") or [])
    return ModelEvidence(**found)  # type: ignore[arg-type]


def publish_model_evidence(evidence: ModelEvidence) -> None:
    """Set the evidence gauges; a result that does not exist leaves its series out (no fake zeros)."""
    for name in {labels[0] for labels in _label_values(LIVE_QLIKE)} - set(evidence.live_qlike):
        _drop(LIVE_QLIKE, name)
    for name, value in evidence.live_qlike.items():
        LIVE_QLIKE.labels(forecaster=name).set(value)
    if evidence.champion_worse is not None:
        LIVE_CHAMPION_WORSE.set(1.0 if evidence.champion_worse else 0.0)
    if evidence.track_record_day is not None:
        TRACK_RECORD_DAY.set(day_start_ms(evidence.track_record_day) / 1000)
    if evidence.feature_drift is not None:
        DRIFT_DETECTED.labels(kind="feature").set(1.0 if evidence.feature_drift else 0.0)
        DRIFT_DETECTED.labels(kind="label").set(1.0 if evidence.label_drift else 0.0)
        DRIFTED_FEATURES.set(evidence.drifted_features or 0)


def newest_bar(store: ObjectStore, asset: str, symbol: str) -> AssetFreshness:
    """The newest stored bar of one asset and symbol, looking at no more than MAX_FILES_READ files."""
    days = list_partitions(store, asset, symbol)
    for symbol_id, day in reversed(days[-MAX_FILES_READ:]):
        try:
            frame = read_parquet(store, partition_key(asset, symbol_id, day))
        except ObjectNotFoundError:  # deleted between the listing and the read
            continue
        if frame.height and "ts" in frame.columns:
            return AssetFreshness(asset, symbol, int(frame.get_column("ts").max()), len(days))
    return AssetFreshness(asset, symbol, None, len(days))


def registry_champion_lookup(tracking_uri: str, model_name: str, alias: str) -> Callable[[], int | None]:
    """A function returning the champion version's registration time (epoch ms), None without one."""

    def lookup() -> int | None:
        from mlflow import MlflowClient

        from crypto_platform.lib.model.registry import alias_version

        version = alias_version(MlflowClient(tracking_uri=tracking_uri), alias, model_name)
        return None if version is None else int(version.creation_timestamp)

    return lookup


class FreshnessExporter:
    """Refreshes the module's gauges from a data store and (optionally) the model registry."""

    def __init__(
        self,
        store: ObjectStore,
        symbols: Iterable[str],
        champion_lookup: Callable[[], int | None] | None = None,
        interval_s: float = 60.0,
        assets: Iterable[str] = TRACKED_ASSETS,
    ) -> None:
        self.store = store
        self.symbols = tuple(normalize_symbol(s) for s in symbols)
        self.champion_lookup = champion_lookup
        self.interval_s = interval_s
        self.assets = tuple(assets)

    def refresh(self) -> FreshnessSnapshot:
        """Read everything once and publish it. A failed read leaves that series out (stale data must
        not look fresh) and counts an error; the rest is still published."""
        found: list[AssetFreshness] = []
        errors: list[str] = []
        for asset in self.assets:
            for symbol in self.symbols:
                try:
                    item = newest_bar(self.store, asset, symbol)
                except Exception as exc:  # an unreachable store must not end the refresh loop
                    ERRORS.labels(source="store").inc()
                    errors.append(f"{asset}/{symbol}: {exc}")
                    _drop(LAST_BAR, asset, symbol)
                    continue
                found.append(item)
                STORED_DAYS.labels(asset=asset, symbol=symbol).set(item.stored_days)
                if item.last_bar_ms is None:
                    _drop(LAST_BAR, asset, symbol)
                else:
                    LAST_BAR.labels(asset=asset, symbol=symbol).set(item.last_bar_ms / 1000)
        champion_ms: int | None = None
        if self.champion_lookup is not None:
            try:
                champion_ms = self.champion_lookup()
                CHAMPION_REGISTERED.set(0 if champion_ms is None else champion_ms / 1000)
            except Exception as exc:  # MLflow down: keep the last value, count the failure
                ERRORS.labels(source="registry").inc()
                errors.append(f"registry: {exc}")
        evidence = ModelEvidence()
        try:
            evidence = read_model_evidence(self.store)
            publish_model_evidence(evidence)
        except Exception as exc:  # an unreadable result must not stop the other gauges
            ERRORS.labels(source="store").inc()
            errors.append(f"model evidence: {exc}")
        REFRESHED.set(time.time())
        for error in errors:
            log.warning("freshness: %s", error)
        return FreshnessSnapshot(tuple(found), champion_ms, tuple(errors), evidence)

    async def run(self) -> None:
        """Refresh now and then every `interval_s`, in a worker thread, until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # never let a bug here take the API's lifespan down with it
                log.exception("freshness refresh failed")
            await asyncio.sleep(self.interval_s)


def exporter_for(services: Services, interval_s: float = 60.0) -> FreshnessExporter:
    """The exporter of an API process: its data store, its symbols, the model alias it follows."""
    settings = services.settings
    lookup = registry_champion_lookup(
        settings.platform.mlflow_tracking_uri, settings.model_name, settings.model_alias
    )
    return FreshnessExporter(services.market.store, settings.platform.symbols, lookup, interval_s)


@asynccontextmanager
async def freshness_lifetime(services: Services, enabled: bool = True) -> AsyncIterator[None]:
    """Keeps the freshness gauges refreshed for the lifetime of the API (`enabled=False`: nothing)."""
    task = asyncio.create_task(exporter_for(services).run()) if enabled else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _label_values(gauge: Gauge) -> list[tuple[str, ...]]:
    """The label tuples a labelled gauge currently has series for."""
    return [tuple(sample.labels.values()) for metric in gauge.collect() for sample in metric.samples]


def _drop(gauge: Gauge, *labels: str) -> None:
    """Remove one labelled series; an absent one is fine (the gauge then simply has no such series)."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
