"""Helpers for tests that run the market graph in-process on a test Dagster instance."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from crypto_platform.definitions import build_definitions
from crypto_platform.settings import Settings, load_settings

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def market_settings(data_location: str | Path, **env: str) -> Settings:
    """Test settings: two symbols, simulated bars, data under `data_location`; `env` overrides by name."""
    base = {
        "CRYPTO_SYMBOLS": "BTC/USDT,ETH/USDT",
        "CRYPTO_MARKET_SOURCE": "simulated",
        "CRYPTO_DATA_LOCATION": str(data_location),
        "CRYPTO_PARTITIONS_START": "2020-01-01",
    }
    return load_settings({**base, **env})


def exchange_settings(data_location: str | Path, exchange_url: str, **env: str) -> Settings:
    """`market_settings` fetching through ccxt from the exchange (replay server) at `exchange_url`."""
    return market_settings(
        data_location, CRYPTO_MARKET_SOURCE="exchange", CRYPTO_EXCHANGE_API_URL=exchange_url, **env
    )


def range_tags(
    first_day: str, last_day: str, symbol_id: str, last_symbol_id: str | None = None
) -> dict[str, str]:
    """The tags a single-run backfill puts on the run of a date range of one symbol, or of the symbols
    from `symbol_id` to `last_symbol_id` in the configured order (the rectangle between the two keys)."""
    return {
        RANGE_START_TAG: f"{first_day}|{symbol_id}",
        RANGE_END_TAG: f"{last_day}|{last_symbol_id or symbol_id}",
    }


def run_range(
    defs: Definitions,
    instance: DagsterInstance,
    first_day: str,
    last_day: str,
    symbol_id: str,
    resources: dict[str, Any] | None = None,
    last_symbol_id: str | None = None,
) -> ExecuteInProcessResult:
    return defs.resolve_job_def("market_job").execute_in_process(
        instance=instance,
        tags=range_tags(first_day, last_day, symbol_id, last_symbol_id),
        resources=resources,
        raise_on_error=False,
    )


def materializations(result: ExecuteInProcessResult) -> dict[str, dict[str, dict[str, Any]]]:
    """asset → partition → metadata values of the run's materialisation events."""
    found: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            found[mat.asset_key.to_user_string()][str(mat.partition)] = {
                k: v.value for k, v in mat.metadata.items()
            }
    return dict(found)


def check_results(result: ExecuteInProcessResult) -> dict[str, tuple[bool, str]]:
    """check name → (passed, severity) of the run's asset-check evaluations."""
    return {
        event.event_specific_data.check_name: (
            event.event_specific_data.passed,
            event.event_specific_data.severity.value,
        )
        for event in result.all_events
        if event.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def build(settings: Settings) -> Definitions:
    return build_definitions(settings)
