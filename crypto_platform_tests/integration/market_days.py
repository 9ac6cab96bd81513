"""The market schedule and sensors driven by hand, hour by hour, against a replay exchange whose clock moves.

What a dagster-daemon does each hour, without the daemon: move the exchange's clock, evaluate the
`market_hourly_refresh` tick and the `market_gap_repair` sensor on a real Dagster instance, execute
every run request they return in-process, the way the daemon's run would execute them, and show each
failed run to the `market_batch_split` run-status sensor, executing what it asks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
import requests
from dagster import (
    DagsterInstance,
    Definitions,
    RunRequest,
    SensorResult,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
)

from crypto_platform.defs.market.partitions import split_partition_key
from crypto_platform.defs.market.run_requests import RANGE_END_TAG, RANGE_START_TAG, batch_of_run
from crypto_platform.defs.market.sensors import BATCH_SPLIT_SENSOR, GAP_REPAIR_SENSOR
from crypto_platform.lib.market.client import clear_exchange_clients
from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.storage import OHLCV_ASSET, ObjectStore, read_partitioned

REFRESH_SCHEDULE = "market_hourly_refresh"


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def set_exchange_clock(url: str, when: datetime) -> None:
    """Moves the replay exchange's clock; the next run measures it anew (as a fresh run process would)."""
    requests.post(f"{url}/__replay__/clock", json={"now_ms": ms(when)}, timeout=10).raise_for_status()
    clear_exchange_clients()


def request_symbols(request: RunRequest, defs: Definitions) -> tuple[str, ...]:
    """The symbols a market run request covers (the rectangle's symbol side)."""
    tags = dict(request.tags)
    if request.partition_key is not None:
        tags["dagster/partition"] = str(request.partition_key)
    batch = batch_of_run(tags, defs.resolve_assets_def("ohlcv").partitions_def)
    assert batch is not None, request
    return batch.symbol_ids


def request_days(request: RunRequest) -> tuple[str, str]:
    """(first day, last day) a market run request covers, whether one partition or a single-run range."""
    if request.partition_key is not None:
        day = split_partition_key(request.partition_key)[1]
        return day, day
    first = split_partition_key(request.tags[RANGE_START_TAG])[1]
    return first, split_partition_key(request.tags[RANGE_END_TAG])[1]


def served_closed_bars(url: str, symbol_id: str, start_ms: int, end_ms: int) -> pl.Series:
    """Open times of the bars the exchange serves as closed in [start_ms, end_ms), paged like a client."""
    found: list[int] = []
    cursor = start_ms
    while cursor < end_ms:
        page = requests.get(
            f"{url}/api/v3/klines",
            params={
                "symbol": symbol_id,
                "interval": "1h",
                "startTime": cursor,
                "endTime": end_ms - 1,
                "limit": 1000,
            },
            timeout=30,
        )
        page.raise_for_status()
        rows = page.json()
        if not rows:
            break
        found += [int(row[0]) for row in rows]
        if len(rows) < 1000:
            break
        cursor = int(rows[-1][0]) + HOUR_MS
    return pl.Series("ts", found, dtype=pl.Int64)


def stored_bars(store: ObjectStore, symbol: str, start_ms: int, end_ms: int) -> pl.Series:
    """Open times of the stored `ohlcv` rows in [start_ms, end_ms), duplicates kept (to be counted)."""
    frame, _ = read_partitioned(store, OHLCV_ASSET, symbol, start_ms, end_ms)
    return pl.Series("ts", [], dtype=pl.Int64) if frame is None else frame.get_column("ts")


@dataclass
class Tick:
    at: datetime
    refresh_requests: list[RunRequest]
    repair_requests: list[RunRequest]
    sensor_result: SensorResult


@dataclass
class Daemonless:
    """The daemon's hourly work on `instance`, one call of `tick` per simulated hour."""

    defs: Definitions
    instance: DagsterInstance
    exchange_url: str
    resources: dict[str, Any]
    cursor: str | None = None
    failed_runs: list[str] = field(default_factory=list)
    runs: int = 0

    split_requests: list[RunRequest] = field(default_factory=list)

    def execute(self, request: RunRequest) -> None:
        """Runs the request; a failed run is shown to the batch-split sensor (as the daemon would on
        its next evaluation) and the runs it asks for are executed in turn."""
        result = self.defs.resolve_job_def(request.job_name or "market_job").execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            tags=dict(request.tags),
            raise_on_error=False,
        )
        self.runs += 1
        if result.success:
            return
        self.failed_runs.append(request.run_key or "")
        sensor = self.defs.resolve_sensor_def(BATCH_SPLIT_SENSOR)
        with build_run_status_sensor_context(
            sensor_name=BATCH_SPLIT_SENSOR,
            dagster_event=result.get_run_failure_event(),
            dagster_instance=self.instance,
            dagster_run=result.dagster_run,
        ) as context:
            answer = sensor(context)
        for split in answer if isinstance(answer, list) else []:
            self.split_requests.append(split)
            self.execute(split)

    def tick(self, at: datetime) -> Tick:
        set_exchange_clock(self.exchange_url, at)
        schedule = self.defs.resolve_schedule_def(REFRESH_SCHEDULE)
        # a closed context releases the instance it opened from the ref (see _tick in test_ml_sensors)
        with build_schedule_context(
            instance=self.instance,
            scheduled_execution_time=at,
            repository_def=self.defs.get_repository_def(),
        ) as context:
            refresh = list(schedule.evaluate_tick(context).run_requests or [])
        for request in refresh:
            self.execute(request)
        result = self.repair_tick()
        return Tick(at, refresh, list(result.run_requests or []), result)

    def repair_tick(self) -> SensorResult:
        """One evaluation of the gap-repair sensor (cursor carried over) and its runs, executed."""
        sensor = self.defs.resolve_sensor_def(GAP_REPAIR_SENSOR)
        with build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources
        ) as context:
            result = sensor(context)
        assert isinstance(result, SensorResult)
        self.cursor = result.cursor
        for request in result.run_requests or []:
            self.execute(request)
        return result


def hours(first: datetime, count: int) -> Iterator[datetime]:
    for i in range(count):
        yield datetime.fromtimestamp((ms(first) + i * HOUR_MS) / 1000, tz=first.tzinfo)
