"""Dagster resources of the code location, and the one place that picks them from the settings.

MLflow tracking of the training run goes through dagster-mlflow's `mlflow_tracking` resource (key
`mlflow`); registry work (aliases, promotion, loading models) needs only a client and the process-wide
tracking URI, which `MLPlatformResource.client()` sets.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import mlflow
from dagster import ConfigurableResource
from dagster_mlflow import mlflow_tracking
from mlflow import MlflowClient

from crypto_platform.defs.io_managers import ParquetIOManager
from crypto_platform.defs.ml.config import EXPERIMENT_NAME, training_run_config
from crypto_platform.lib.market.source import MarketData, load_bars
from crypto_platform.lib.market.symbols import normalize_symbol
from crypto_platform.lib.market.timeframes import validate_timeframe
from crypto_platform.lib.model.registry import MODEL_NAME
from crypto_platform.lib.storage import ObjectStore, open_store
from crypto_platform.settings import MARKET_SOURCES, Settings, get_settings
from serving.core.history import history_url as serving_history_url

_SQLITE = "sqlite:///"


class MarketDataResource(ConfigurableResource):
    """Closed OHLCV bars from the exchange (ccxt), the seeded simulator, or the exchange with the
    simulator as fallback (`auto`). Every answer says which source it actually came from."""

    source: str = "auto"
    exchange: str = "binance"
    api_url: str | None = None
    timeframe: str = "1h"
    seed: int = 7
    timeout_ms: int = 10_000
    retry_budget_s: float = 60.0
    # Symbols one `ohlcv` run fetches at a time (the process's one rate limiter paces them together).
    fetch_concurrency: int = 8

    def settings(self) -> Settings:
        """The process settings with this resource's configuration applied on top."""
        return dataclasses.replace(
            get_settings(),
            exchange=self.exchange,
            exchange_api_url=self.api_url,
            timeframe=self.timeframe,
            simulator_seed=self.seed,
            market_source=self.source,
            exchange_timeout_ms=self.timeout_ms,
            exchange_retry_budget_s=self.retry_budget_s,
        )

    def load(self, symbol: str, since_ms: int, until_ms: int) -> MarketData:
        """Bars with ts in [since_ms, until_ms): one paginated fetch however long the range is."""
        if self.source not in MARKET_SOURCES:
            raise ValueError(f"market source must be one of {MARKET_SOURCES}, got {self.source!r}")
        validate_timeframe(self.timeframe)
        return load_bars(
            symbol, self.timeframe, since_ms, until_ms, source=self.source, settings=self.settings()
        )

    def now_ms(self) -> int:
        return int(time.time() * 1000)


class DataStoreResource(ConfigurableResource):
    """The platform's data location (local directory or s3://bucket/prefix) as an object store."""

    location: str = "data"
    endpoint_url: str | None = None

    def store(self) -> ObjectStore:
        return open_store(self.location, self.endpoint_url)


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///mlflow.db` → `sqlite:////abs/dir/mlflow.db`.

    Runs launched from the webserver execute in a subprocess whose working directory may differ; a
    relative SQLite path would silently open another (empty) tracking database there.
    """
    if uri.startswith(_SQLITE) and not uri.startswith(_SQLITE + "/") and ":memory:" not in uri:
        return _SQLITE + str(Path(uri[len(_SQLITE) :]).expanduser().resolve())
    return uri


class MLPlatformResource(ConfigurableResource):
    """Where MLflow is, which model, which symbols, how to reach serving: what the ML assets, checks,
    sensors, schedules and the daily report share."""

    tracking_uri: str
    model_name: str = MODEL_NAME
    experiment_name: str = EXPERIMENT_NAME
    symbols: list[str]
    timeframe: str = "1h"
    # Run config of the retrains the sensor and the schedule request: the fast preset for the demo.
    fast_training: bool = False
    serving_url: str | None = None
    admin_api_key: str | None = None
    # Recorded on training runs; None: the git commit of the checkout (`tracking.code_version`).
    code_version: str | None = None
    # The serving history DB (served forecasts for the track record, counts for the daily report);
    # None: the one this process's environment names (`serving.core.history.history_url`).
    history_url: str | None = None

    def history_db_url(self) -> str:
        if self.history_url:
            return self.history_url
        return serving_history_url(get_settings())

    def client(self) -> MlflowClient:
        # `models:/` URIs (pyfunc loading) resolve through the process-wide URI, not a client's.
        mlflow.set_tracking_uri(self.tracking_uri)
        return MlflowClient(tracking_uri=self.tracking_uri)

    def retrain_run_config(self) -> dict[str, Any]:
        return training_run_config(fast=self.fast_training)

    def selected_symbols(self, requested: list[str] | None = None) -> list[str]:
        """`requested` (or, when empty, the configured symbols) normalised, in order, without repeats."""
        return list(dict.fromkeys(normalize_symbol(s) for s in (requested or self.symbols)))


def build_resources(settings: Settings) -> dict[str, Any]:
    """Resources for the given environment; definitions.py, the CLI and tests all go through here."""
    location = settings.data_location
    if not settings.data_is_s3:
        # Resolved now: runs launched from the webserver execute in a subprocess whose working
        # directory may differ, and they must write where the webserver process was told to.
        location = str(settings.local_data_path())
    tracking_uri = absolute_tracking_uri(settings.mlflow_tracking_uri)
    return {
        "market_data": MarketDataResource(
            source=settings.market_source,
            exchange=settings.exchange,
            api_url=settings.exchange_api_url,
            timeframe=settings.timeframe,
            seed=settings.simulator_seed,
            timeout_ms=settings.exchange_timeout_ms,
            retry_budget_s=settings.exchange_retry_budget_s,
            fetch_concurrency=settings.fetch_concurrency,
        ),
        "data_store": DataStoreResource(location=location, endpoint_url=settings.s3_endpoint_url),
        "parquet_io_manager": ParquetIOManager(location=location, endpoint_url=settings.s3_endpoint_url),
        "mlflow": mlflow_tracking.configured(
            {"experiment_name": EXPERIMENT_NAME, "mlflow_tracking_uri": tracking_uri}
        ),
        "ml": MLPlatformResource(
            tracking_uri=tracking_uri,
            symbols=list(settings.symbols),
            timeframe=settings.timeframe,
            fast_training=settings.ml_fast_training,
            serving_url=settings.serving_url,
            admin_api_key=settings.admin_api_key,
            code_version=settings.code_version,
            history_url=serving_history_url(settings),
        ),
    }
