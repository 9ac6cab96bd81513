"""OHLCV for the serving faces (API, GraphQL, gRPC, the scorer's warm start): the stored `ohlcv` asset
first, the live exchange client when the store is stale.

The pipeline writes one UTC day of closed bars per (symbol, day) partition (lib.storage); the API reads
the window it needs from there, so API features are computed from exactly the bars the pipeline stored.
The store is used when it covers the requested window at both ends (its newest bar at most
`max_stale_bars` behind the last closed bar); otherwise the bars come from `lib.market.source.load_bars`
(the exchange, or the simulator when the platform is configured for it). When the live source fails
too, whatever the store has is served with a warning; with nothing at all, `MarketUnavailableError`.

Results are cached per (symbol, timeframe) for `ttl_s` seconds and never across a bar boundary: a new
closed bar always triggers a refetch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import polars as pl

from crypto_platform.lib.market.client import ExchangeUnavailableError, UnknownSymbolError
from crypto_platform.lib.market.schema import OHLCV_COLUMNS
from crypto_platform.lib.market.source import MarketData, load_bars
from crypto_platform.lib.market.timeframes import timeframe_ms
from crypto_platform.lib.storage import ObjectStore, read_ohlcv
from crypto_platform.settings import Settings

log = logging.getLogger(__name__)

STORE_ORIGIN = "store"
LIVE_ORIGIN = "live"


class MarketUnavailableError(RuntimeError):
    """Neither the store nor the live source could provide bars (HTTP 502)."""


@dataclass(frozen=True)
class Bars:
    """Closed bars of one symbol, oldest first, at most the number asked for."""

    symbol: str
    timeframe: str
    frame: pl.DataFrame  # OHLCV_COLUMNS only
    source: str  # "exchange" | "simulated" | "unknown": where the prices come from
    origin: str  # "store" | "live": which path served them
    last_closed_ts: int  # open time of the newest bar that has closed by now
    warnings: tuple[str, ...] = ()

    # Cached: the frame never changes, and these are read on every cache hit (`_fresh`, the cache keys),
    # where each polars call was a visible share of a cached ml-signal request.
    @cached_property
    def height(self) -> int:
        return self.frame.height

    @cached_property
    def first_ts(self) -> int | None:
        return int(self.frame["ts"][0]) if self.height else None

    @cached_property
    def last_ts(self) -> int | None:
        return int(self.frame["ts"][-1]) if self.height else None

    def tail(self, n: int) -> Bars:
        if self.height <= n:
            return (
                self  # immutable: the common case (the feature path asks for what was fetched) copies nothing
            )
        return Bars(
            self.symbol,
            self.timeframe,
            self.frame.tail(n),
            self.source,
            self.origin,
            self.last_closed_ts,
            self.warnings,
        )


LiveLoader = Callable[[str, str, int, int, int | None], MarketData]


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _source_label(frame: pl.DataFrame) -> str:
    if "source" not in frame.columns or frame.height == 0:
        return "unknown"
    labels = set(frame["source"].drop_nulls().unique().to_list())
    return "simulated" if "simulated" in labels else ("exchange" if labels else "unknown")


class MarketService:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore | None,
        ttl_s: float = 15.0,
        max_stale_bars: int = 2,
        now_ms: Callable[[], int] | None = None,
        live_loader: LiveLoader | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ttl_s = ttl_s
        self.max_stale_bars = max_stale_bars
        # An injected clock (tests, replays) is also handed to the live source; by default the live
        # source uses the exchange's own clock to decide which candle is still open.
        self._clock_injected = now_ms is not None
        self.now_ms = now_ms or _wall_ms
        self.live_loader = live_loader or self._load_live
        self._cache: dict[tuple[str, str], tuple[float, Bars]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _load_live(
        self, symbol: str, timeframe: str, since_ms: int, until_ms: int, now: int | None
    ) -> MarketData:
        return load_bars(
            symbol,
            timeframe,
            since_ms,
            until_ms,
            source=self.settings.market_source,
            settings=self.settings,
            now_ms=now,
        )

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def cached_bars(self, symbol: str, timeframe: str, n: int) -> Bars | None:
        """The cached answer of `bars` when it is still fresh, without any I/O; else None."""
        bar_ms = timeframe_ms(timeframe)
        last_closed = self.now_ms() // bar_ms * bar_ms - bar_ms
        cached = self._cache.get((symbol, timeframe))
        if cached is not None and self._fresh(cached, last_closed, n, bar_ms):
            return cached[1].tail(n)
        return None

    def bars(self, symbol: str, timeframe: str, n: int) -> Bars:
        """The last `n` closed bars of `symbol` (fewer where history has holes or does not reach back)."""
        bar_ms = timeframe_ms(timeframe)
        last_closed = self.now_ms() // bar_ms * bar_ms - bar_ms
        key = (symbol, timeframe)
        cached = self._cache.get(key)
        if cached is not None and self._fresh(cached, last_closed, n, bar_ms):
            return cached[1].tail(n)
        # One fetch per key at a time: concurrent requests after a bar boundary wait for it, not repeat it.
        with self._lock(key):
            cached = self._cache.get(key)
            if cached is not None and self._fresh(cached, last_closed, n, bar_ms):
                return cached[1].tail(n)
            bars = self._fetch(symbol, timeframe, n, last_closed, bar_ms)
            self._cache[key] = (time.monotonic(), bars)
            return bars.tail(n)

    def _fresh(self, cached: tuple[float, Bars], last_closed: int, n: int, bar_ms: int) -> bool:
        fetched_at, bars = cached
        first = bars.first_ts
        span = bars.last_closed_ts - (first if first is not None else bars.last_closed_ts)
        covers = bars.height >= n or span >= (n - 1) * bar_ms
        return bars.last_closed_ts == last_closed and covers and time.monotonic() - fetched_at < self.ttl_s

    def _fetch(self, symbol: str, timeframe: str, n: int, last_closed: int, bar_ms: int) -> Bars:
        start, end = last_closed - (n - 1) * bar_ms, last_closed + bar_ms
        slack = self.max_stale_bars * bar_ms
        stored = None
        if self.store is not None and timeframe == self.settings.timeframe:
            try:
                stored = read_ohlcv(self.store, symbol, start, end)
            except Exception as exc:  # an unreadable store is a reason to go live, not to fail
                log.warning("reading stored ohlcv for %s failed: %s", symbol, exc)
        if stored is not None and stored.height:
            ts = stored["ts"]
            if ts[-1] >= last_closed - slack and ts[0] <= start + slack:
                return Bars(
                    symbol,
                    timeframe,
                    stored.select(OHLCV_COLUMNS),
                    _source_label(stored),
                    STORE_ORIGIN,
                    last_closed,
                )
        try:
            live = self.live_loader(
                symbol, timeframe, start, end, self.now_ms() if self._clock_injected else None
            )
        except UnknownSymbolError:
            raise
        except (ExchangeUnavailableError, OSError, RuntimeError) as exc:
            if stored is not None and stored.height:
                warning = f"live market data unavailable ({exc}); serving the {stored.height} stored bars"
                return Bars(
                    symbol,
                    timeframe,
                    stored.select(OHLCV_COLUMNS),
                    _source_label(stored),
                    STORE_ORIGIN,
                    last_closed,
                    (warning,),
                )
            raise MarketUnavailableError(
                f"no market data for {symbol} {timeframe}: the store has no recent bars and the live "
                f"source failed: {exc}"
            ) from exc
        frame = live.frame.select(OHLCV_COLUMNS).filter(pl.col("ts") <= last_closed)
        return Bars(symbol, timeframe, frame, live.source, LIVE_ORIGIN, last_closed, tuple(live.warnings))
