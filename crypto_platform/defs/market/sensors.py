"""Gap repair: re-request stored `ohlcv` partitions that miss closed bars, bounded, and give up on outages.

Every materialisation of `ohlcv` records per partition how many bars that had closed when it was fetched
are not in it (`missing_bars`, see defs.market.assets). The sensor reads the materialisations made since
its last tick (storage id in its cursor: cheap however long the history), keeps a ledger of the
partitions with missing bars (lib.market.gap_repair) and asks for them again:

- at most MAX_REPAIR_RUNS_PER_TICK runs per tick, each over up to `Settings.refresh_batch_symbols`
  symbols and their due days (defs.market.run_requests);
- each partition at most MAX_REPAIR_ATTEMPTS times, backing off 1 h, 2 h, 4 h by the market's clock;
- then it gives up: the exchange does not have the bars (real Binance history has such outages), the
  partition stays a gap reported by the `continuity` check, and an AssetObservation on the partition
  says that repair gave up and why, so nobody wonders whether it is still being tried.

The ledger lives in the cursor, so attempts and back-offs survive daemon restarts.

`market_batch_split` (a run-status sensor on failed market runs) is what keeps a failing symbol from
holding back the others of its batch: `ohlcv` fetches every symbol, then fails the run naming the ones
it could not fetch; the sensor asks for the healthy symbols again without them, and for each failing
symbol alone, whose own failed run marks its partitions failed in the UI.
"""

# No `from __future__ import annotations`: Dagster inspects the context and resource annotations.

from datetime import date
from typing import Any

from dagster import (
    AssetObservation,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)

from crypto_platform.defs.market.assets import MISSING_BARS_META, OHLCV_KEY
from crypto_platform.defs.market.partitions import (
    contiguous_ranges,
    market_partitions_def,
    split_partition_key,
    symbol_order,
)
from crypto_platform.defs.market.run_requests import (
    batch_of_run,
    batch_symbols,
    failed_symbols,
    market_run_request,
    split_failed_batch,
)
from crypto_platform.defs.market.schedules import TRIGGER_TAG
from crypto_platform.defs.resources import MarketDataResource
from crypto_platform.lib.market.client import ExchangeUnavailableError
from crypto_platform.lib.market.gap_repair import DEFAULT_BACKOFF_S, DEFAULT_MAX_ATTEMPTS, GapLedger
from crypto_platform.lib.market.source import market_now_ms
from crypto_platform.lib.quality.checks import iso_utc
from crypto_platform.settings import Settings

GAP_REPAIR_SENSOR = "market_gap_repair"
GAP_REPAIR_INTERVAL_S = 15 * 60
MAX_REPAIR_RUNS_PER_TICK = 4
# A repair run merges a symbol's due days (and other symbols') into one range up to this long.
REPAIR_MAX_SPAN_DAYS = 31
BATCH_SPLIT_SENSOR = "market_batch_split"
# How soon the healthy symbols of a failed batch run again: the delay a failing pair costs the others.
BATCH_SPLIT_INTERVAL_S = 30
SPLIT_OF_TAG = "crypto_platform/split_of"
MAX_REPAIR_ATTEMPTS = DEFAULT_MAX_ATTEMPTS
REPAIR_BACKOFF_S = DEFAULT_BACKOFF_S
# A back-off that ends within this of a tick has ended (ticks are never exactly on time).
BACKOFF_SLACK_S = 120.0
# Materialisation records read per tick: a first tick over years of history catches up over a few ticks.
RECORDS_PER_TICK = 5000
_PAGE = 1000


def _read_new_materialisations(context: SensorEvaluationContext, ledger: GapLedger, now_ms: int) -> int:
    read = 0
    while read < RECORDS_PER_TICK:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=OHLCV_KEY, after_storage_id=ledger.after_storage_id),
            limit=_PAGE,
            ascending=True,
        ).records
        for record in records:
            ledger.after_storage_id = max(ledger.after_storage_id, record.storage_id)
            materialization = record.asset_materialization
            if materialization is None or materialization.partition is None:
                continue
            missing = materialization.metadata.get(MISSING_BARS_META)
            if missing is None or not isinstance(missing.value, int):
                continue  # written before partitions recorded their coverage: nothing to judge by
            ledger.observe(str(materialization.partition), missing.value, now_ms)
        read += len(records)
        if len(records) < _PAGE:
            break
    return read


def _repair_ranges(due: list[str]) -> dict[str, tuple[date, date]]:
    """Symbol id → the days to repair this tick: its first stretch of due days, merged with later
    stretches while the whole stays within REPAIR_MAX_SPAN_DAYS (the rest waits for the next tick)."""
    wanted: dict[str, tuple[date, date]] = {}
    for day_range in contiguous_ranges(due):  # sorted by symbol, then day
        known = wanted.get(day_range.symbol_id)
        if known is None:
            wanted[day_range.symbol_id] = (day_range.first_day, day_range.last_day)
        elif (day_range.last_day - known[0]).days + 1 <= REPAIR_MAX_SPAN_DAYS:
            # The days between the stretches get fetched too: they hold the same closed bars either way.
            wanted[day_range.symbol_id] = (known[0], day_range.last_day)
    return wanted


