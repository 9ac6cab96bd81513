"""Dagster resources of the code location, and the one place that picks them from the settings."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from dagster import ConfigurableResource

from crypto_platform.defs.io_managers import ParquetIOManager
from crypto_platform.lib.market.source import MarketData, load_bars
from crypto_platform.lib.market.timeframes import validate_timeframe
from crypto_platform.lib.storage import ObjectStore, open_store
from crypto_platform.settings import MARKET_SOURCES, Settings, get_settings


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


def build_resources(settings: Settings) -> dict[str, Any]:
    """Resources for the given environment; definitions.py, the CLI and tests all go through here."""
    location = settings.data_location
    if not settings.data_is_s3:
        # Resolved now: runs launched from the webserver execute in a subprocess whose working
        # directory may differ, and they must write where the webserver process was told to.
        location = str(settings.local_data_path())
    return {
        "market_data": MarketDataResource(
            source=settings.market_source,
            exchange=settings.exchange,
            api_url=settings.exchange_api_url,
            timeframe=settings.timeframe,
            seed=settings.simulator_seed,
            timeout_ms=settings.exchange_timeout_ms,
            retry_budget_s=settings.exchange_retry_budget_s,
        ),
        "data_store": DataStoreResource(location=location, endpoint_url=settings.s3_endpoint_url),
        "parquet_io_manager": ParquetIOManager(location=location, endpoint_url=settings.s3_endpoint_url),
    }
