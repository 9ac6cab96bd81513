"""What one stored day of bars should hold, what it holds, and a fingerprint of its content.

A day's partition is fetched at some exchange time `now`: only the bars that had closed by then could
be in it. `DayCoverage` records that point (`covered_until_ms`), the bars the day should therefore hold
and how many of them are missing, so that whoever comes later (the hourly refresh, the gap repair)
can tell "not closed yet" from "closed but missing" without re-reading the bars.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from crypto_platform.lib.market.schema import OHLCV_COLUMNS

DAY_MS = 86_400_000


@dataclass(frozen=True)
class DayCoverage:
    day_start_ms: int
    # Exclusive: the bars opening before it had closed when the day was fetched (≤ the day's end).
    covered_until_ms: int
    expected_bars: int
    stored_bars: int

    @property
    def missing_bars(self) -> int:
        return max(0, self.expected_bars - self.stored_bars)

    @property
    def complete_day(self) -> bool:
        """Every bar of the day had closed when it was fetched (later fetches cannot add bars)."""
        return self.covered_until_ms >= self.day_start_ms + DAY_MS


def day_coverage(day_start_ms: int, now_ms: int, bar_ms: int, stored_ts: pl.Series) -> DayCoverage:
    """Coverage of the UTC day starting at `day_start_ms`, fetched at `now_ms`, holding `stored_ts`."""
    closed_end = now_ms // bar_ms * bar_ms
    covered = min(day_start_ms + DAY_MS, max(day_start_ms, closed_end))
    expected = (covered - day_start_ms) // bar_ms
    in_day = stored_ts.filter((stored_ts >= day_start_ms) & (stored_ts < covered))
    return DayCoverage(day_start_ms, covered, int(expected), int(in_day.n_unique()))


def bars_fingerprint(bars: pl.DataFrame) -> str:
    """SHA-256 of the bars' ts and OHLCV values in time order: the same bars → the same fingerprint.

    Computed from the raw little-endian int64/float64 buffers, not from a file encoding, so neither a
    Parquet writer change nor a column order changes it.
    """
    digest = hashlib.sha256()
    ordered = bars.select(OHLCV_COLUMNS).sort("ts")
    digest.update(ordered.height.to_bytes(8, "little"))
    for column in OHLCV_COLUMNS:
        dtype, numpy_type = (pl.Int64, "<i8") if column == "ts" else (pl.Float64, "<f8")
        digest.update(ordered.get_column(column).cast(dtype).to_numpy().astype(numpy_type).tobytes())
    return digest.hexdigest()
