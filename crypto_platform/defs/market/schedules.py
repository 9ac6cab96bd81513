"""Hourly refresh of the market partitions that hold the bars closed since the last refresh.

Binance closes an hourly bar on the hour; at minute 5 the bar is closed and served. Each tick asks, per
symbol, for the days from the one the stored history was last fetched up to (`covered_until_ms` on the
newest `ohlcv` partition's latest materialisation, read from the Dagster instance) through today:

- at 00:05 the bar that closed at 00:00 is yesterday's 23:00 bar, so yesterday's partition is asked for
  along with the new day's (asking for today alone left a hole every 24 bars);
- after the daemon was down for N hours, the first tick asks for every day since the last fetch;
- a symbol with no stored history gets the day of the last closed bar and today (history itself is
  `crypto-platform materialize`'s or a backfill's job, not an hourly refresh's).

One run covers up to `Settings.refresh_batch_symbols` consecutive symbols and their days (a rectangle
of partitions, see defs.market.run_requests), through the whole `market` group; `ohlcv` fetches the
symbols concurrently. A failing pair fails its batch's run, and the batch-split sensor re-runs the
healthy symbols without it at once (defs.market.sensors), so it holds the others back by one sensor
tick, not an hour. The instance, not process memory, knows the last refresh: a restarted daemon, or a
run that failed (nothing materialised), is caught up on the next tick.

default_status RUNNING: the embedded setup (`make run` = materialize + `dagster dev`) is meant to keep
today's data fresh without a click in the UI. The schedule only fires where a dagster-daemon runs
(`dagster dev` starts one); the webserver alone, tests and `crypto-platform materialize` never tick it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from dagster import (
    AssetRecordsFilter,
    DagsterInstance,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)

from crypto_platform.defs.market.assets import COVERED_UNTIL_META, OHLCV_KEY
from crypto_platform.defs.market.partitions import (
    DATE_DIM,
    market_partitions_def,
    split_partition_key,
    symbol_order,
)
from crypto_platform.defs.market.run_requests import batch_symbols, market_run_request
from crypto_platform.lib.market.timeframes import timeframe_ms, validate_timeframe
from crypto_platform.settings import Settings

HOURLY_REFRESH_CRON = "5 * * * *"
TRIGGER_TAG = "crypto_platform/trigger"
# A refresh catches up at most this many days per symbol; older holes are a backfill's job (a daemon
# that was off for a quarter should not silently start a run of months at minute 5).
MAX_CATCH_UP_DAYS = 31


def _utc_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def newest_stored_days(instance: DagsterInstance, symbol_ids: list[str]) -> dict[str, str]:
    """symbol id → newest day with a materialised `ohlcv` partition (symbols without any are absent)."""

    newest: dict[str, str] = {}
    wanted = set(symbol_ids)
    for key in instance.get_materialized_partitions(OHLCV_KEY):
        symbol_id, day = split_partition_key(key)
        if symbol_id in wanted and day > newest.get(symbol_id, ""):
            newest[symbol_id] = day
    return newest


def covered_until_ms(instance: DagsterInstance, partition: str) -> int | None:
    """Exchange time up to which the latest materialisation of `partition` fetched its closed bars.

    A materialisation without the figure (written before it existed) counts as covering nothing of its
    day, so the day is fetched again rather than assumed complete.
    """

    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=OHLCV_KEY, asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(COVERED_UNTIL_META)
    if value is None or not isinstance(value.value, int):
        _, day = split_partition_key(partition)
        return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)
    return int(value.value)


def refresh_days(
    covered_ms: int | None, tick_ms: int, bar_ms: int, first_partition_day: date
) -> tuple[date, date]:
    """First and last day a refresh at `tick_ms` asks for, given the stored history's coverage.

    From the day of the first bar not yet fetched (the coverage point itself) or, without history, of
    the last closed bar, through the tick's day; never before the partitions start, never more than
    MAX_CATCH_UP_DAYS.
    """
    closed_end = tick_ms // bar_ms * bar_ms  # bars opening before it have closed
    start_ms = closed_end - bar_ms if covered_ms is None else min(covered_ms, closed_end)
    today = _utc_day(tick_ms)
    first = max(_utc_day(start_ms), first_partition_day, today - timedelta(days=MAX_CATCH_UP_DAYS - 1))
    return min(first, today), today


def build_market_schedules(settings: Settings, job_name: str) -> list[ScheduleDefinition]:
    """The schedules of the market group; `job_name` is the market job defined beside them."""
    partitions_def = market_partitions_def(settings)
    symbol_ids = symbol_order(partitions_def)
    first_day = date.fromisoformat(
        partitions_def.get_partitions_def_for_dimension(DATE_DIM).get_first_partition_key()
    )
    bar_ms = timeframe_ms(validate_timeframe(settings.timeframe))
    batch_size = settings.refresh_batch_symbols

    @schedule(
        name="market_hourly_refresh",
        cron_schedule=HOURLY_REFRESH_CRON,
        execution_timezone="UTC",
        job_name=job_name,
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            "Minute 5 of every hour (UTC): per symbol, the days holding the bars closed since the last "
            "refresh (yesterday too just after midnight, every missed day after downtime); "
            f"{batch_size} symbols per run."
        ),
    )
    def market_hourly_refresh(context: ScheduleEvaluationContext) -> Iterator[RunRequest]:
        tick = context.scheduled_execution_time
        tick_ms = int(tick.timestamp() * 1000)
        newest = newest_stored_days(context.instance, symbol_ids)
        wanted: dict[str, tuple[date, date]] = {}
        for symbol_id in symbol_ids:
            covered = None
            if symbol_id in newest:
                covered = covered_until_ms(context.instance, f"{newest[symbol_id]}|{symbol_id}")
            first, last = refresh_days(covered, tick_ms, bar_ms, first_day)
            if covered is not None and (last - _utc_day(covered)).days >= MAX_CATCH_UP_DAYS:
                context.log.warning(
                    f"{symbol_id}: history was last fetched up to {_utc_day(covered)}; the refresh catches "
                    f"up from {first} only: backfill the days before it"
                )
            wanted[symbol_id] = (first, last)
        # Symbols a little behind share a run with the others (their range is the batch's union):
        # re-fetching a covered day is the same one klines request and overwrites it with the same bars.
        for batch in batch_symbols(wanted, symbol_ids, batch_size, MAX_CATCH_UP_DAYS):
            yield market_run_request(
                batch,
                run_key=f"{batch.label}@{tick.isoformat()}",
                tags={TRIGGER_TAG: "hourly_refresh"},
            )

    return [market_hourly_refresh]
