"""One run request for a contiguous range of days of one symbol: what the schedule and sensors ask for.

A single day is a plain partition run; several days are one single-run range (the tags a backfill with
BackfillPolicy.single_run() puts on its runs), so a catch-up of N days is one fetch and one run, not N.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from dagster import RunRequest

from crypto_platform.defs.market.partitions import market_partition_key

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def market_run_request(
    symbol_id: str, first_day: date, last_day: date, run_key: str, tags: Mapping[str, str]
) -> RunRequest:
    if last_day < first_day:
        raise ValueError(f"range {first_day}..{last_day} ends before it starts")
    if first_day == last_day:
        return RunRequest(
            run_key=run_key, partition_key=market_partition_key(first_day, symbol_id), tags=dict(tags)
        )
    return RunRequest(
        run_key=run_key,
        tags={
            **tags,
            RANGE_START_TAG: str(market_partition_key(first_day, symbol_id)),
            RANGE_END_TAG: str(market_partition_key(last_day, symbol_id)),
        },
    )
