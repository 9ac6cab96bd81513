"""Market runs over a rectangle of partitions: a range of days × a run of consecutive symbols.

What the hourly refresh, the gap repair, the batch-split sensor and `crypto-platform materialize` ask
for. One run covers up to `Settings.refresh_batch_symbols` symbols, so a refresh of 256 pairs is a
handful of runs, not 256 (a run costs seconds of Dagster overhead; a symbol's fetch, milliseconds).

The rectangle is the shape Dagster itself gives a range over a MultiPartitionsDefinition: the tags
`dagster/asset_partition_range_start` = `<first day>|<first symbol>` and `…_end` = `<last day>|<last
symbol>` select the product of the day range and the symbols from the first to the last *in the
symbol dimension's order* (MultiPartitionsDefinition.get_partition_keys_in_range), which is the order
of `Settings.symbols`. So a batch is always a contiguous slice of that order; a single-run backfill
launched from the UI over some days and symbols has the same tags, and the UI shows each partition's
status from the run's planned partitions.

A failing symbol fails its whole run (Dagster marks every partition of a failed step failed, and an
asset step yields one output for all its partitions). `split_failed_batch` says what to run instead:
the symbols the run named as failing (`ohlcv` could not fetch them, or a blocking check failed on
them), each alone, and the healthy ones in the stretches between them; when the failure names no
symbol, the batch is bisected.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    DagsterEvent,
    DagsterEventType,
    ExecuteInProcessResult,
    MultiPartitionsDefinition,
    RunRequest,
)

from crypto_platform.defs.market.partitions import (
    market_partition_key,
    split_partition_key,
    symbol_order,
)
from crypto_platform.lib.market.symbols import exchange_symbol_id

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"
# On the `ohlcv` step's Failure: the symbol ids whose bars could not be fetched (the others were).
FAILED_SYMBOLS_META = "failed_symbols"


@dataclass(frozen=True)
class SymbolBatch:
    """Days first_day..last_day of `symbol_ids`, consecutive symbols in the partitions' order."""

    symbol_ids: tuple[str, ...]
    first_day: date
    last_day: date

    def __post_init__(self) -> None:
        if not self.symbol_ids:
            raise ValueError("a batch needs at least one symbol")
        if self.last_day < self.first_day:
            raise ValueError(f"range {self.first_day}..{self.last_day} ends before it starts")

    @property
    def span_days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    @property
    def label(self) -> str:
        """`BTCUSDT..SOLUSDT (4) 2025-06-01..2025-06-02`: for run keys and messages."""
        first, last = self.symbol_ids[0], self.symbol_ids[-1]
        symbols = first if first == last else f"{first}..{last} ({len(self.symbol_ids)})"
        return f"{symbols} {self.first_day}..{self.last_day}"

    def range_tags(self) -> dict[str, str]:
        """The partition-range tags of a run over this rectangle (a range of one partition is valid)."""
        first_symbol, last_symbol = self.symbol_ids[0], self.symbol_ids[-1]
        return {
            RANGE_START_TAG: str(market_partition_key(self.first_day, first_symbol)),
            RANGE_END_TAG: str(market_partition_key(self.last_day, last_symbol)),
        }


def market_run_request(batch: SymbolBatch, run_key: str, tags: Mapping[str, str]) -> RunRequest:
    """The run request of one batch; a single partition is a plain partition run."""
    if len(batch.symbol_ids) == 1 and batch.first_day == batch.last_day:
        partition_key = market_partition_key(batch.first_day, batch.symbol_ids[0])
        return RunRequest(run_key=run_key, partition_key=partition_key, tags=dict(tags))
    return RunRequest(run_key=run_key, tags={**tags, **batch.range_tags()})


