"""Stored bars by symbol and timeframe: files of real candles, or the seeded simulator.

The exchange replay server (`crypto_platform.devtools.replay`) serves them over Binance's REST API, and the
producer's `replay` source turns them into ticks.

A store answers two questions, the two ways Binance's klines endpoint reads history: the first
`limit` bars from a start time, and the last `limit` bars before an end time. Neither knows about
the clock; the server cuts at "now" by passing an end time.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from crypto_platform.lib.market.schema import empty_ohlcv, normalize_ohlcv
from crypto_platform.lib.market.simulator import SIMULATION_END_MS, SIMULATION_ORIGIN_MS, simulate_ohlcv
from crypto_platform.lib.market.symbols import exchange_symbol_id, normalize_symbol
from crypto_platform.lib.market.timeframes import TIMEFRAME_MS

log = logging.getLogger(__name__)

# binance_BTCUSDT_1h.csv.gz, binance_ETHBTC_4h.csv, binance_BTCUSDT_1h.parquet
FILE_PATTERN = re.compile(
    r"^(?P<exchange>[a-z0-9]+)_(?P<symbol>[A-Z0-9]+)_(?P<timeframe>\d+[mhd])\.(?P<ext>csv\.gz|csv|parquet)$"
)
# When one (symbol, timeframe) has several files, the first extension here wins.
_EXTENSION_PREFERENCE = ("parquet", "csv", "csv.gz")


class UnsupportedIntervalError(LookupError):
    """The store cannot serve this timeframe for this symbol."""


class BarStore(Protocol):
    def symbol_ids(self) -> list[str]: ...

    def first_bars(
        self, symbol_id: str, timeframe: str, start_ms: int, end_ms: int, limit: int
    ) -> pl.DataFrame:
        """The first `limit` bars with ts in [start_ms, end_ms)."""
        ...

    def last_bars(self, symbol_id: str, timeframe: str, end_ms: int, limit: int) -> pl.DataFrame:
        """The last `limit` bars with ts < end_ms."""
        ...

    def ticker_timeframe(self, symbol_id: str) -> str:
        """The finest timeframe held for the symbol (tickers are computed from it)."""
        ...


def _bar_ms(timeframe: str) -> int:
    bar_ms = TIMEFRAME_MS.get(timeframe)
    if bar_ms is None:
        raise UnsupportedIntervalError(timeframe)
    return bar_ms


def aggregate_bars(frame: pl.DataFrame, bar_ms: int) -> pl.DataFrame:
    """Coarser bars from finer ones, in UTC-aligned buckets as Binance builds them (4h at 00/04/…, 1d at 00).

    A bucket with missing finer bars (an outage) still becomes a bar, from what traded, like on the
    exchange; a bucket with no bars at all stays absent.
    """
    return (
        frame.group_by((pl.col("ts") // bar_ms * bar_ms).alias("bucket"), maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
        .rename({"bucket": "ts"})
        .pipe(normalize_ohlcv)
    )


class _Series:
    """One symbol's bars at one timeframe, sorted, with the ts column as numpy for binary search."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self.ts = frame["ts"].to_numpy()

    def first(self, start_ms: int, end_ms: int, limit: int) -> pl.DataFrame:
        i = int(np.searchsorted(self.ts, start_ms, side="left"))
        j = min(int(np.searchsorted(self.ts, end_ms, side="left")), i + limit)
        return self.frame.slice(i, max(0, j - i))

    def last(self, end_ms: int, limit: int) -> pl.DataFrame:
        j = int(np.searchsorted(self.ts, end_ms, side="left"))
        i = max(0, j - limit)
        return self.frame.slice(i, j - i)


def _read_bars(path: Path) -> pl.DataFrame:
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
    return normalize_ohlcv(frame)


