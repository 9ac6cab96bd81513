"""The OHLCV frame every part of the platform exchanges.

ts = bar open time, UTC epoch milliseconds (int64); prices in the quote currency, volume in the
base asset, all float64. A `symbol` column ("BTC/USDT") is present when a frame holds several pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

OHLCV_COLUMNS = ("ts", "open", "high", "low", "close", "volume")
OHLCV_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Int64(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}


def empty_ohlcv(with_symbol: bool = False) -> pl.DataFrame:
    schema = dict(OHLCV_SCHEMA)
    if with_symbol:
        schema = {"symbol": pl.String(), **schema}
    return pl.DataFrame(schema=schema)


def normalize_ohlcv(frame: pl.DataFrame) -> pl.DataFrame:
    """Cast to the typed schema, sort by time and drop duplicate bars (the last one seen wins).

    Keeps a `symbol` column if present (then de-duplicates per symbol).
    """
    keys = ["symbol", "ts"] if "symbol" in frame.columns else ["ts"]
    cols = [c for c in ("symbol", *OHLCV_COLUMNS) if c in frame.columns]
    missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"OHLCV frame is missing columns: {missing}")
    casts = [pl.col(c).cast(t, strict=True) for c, t in OHLCV_SCHEMA.items()]
    if "symbol" in frame.columns:
        casts.append(pl.col("symbol").cast(pl.String))
    return (
        frame.select(cols)
        .with_columns(casts)
        .unique(subset=keys, keep="last", maintain_order=True)
        .sort(keys)
    )


@dataclass(frozen=True)
class Gap:
    """Bars missing between two present bars: `after_ts` is the last bar before the hole."""

    after_ts: int
    missing_bars: int

    def to_dict(self) -> dict[str, int]:
        return {"after_ts": self.after_ts, "missing_bars": self.missing_bars}


def find_gaps(frame: pl.DataFrame, bar_ms: int) -> list[Gap]:
    """Holes in a single-symbol, sorted OHLCV frame. Real Binance history has outages of up to 33 h."""
    if frame.height < 2:
        return []
    diffs = frame.select(
        pl.col("ts").alias("after_ts"),
        ((pl.col("ts").shift(-1) - pl.col("ts")) // bar_ms - 1).alias("missing_bars"),
    ).filter(pl.col("missing_bars") > 0)
    return [Gap(int(r[0]), int(r[1])) for r in diffs.iter_rows()]