def build_market_sensors(settings: Settings, job: Any) -> list[SensorDefinition]:
    """The sensors of the market group; `job` is the market job defined beside them (what
    `define_asset_job` returns; its class is not public API, hence `Any`)."""
    job_name = job.name
    valid_partitions = market_partitions_def(settings)
    market_symbols = symbol_order(valid_partitions)
    batch_size = settings.refresh_batch_symbols

    @sensor(
        name=GAP_REPAIR_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=GAP_REPAIR_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Re-requests ohlcv partitions missing closed bars: ≤ {MAX_REPAIR_RUNS_PER_TICK} runs a tick, "
            f"≤ {MAX_REPAIR_ATTEMPTS} attempts each with back-off, then reports the gap as an outage."
        ),
    )
    def market_gap_repair(context: SensorEvaluationContext, market_data: MarketDataResource) -> SensorResult:
        ledger = GapLedger.from_cursor(context.cursor, MAX_REPAIR_ATTEMPTS, REPAIR_BACKOFF_S)
        try:
            now_ms = market_now_ms(market_data.source, market_data.settings())
        except ExchangeUnavailableError as exc:
            # Without the exchange's clock no back-off can be judged, and a repair would fail anyway.
            return SensorResult(skip_reason=f"exchange unreachable, no repair this tick: {exc}")
        read = _read_new_materialisations(context, ledger, now_ms)
        due, given_up = ledger.due(now_ms, limit=len(ledger.gaps), slack_s=BACKOFF_SLACK_S)

        observations = []
        for partition in given_up:
            entry = ledger.gaps[partition]
            context.log.warning(
                f"gap repair gives up on {partition}: {entry.missing_bars} closed bar(s) still missing after "
                f"{entry.attempts} attempt(s) since {iso_utc(entry.first_seen_ms)}: the exchange has no data"
            )
            observations.append(
                AssetObservation(
                    asset_key=OHLCV_KEY,
                    partition=partition,
                    metadata={
                        "gap_repair": "gave up: the exchange has no data for these bars (outage)",
                        "missing_bars": entry.missing_bars,
                        "repair_attempts": entry.attempts,
                        "gap_first_seen": iso_utc(entry.first_seen_ms),
                    },
                )
            )

        # Partitions that no longer exist (symbols dropped, start moved) are not asked for.
        due = [p for p in due if valid_partitions.has_partition_key(p)]
        requests: list[RunRequest] = []
        batches = batch_symbols(_repair_ranges(due), market_symbols, batch_size, REPAIR_MAX_SPAN_DAYS)
        for batch in batches[:MAX_REPAIR_RUNS_PER_TICK]:
            members = set(batch.symbol_ids)
            for partition in due:
                symbol_id, day = split_partition_key(partition)
                if symbol_id in members and batch.first_day <= date.fromisoformat(day) <= batch.last_day:
                    ledger.requested(partition, now_ms)
            requests.append(
                market_run_request(
                    batch, run_key=f"gap_repair:{batch.label}@{now_ms}", tags={TRIGGER_TAG: "gap_repair"}
                )
            )
        context.log.info(
            f"gap repair at {iso_utc(now_ms)}: {read} new materialisation(s) read, "
            f"{len(ledger.open_gaps())} open gap(s), {len(ledger.reported_gaps())} given up, "
            f"{len(requests)} repair run(s) requested"
        )
        return SensorResult(run_requests=requests, asset_events=observations, cursor=ledger.to_cursor())

    @run_status_sensor(
        name=BATCH_SPLIT_SENSOR,
        run_status=DagsterRunStatus.FAILURE,
        monitored_jobs=[job],
        request_job=job,
        minimum_interval_seconds=BATCH_SPLIT_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "When a market run over several symbols fails, runs its failing symbols alone and the healthy "
            "ones together again (bisects it when the failure names no symbol)."
        ),
    )
    def market_batch_split(context: RunStatusSensorContext) -> list[RunRequest] | SkipReason:
        run = context.dagster_run
        batch = batch_of_run(run.tags, valid_partitions)
        if batch is None or len(batch.symbol_ids) == 1:
            return SkipReason(f"run {run.run_id} covered one symbol (or none): nothing to split")
        records = [
            record
            for event_type in (DagsterEventType.STEP_FAILURE, DagsterEventType.ASSET_CHECK_EVALUATION)
            for record in context.instance.get_records_for_run(run_id=run.run_id, of_type=event_type).records
        ]
        failed = failed_symbols(
            r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event
        )
        parts = split_failed_batch(batch, failed)
        if not parts:
            return SkipReason(
                f"run {run.run_id}: all {len(batch.symbol_ids)} symbols failed (the exchange, not a symbol): "
                "the next refresh retries them"
            )
        context.log.info(
            f"run {run.run_id} over {batch.label} failed"
            + (f" for {', '.join(failed)}" if failed else " (no symbol named: bisecting)")
            + f"; requesting {len(parts)} run(s): {'; '.join(p.label for p in parts)}"
        )
        trigger = run.tags.get(TRIGGER_TAG, "materialize")
        return [
            market_run_request(
                part,
                run_key=f"split:{run.run_id}:{part.label}",
                tags={TRIGGER_TAG: trigger, SPLIT_OF_TAG: run.run_id},
            )
            for part in parts
        ]

    return [market_gap_repair, market_batch_split]