class FileBarStore:
    """Bars from files named `{exchange}_{SYMBOL}_{timeframe}.{csv.gz,csv,parquet}` in one directory.

    Files are read on first use and kept. A timeframe with no file of its own is aggregated from
    the coarsest file whose bar length divides it (4h and 1d from 1h).
    """

    def __init__(self, directory: str | Path, exchange: str = "binance") -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"replay data directory {self.directory} does not exist")
        found: dict[tuple[str, str], Path] = {}
        for path in sorted(self.directory.iterdir()):
            match = FILE_PATTERN.match(path.name)
            if not match or match["exchange"] != exchange or match["timeframe"] not in TIMEFRAME_MS:
                continue
            key = (match["symbol"], match["timeframe"])
            previous = found.get(key)
            if previous is not None:
                prev_ext = FILE_PATTERN.match(previous.name)["ext"]  # type: ignore[index]
                if _EXTENSION_PREFERENCE.index(prev_ext) <= _EXTENSION_PREFERENCE.index(match["ext"]):
                    log.info("replay: %s ignored, %s holds the same series", path.name, previous.name)
                    continue
            found[key] = path
        self._files = found
        self._series: dict[tuple[str, str], _Series] = {}
        self._lock = threading.Lock()

    def symbol_ids(self) -> list[str]:
        return sorted({symbol for symbol, _ in self._files})

    def _timeframes(self, symbol_id: str) -> list[str]:
        return sorted((tf for s, tf in self._files if s == symbol_id), key=TIMEFRAME_MS.__getitem__)

    def ticker_timeframe(self, symbol_id: str) -> str:
        timeframes = self._timeframes(symbol_id)
        if not timeframes:
            raise KeyError(symbol_id)
        return timeframes[0]

    def _get(self, symbol_id: str, timeframe: str) -> _Series:
        key = (symbol_id, timeframe)
        bar_ms = _bar_ms(timeframe)
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                return series
            if key in self._files:
                frame = _read_bars(self._files[key])
            else:
                bases = [tf for tf in self._timeframes(symbol_id) if bar_ms % TIMEFRAME_MS[tf] == 0]
                if not bases:
                    raise UnsupportedIntervalError(timeframe)
                base = max(bases, key=TIMEFRAME_MS.__getitem__)
                base_series = self._series.get((symbol_id, base))
                base_frame = base_series.frame if base_series else _read_bars(self._files[(symbol_id, base)])
                self._series.setdefault((symbol_id, base), _Series(base_frame))
                frame = aggregate_bars(base_frame, bar_ms)
            series = self._series[key] = _Series(frame)
            return series

    def first_bars(
        self, symbol_id: str, timeframe: str, start_ms: int, end_ms: int, limit: int
    ) -> pl.DataFrame:
        return self._get(symbol_id, timeframe).first(start_ms, end_ms, limit)

    def last_bars(self, symbol_id: str, timeframe: str, end_ms: int, limit: int) -> pl.DataFrame:
        return self._get(symbol_id, timeframe).last(end_ms, limit)


class SimulatedBarStore:
    """Bars from the seeded simulator for a fixed list of symbols, listed from its origin (2017-01-01).

    The simulator has no gaps, so a window of `limit` bars is exactly `limit` bar lengths long and
    never needs more than one call.
    """

    def __init__(self, symbols: Iterable[str], seed: int = 7) -> None:
        self._symbols = {exchange_symbol_id(s): normalize_symbol(s) for s in symbols}
        self.seed = seed

    def symbol_ids(self) -> list[str]:
        return sorted(self._symbols)

    def ticker_timeframe(self, symbol_id: str) -> str:
        return "1h"

    def _simulate(self, symbol_id: str, timeframe: str, start_ms: int, end_ms: int) -> pl.DataFrame:
        start_ms = max(start_ms, SIMULATION_ORIGIN_MS)
        end_ms = min(end_ms, SIMULATION_END_MS)
        if end_ms <= start_ms:
            return empty_ohlcv()
        return simulate_ohlcv(self._symbols[symbol_id], timeframe, start_ms, end_ms, seed=self.seed)

    def first_bars(
        self, symbol_id: str, timeframe: str, start_ms: int, end_ms: int, limit: int
    ) -> pl.DataFrame:
        bar_ms = _bar_ms(timeframe)
        first = -(-max(start_ms, SIMULATION_ORIGIN_MS) // bar_ms) * bar_ms
        return self._simulate(symbol_id, timeframe, first, min(end_ms, first + limit * bar_ms))

    def last_bars(self, symbol_id: str, timeframe: str, end_ms: int, limit: int) -> pl.DataFrame:
        bar_ms = _bar_ms(timeframe)
        last_end = -(-end_ms // bar_ms) * bar_ms  # bars with ts < end_ms end by this aligned time
        return self._simulate(symbol_id, timeframe, last_end - limit * bar_ms, end_ms).tail(limit)


class CombinedBarStore:
    """Several stores behind one interface; a symbol is served by the first store that lists it."""

    def __init__(self, stores: Iterable[BarStore]) -> None:
        self._by_symbol: dict[str, BarStore] = {}
        for store in stores:
            for symbol_id in store.symbol_ids():
                self._by_symbol.setdefault(symbol_id, store)

    def symbol_ids(self) -> list[str]:
        return sorted(self._by_symbol)

    def has_symbol(self, symbol_id: str) -> bool:
        return symbol_id in self._by_symbol

    def ticker_timeframe(self, symbol_id: str) -> str:
        return self._by_symbol[symbol_id].ticker_timeframe(symbol_id)

    def first_bars(
        self, symbol_id: str, timeframe: str, start_ms: int, end_ms: int, limit: int
    ) -> pl.DataFrame:
        return self._by_symbol[symbol_id].first_bars(symbol_id, timeframe, start_ms, end_ms, limit)

    def last_bars(self, symbol_id: str, timeframe: str, end_ms: int, limit: int) -> pl.DataFrame:
        return self._by_symbol[symbol_id].last_bars(symbol_id, timeframe, end_ms, limit)
