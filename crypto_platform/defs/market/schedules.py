"""Hourly refresh of today's market partitions.

Binance closes an hourly bar on the hour; at minute 5 the bar is closed and served. Each tick asks for
today's (date, symbol) partition of every symbol through the whole `market` group, so `ohlcv`,
`features` and `quality_report` of today move forward together, one run per symbol (a slow or failing
pair does not hold the others back).

default_status RUNNING: the embedded setup (`make run` = materialize + `dagster dev`) is meant to keep
today's data fresh without a click in the UI. The schedule only fires where a dagster-daemon runs
(`dagster dev` starts one); the webserver alone, tests and `crypto-platform materialize` never tick it.
"""

from __future__ import annotations

from collections.abc import Iterator

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)

from crypto_platform.defs.market.partitions import SYMBOL_DIM, market_partition_key, market_partitions_def
from crypto_platform.settings import Settings

HOURLY_REFRESH_CRON = "5 * * * *"


def build_market_schedules(settings: Settings, job_name: str) -> list[ScheduleDefinition]:
    """The schedules of the market group; `job_name` is the market job defined beside them."""
    partitions_def = market_partitions_def(settings)
    symbol_ids = partitions_def.get_partitions_def_for_dimension(SYMBOL_DIM).get_partition_keys()

    @schedule(
        name="market_hourly_refresh",
        cron_schedule=HOURLY_REFRESH_CRON,
        execution_timezone="UTC",
        job_name=job_name,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Minute 5 of every hour (UTC): today's market partitions, one run per symbol.",
    )
    def market_hourly_refresh(context: ScheduleEvaluationContext) -> Iterator[RunRequest]:
        today = context.scheduled_execution_time.date().isoformat()
        for symbol_id in symbol_ids:
            key = market_partition_key(today, symbol_id)
            yield RunRequest(
                run_key=f"{key}@{context.scheduled_execution_time.isoformat()}",
                partition_key=key,
                tags={"crypto_platform/trigger": "hourly_refresh"},
            )

    return [market_hourly_refresh]
