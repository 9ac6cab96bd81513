"""The one partitioning of market data: UTC day × symbol.

Assets, schedules and sensors all take the definition from `market_partitions_def(settings)`; it is
cached per (start, symbols), so every caller with the same settings holds the same object and Dagster
sees one partitions definition, not several equal-looking ones.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

from dagster import (
    DailyPartitionsDefinition,
    DimensionPartitionMapping,
    IdentityPartitionMapping,
    MultiPartitionKey,
    MultiPartitionMapping,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    TimeWindowPartitionMapping,
)

from crypto_platform.lib.market.symbols import exchange_symbol_id, normalize_symbol
from crypto_platform.lib.market.timeframes import bars_per_day
from crypto_platform.lib.storage import DAY_MS, day_start_ms
from crypto_platform.settings import Settings

DATE_DIM = "date"
SYMBOL_DIM = "symbol"


@lru_cache(maxsize=16)
def _build(partitions_start: str, symbol_ids: tuple[str, ...]) -> MultiPartitionsDefinition:
    return MultiPartitionsDefinition(
        {
            # end_offset=1: today's (still filling) day is a partition too, so the hourly refresh and
            # `materialize` can write it; the bars in it are only ever closed ones.
            DATE_DIM: DailyPartitionsDefinition(start_date=partitions_start, end_offset=1, timezone="UTC"),
            SYMBOL_DIM: StaticPartitionsDefinition(list(symbol_ids)),
        }
    )


def market_partitions_def(settings: Settings) -> MultiPartitionsDefinition:
    symbol_ids = tuple(dict.fromkeys(exchange_symbol_id(s) for s in settings.symbols))
    return _build(settings.partitions_start, symbol_ids)


def symbol_order(partitions_def: MultiPartitionsDefinition) -> list[str]:
    """Symbol ids in the symbol dimension's order (that of `Settings.symbols`): a partition-key range
    over several symbols covers the ones between its ends in this order."""
    return list(partitions_def.get_partitions_def_for_dimension(SYMBOL_DIM).get_partition_keys())


def market_symbol_order(settings: Settings) -> list[str]:
    """`symbol_order` of the market partitions `settings` define."""
    return symbol_order(market_partitions_def(settings))


def market_partition_key(day: str | date, symbol: str) -> MultiPartitionKey:
    """(2024-01-01, "BTC/USDT" or "BTCUSDT") → the key whose string form is `2024-01-01|BTCUSDT`."""
    day_str = day.isoformat() if isinstance(day, date) else day
    return MultiPartitionKey({DATE_DIM: day_str, SYMBOL_DIM: exchange_symbol_id(symbol)})


def split_partition_key(key: str) -> tuple[str, str]:
    """`2024-01-01|BTCUSDT` (or a MultiPartitionKey) → ("BTCUSDT", "2024-01-01")."""
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims[SYMBOL_DIM], dims[DATE_DIM]
    # Dimensions are ordered by name in the string form: date first, then symbol.
    day, _, symbol_id = key.partition("|")
    if not day or not symbol_id:
        raise ValueError(f"not a date|symbol partition key: {key!r}")
    return symbol_id, day


def symbol_for_id(symbol_id: str) -> str:
    """`BTCUSDT` → `BTC/USDT` (the unified form stored in the `symbol` column)."""
    return normalize_symbol(symbol_id)


@dataclass(frozen=True)
class DayRange:
    symbol_id: str
    first_day: date
    last_day: date

    @property
    def days(self) -> list[str]:
        n = (self.last_day - self.first_day).days + 1
        return [(self.first_day + timedelta(days=i)).isoformat() for i in range(n)]

    @property
    def bounds_ms(self) -> tuple[int, int]:
        """[start, end) of the range in epoch ms: the first day's midnight to the one after the last."""
        return day_start_ms(self.first_day), day_start_ms(self.last_day) + DAY_MS


def contiguous_ranges(partition_keys: list[str]) -> list[DayRange]:
    """Groups keys by symbol and merges consecutive days: the unit one paginated fetch covers.

    A single-run backfill hands an asset a rectangle of keys (every day of a range × some symbols);
    holes only appear when a run was launched for a hand-picked set of days.
    """
    by_symbol: dict[str, set[date]] = defaultdict(set)
    for key in partition_keys:
        symbol_id, day = split_partition_key(key)
        by_symbol[symbol_id].add(date.fromisoformat(day))
    ranges = []
    for symbol_id in sorted(by_symbol):
        days = sorted(by_symbol[symbol_id])
        start = prev = days[0]
        for d in days[1:]:
            if d != prev + timedelta(days=1):
                ranges.append(DayRange(symbol_id, start, prev))
                start = d
            prev = d
        ranges.append(DayRange(symbol_id, start, prev))
    return ranges


def lookback_days(lookback_bars: int, timeframe: str) -> int:
    """Whole days of history that cover `lookback_bars` bars before a day's first bar."""
    return math.ceil(lookback_bars / bars_per_day(timeframe))


def previous_days_mapping(days: int) -> MultiPartitionMapping:
    """Each (day, symbol) reads the same symbol's partitions from `days` days before through the day.

    allow_nonexistent_upstream_partitions: the first days after `partitions_start` simply get less
    history instead of failing the mapping.
    """
    return MultiPartitionMapping(
        {
            DATE_DIM: DimensionPartitionMapping(
                DATE_DIM,
                TimeWindowPartitionMapping(start_offset=-days, allow_nonexistent_upstream_partitions=True),
            ),
            SYMBOL_DIM: DimensionPartitionMapping(SYMBOL_DIM, IdentityPartitionMapping()),
        }
    )
