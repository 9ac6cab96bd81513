"""Ticks → closed OHLCV bars, per symbol, on the same grid as the pipeline's `ohlcv` asset.

Rules:
- Bar boundaries come from the timeframe: a tick at t belongs to the bar opened at t − t mod bar_ms
  (UTC epoch grid, exactly how the exchange and `lib.market.schema` label candles).
- The bar being built is *open*; it closes when the first tick of a later bar arrives (event time, not
  the wall clock, so a replay at any speed builds the same bars). Bars in between that saw no tick are
  not invented: they are holes, which `compute_features` treats exactly like an exchange outage (the
  windows that contain them are null) instead of bridging them with made-up flat bars.
- Within the open bar: open = price of the earliest tick, close = price of the latest tick (ties: the
  later arrival), high/low = extremes, so an out-of-order tick *inside* the open bar is merged correctly.
- A tick for a bar that has already closed (or for a bar the warm start already holds) is *late*: it is
  counted (`late_ticks`) and not merged, because the closed bar's features, signal and forecast have
  already been published; rewriting it would make outputs irreproducible.
- Volume: each tick carries the base-asset quantity traded with it (incremental, not a running 24 h
  total); a bar's volume is the sum over its ticks. A producer reading cumulative ticker volumes must
  send differences. A bar built from ticks the scorer saw only partly (it started mid-bar) has the
  volume of the ticks it saw.
- Warm start: `seed` takes stored closed bars (the `ohlcv` asset); ticks then continue after them.

Closed bars are kept for `keep` bars (at least `FEATURE_BARS` in the scorer, so the features at the newest
bar are computed by `compute_features` over the same look-back as the pipeline). Older bars are dropped
only by `trim()`, which the scorer calls after each batch: a batch that closes several bars of one
symbol can still compute each of them with its full look-back.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import polars as pl

from crypto_platform.lib.market.schema import OHLCV_COLUMNS, OHLCV_SCHEMA, empty_ohlcv, normalize_ohlcv
from crypto_platform.lib.market.timeframes import timeframe_ms
from crypto_platform.lib.stream.ticks import Tick


@dataclass(slots=True)
class OpenBar:
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    first_ms: int  # timestamp of the tick that set `open`
    last_ms: int  # timestamp of the tick that set `close`
    ticks: int = 1

    @classmethod
    def start(cls, ts: int, tick: Tick) -> OpenBar:
        p = tick.price
        return cls(ts, p, p, p, p, tick.volume, tick.timestamp_ms, tick.timestamp_ms)

    def add(self, tick: Tick) -> None:
        p = tick.price
        if p > self.high:
            self.high = p
        if p < self.low:
            self.low = p
        if tick.timestamp_ms < self.first_ms:
            self.first_ms, self.open = tick.timestamp_ms, p
        if tick.timestamp_ms >= self.last_ms:
            self.last_ms, self.close = tick.timestamp_ms, p
        self.volume += tick.volume
        self.ticks += 1

    def row(self) -> tuple[int, float, float, float, float, float]:
        return (self.ts, self.open, self.high, self.low, self.close, self.volume)


class Ingested(msgspec.Struct, frozen=True, gc=False):
    """What one tick did: the bar it belongs to, the bars it closed (oldest first), whether it was late.

    Immutable, so the common answer (the tick went into the open bar) is one shared object per open bar."""

    bar_ts: int
    closed: tuple[int, ...] = ()
    late: bool = False


class SymbolBars:
    """Closed bars of one symbol (oldest first) plus the open bar."""

    def __init__(self, symbol: str, timeframe: str, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be ≥ 1, got {keep}")
        self.symbol = symbol
        self.timeframe = timeframe
        self.bar_ms = timeframe_ms(timeframe)
        self.keep = keep
        self._frame = empty_ohlcv()  # closed bars already in a frame
        self._pending: list[tuple[int, float, float, float, float, float]] = []  # closed since last frame
        self.open_bar: OpenBar | None = None
        self._into_open: Ingested | None = None  # what a tick merged into the open bar returns
        self._last_closed: int | None = None  # cached: read on every tick, a polars lookup is not free
        self.late_ticks = 0
        self.ticks = 0

    # -- state -------------------------------------------------------------------------------------

    def seed(self, bars: pl.DataFrame) -> int:
        """Replace the closed history with stored bars (OHLCV columns; extra columns ignored) before the
        first tick. Bars at or after an open bar are ignored. Returns the number of bars kept."""
        frame = normalize_ohlcv(bars.select(OHLCV_COLUMNS)) if bars.height else empty_ohlcv()
        if self.open_bar is not None:
            frame = frame.filter(pl.col("ts") < self.open_bar.ts)
        misaligned = frame.filter(pl.col("ts") % self.bar_ms != 0)
        if misaligned.height:
            raise ValueError(f"{self.symbol}: seed bars are off the {self.timeframe} grid")
        self._frame = frame.tail(self.keep)
        self._pending.clear()
        self._last_closed = int(self._frame["ts"][-1]) if self._frame.height else None
        return self._frame.height

    @property
    def last_closed_ts(self) -> int | None:
        return self._last_closed

    @property
    def closed_count(self) -> int:
        return self._frame.height + len(self._pending)

    def frame(self) -> pl.DataFrame:
        """All closed bars held (OHLCV schema, oldest first); trimmed to `keep` only by `trim`."""
        if self._pending:
            new = pl.DataFrame(self._pending, schema=OHLCV_SCHEMA, orient="row")
            self._frame = pl.concat([self._frame, new], how="vertical")
            self._pending.clear()
        return self._frame

    def trim(self) -> None:
        frame = self.frame()
        if frame.height > self.keep:
            self._frame = frame.tail(self.keep)

    # -- ticks -------------------------------------------------------------------------------------

    def add(self, tick: Tick) -> Ingested:
        self.ticks += 1
        bar_ts = tick.timestamp_ms - tick.timestamp_ms % self.bar_ms
        current = self.open_bar
        if current is not None and bar_ts == current.ts:
            current.add(tick)
            return self._into_open
        last_closed = self.last_closed_ts
        behind_open = current is not None and bar_ts < current.ts
        if behind_open or (last_closed is not None and bar_ts <= last_closed):
            self.late_ticks += 1
            return Ingested(bar_ts, late=True)
        closed: tuple[int, ...] = ()
        if current is not None:
            self._pending.append(current.row())
            self._last_closed = current.ts
            closed = (current.ts,)
        self.open_bar = OpenBar.start(bar_ts, tick)
        self._into_open = Ingested(bar_ts)
        return Ingested(bar_ts, closed)


class BarBook:
    """`SymbolBars` for every symbol, created on first use."""

    def __init__(self, timeframe: str, keep: int) -> None:
        timeframe_ms(timeframe)  # validates
        self.timeframe = timeframe
        self.keep = keep
        self.symbols: dict[str, SymbolBars] = {}

    def get(self, symbol: str) -> SymbolBars:
        bars = self.symbols.get(symbol)
        if bars is None:
            bars = self.symbols[symbol] = SymbolBars(symbol, self.timeframe, self.keep)
        return bars

    def seed(self, symbol: str, bars: pl.DataFrame) -> int:
        return self.get(symbol).seed(bars)

    def add(self, tick: Tick) -> Ingested:
        return self.get(tick.symbol).add(tick)

    def trim(self) -> None:
        for bars in self.symbols.values():
            bars.trim()

    def frames(self, symbols: list[str] | tuple[str, ...]) -> pl.DataFrame:
        """Closed bars of `symbols` in one frame with a `symbol` column (what `compute_features` takes
        to compute every symbol in one call)."""
        parts = [
            self.get(s).frame().with_columns(pl.lit(s).alias("symbol"))
            for s in symbols
            if self.get(s).closed_count
        ]
        if not parts:
            return empty_ohlcv(with_symbol=True)
        return pl.concat(parts, how="vertical").select("symbol", *OHLCV_COLUMNS)

    @property
    def late_ticks(self) -> int:
        return sum(b.late_ticks for b in self.symbols.values())