def batch_symbols(
    wanted: Mapping[str, tuple[date, date]],
    symbol_order: Sequence[str],
    batch_size: int,
    max_merged_span_days: int,
    *,
    include_unwanted: bool = True,
) -> list[SymbolBatch]:
    """Symbol id → (first, last day) wanted, as few rectangles as the limits allow.

    Walks the symbols in the partitions' order and grows a batch while it holds at most `batch_size`
    symbols (counting symbols between wanted ones, which the rectangle includes and re-fetches) and
    its merged day range stays within `max_merged_span_days` or within the longest range merged into
    it: a symbol a day behind joins the others (re-fetching a day costs nothing extra: the same one
    klines request), a gap two years back does not drag a whole batch over two years.
    `include_unwanted=False` never puts a symbol that is not wanted in a rectangle (a batch then ends
    where the wanted symbols stop being consecutive): what `materialize --symbols` needs.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
    unknown = set(wanted) - set(symbol_order)
    if unknown:
        raise ValueError(f"symbols not in the partitions: {sorted(unknown)}")
    batches: list[SymbolBatch] = []
    start_index: int | None = None
    members: list[str] = []
    first_day = last_day = date.min
    widest = 0

    def close() -> None:
        if start_index is not None:
            end_index = symbol_order.index(members[-1])
            batches.append(SymbolBatch(tuple(symbol_order[start_index : end_index + 1]), first_day, last_day))

    for index, symbol_id in enumerate(symbol_order):
        if symbol_id not in wanted:
            continue
        first, last = wanted[symbol_id]
        span = (last - first).days + 1
        if start_index is not None:
            merged_first, merged_last = min(first_day, first), max(last_day, last)
            merged_span = (merged_last - merged_first).days + 1
            adjacent = include_unwanted or index == symbol_order.index(members[-1]) + 1
            fits = (
                adjacent
                and index - start_index + 1 <= batch_size
                and merged_span <= max(max_merged_span_days, widest, span)
            )
            if fits:
                members.append(symbol_id)
                first_day, last_day, widest = merged_first, merged_last, max(widest, span)
                continue
            close()
        start_index, members = index, [symbol_id]
        first_day, last_day, widest = first, last, span
    close()
    return batches


def batch_of_run(tags: Mapping[str, str], partitions_def: MultiPartitionsDefinition) -> SymbolBatch | None:
    """The rectangle a market run covered, read from its partition tags (None: not a market run)."""
    if PARTITION_TAG in tags:
        start = end = tags[PARTITION_TAG]
    elif RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        start, end = tags[RANGE_START_TAG], tags[RANGE_END_TAG]
    else:
        return None
    try:
        (first_symbol, first_day), (last_symbol, last_day) = (
            split_partition_key(start),
            split_partition_key(end),
        )
    except ValueError:
        return None
    order = symbol_order(partitions_def)
    if first_symbol not in order or last_symbol not in order:
        return None  # symbols dropped from the configuration since
    symbols = order[order.index(first_symbol) : order.index(last_symbol) + 1]
    if not symbols:
        return None
    return SymbolBatch(tuple(symbols), date.fromisoformat(first_day), date.fromisoformat(last_day))


def failed_symbols(events: Iterable[DagsterEvent] | ExecuteInProcessResult) -> list[str]:
    """The symbols a failed run named as the cause (empty: it failed elsewhere, or everywhere).

    Two sources: the `ohlcv` step's Failure (symbols it could not fetch) and failed blocking checks
    (each check names its `failed_symbols`: bars that are not OHLC, duplicated, …). `events`: the run's
    step-failure and check-evaluation events (a run-status sensor reads them from the instance), or
    an in-process result.
    """
    if isinstance(events, ExecuteInProcessResult):
        events = events.all_events
    failed: list[str] = []
    for event in events:
        value = None
        if event.is_step_failure:
            user_data = event.step_failure_data.user_failure_data
            value = user_data.metadata.get(FAILED_SYMBOLS_META) if user_data is not None else None
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            blocking_failure = (
                isinstance(evaluation, AssetCheckEvaluation)
                and not evaluation.passed
                and evaluation.severity == AssetCheckSeverity.ERROR
            )
            value = evaluation.metadata.get(FAILED_SYMBOLS_META) if blocking_failure else None
        if value is not None and isinstance(value.value, list):
            # the check metadata names unified symbols (BTC/USDT), the step's Failure symbol ids
            failed += [exchange_symbol_id(str(s)) for s in value.value]
    return list(dict.fromkeys(failed))


def split_failed_batch(batch: SymbolBatch, failed_symbol_ids: Collection[str]) -> list[SymbolBatch]:
    """What to run after `batch` failed: the failing symbols alone, the healthy stretches together.

    `failed_symbol_ids` are the symbols the run named (`failed_symbols`); empty (it failed where no
    symbol is named, e.g. in `features`) means unknown, and the batch is bisected so the culprit is
    isolated in log2(batch) rounds. A batch of one symbol, or one where every symbol failed (the
    exchange is down), is not split: the next refresh or repair retries it.
    """
    failed = [s for s in batch.symbol_ids if s in set(failed_symbol_ids)]
    if len(batch.symbol_ids) == 1 or len(failed) == len(batch.symbol_ids):
        # Every symbol failing is the exchange failing: splitting would only multiply failed runs.
        return []
    if not failed:
        half = len(batch.symbol_ids) // 2
        parts = [batch.symbol_ids[:half], batch.symbol_ids[half:]]
    else:
        parts = []
        healthy: list[str] = []
        for symbol_id in batch.symbol_ids:
            if symbol_id in failed:
                if healthy:
                    parts.append(tuple(healthy))
                    healthy = []
                parts.append((symbol_id,))
            else:
                healthy.append(symbol_id)
        if healthy:
            parts.append(tuple(healthy))
    return [SymbolBatch(tuple(part), batch.first_day, batch.last_day) for part in parts]
