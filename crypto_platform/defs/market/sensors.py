"""Gap repair: re-request stored `ohlcv` partitions that miss closed bars, bounded, and give up on outages.

Every materialisation of `ohlcv` records per partition how many bars that had closed when it was fetched
are not in it (`missing_bars`, see defs.market.assets). The sensor reads the materialisations made since
its last tick (storage id in its cursor: cheap however long the history), keeps a ledger of the
partitions with missing bars (lib.market.gap_repair) and asks for them again:

- at most MAX_REPAIR_RUNS_PER_TICK runs per tick (adjacent days of a symbol share one run);
- each partition at most MAX_REPAIR_ATTEMPTS times, backing off 1 h, 2 h, 4 h by the market's clock;
- then it gives up: the exchange does not have the bars (real Binance history has such outages), the
  partition stays a gap reported by the `continuity` check, and an AssetObservation on the partition
  says that repair gave up and why, so nobody wonders whether it is still being tried.

The ledger lives in the cursor, so attempts and back-offs survive daemon restarts.
"""

# No `from __future__ import annotations`: Dagster inspects the context and resource annotations.

from dagster import (
    AssetObservation,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from crypto_platform.defs.market.assets import MISSING_BARS_META, OHLCV_KEY
from crypto_platform.defs.market.partitions import contiguous_ranges, market_partitions_def
from crypto_platform.defs.market.run_requests import market_run_request
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


def build_market_sensors(settings: Settings, job_name: str) -> list[SensorDefinition]:
    """The sensors of the market group; `job_name` is the market job defined beside them."""
    valid_partitions = market_partitions_def(settings)

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
        for day_range in contiguous_ranges(due):
            if len(requests) >= MAX_REPAIR_RUNS_PER_TICK:
                break
            for day in day_range.days:
                ledger.requested(f"{day}|{day_range.symbol_id}", now_ms)
            requests.append(
                market_run_request(
                    day_range.symbol_id,
                    day_range.first_day,
                    day_range.last_day,
                    run_key=f"gap_repair:{day_range.symbol_id}:{day_range.first_day}..{day_range.last_day}"
                    f"@{now_ms}",
                    tags={TRIGGER_TAG: "gap_repair"},
                )
            )
        context.log.info(
            f"gap repair at {iso_utc(now_ms)}: {read} new materialisation(s) read, "
            f"{len(ledger.open_gaps())} open gap(s), {len(ledger.reported_gaps())} given up, "
            f"{len(requests)} repair run(s) requested"
        )
        return SensorResult(run_requests=requests, asset_events=observations, cursor=ledger.to_cursor())

    return [market_gap_repair]
