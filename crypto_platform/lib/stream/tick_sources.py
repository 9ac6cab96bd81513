"""Where the producer's ticks come from: pure generators of `Tick`s, no Kafka and no clock of their own.

- `simulated_ticks`: the project's simulator at tick scale. Each symbol ticks every `interval_ms` of
  event time; prices follow the simulator's 1-minute bars (so its GARCH volatility, regimes, jumps and
  seasonality carry over, and the ticks of an hour aggregate to that hour's simulated bar), with a
  Brownian bridge between each minute's open and close for the ticks inside it. The bridge's volatility
  is the minute's own (Parkinson, from its high/low), so one tick moves by about the hourly volatility
  × √(interval / 1 h): ~0.01–0.03 % for a 2-second BTC tick, not the seed's 2–4 %.
- `bar_ticks` / `replay_ticks`: stored bars turned into four ticks each (open, the extreme nearer the
  open's side first, the other extreme, close), with timestamps inside the bar and the bar's volume split
  among them; several symbols are merged in event-time order.
- `exchange_ticks`: ticker polling through a `fetch_ticker(symbol) -> dict` callable (the shared ccxt
  client's), volume sent as the increase of the 24 h volume since the previous poll.

The producer (serving/stream/producer.py) paces and publishes them.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import numpy as np
import polars as pl

from crypto_platform.lib.market.simulator import _stable_int, simulate_ohlcv, symbol_profile
from crypto_platform.lib.market.symbols import normalize_symbol
from crypto_platform.lib.market.timeframes import HOUR_MS, timeframe_ms
from crypto_platform.lib.stream.ticks import Tick

log = logging.getLogger(__name__)

SIMULATED = "simulated"
REPLAY = "replay"
EXCHANGE = "exchange"
MINUTE_MS = 60_000
_LN2_4 = 4.0 * math.log(2.0)


# --- simulated --------------------------------------------------------------------------------------


def _hour_ticks(symbol: str, times: np.ndarray, hour_ms: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prices and volumes at `times` (sorted, all inside the hour starting at `hour_ms`)."""
    bars = simulate_ohlcv(symbol, "1m", hour_ms, hour_ms + HOUR_MS, seed)
    minute = ((times - hour_ms) // MINUTE_MS).astype(np.int64)
    o, h, lo, c, v = (bars[name].to_numpy()[minute] for name in ("open", "high", "low", "close", "volume"))
    frac = (times - hour_ms - minute * MINUTE_MS) / MINUTE_MS  # position inside the minute, in [0, 1)
    # Volatility of the minute from its range (Parkinson); a flat minute still moves a little.
    sigma = np.maximum(np.log(h / lo) / math.sqrt(_LN2_4), 1e-6)

    rng = np.random.default_rng([_stable_int("ticks", symbol, seed), hour_ms // HOUR_MS])
    z = rng.standard_normal(times.size)
    z_end = rng.standard_normal(60)
    weight_noise = rng.standard_normal(times.size)

    first = np.ones(times.size, dtype=bool)
    first[1:] = minute[1:] != minute[:-1]
    prev_frac = np.where(first, 0.0, np.concatenate([[0.0], frac[:-1]]))
    steps = sigma * np.sqrt(frac - prev_frac) * z
    # Brownian motion inside each minute: a cumulative sum restarted at the minute's first tick.
    total = np.cumsum(steps)
    start_index = np.maximum.accumulate(np.where(first, np.arange(times.size), 0))
    walk = total - (total[start_index] - steps[start_index])
    last = np.ones(times.size, dtype=bool)
    last[:-1] = minute[1:] != minute[:-1]
    last_index = np.minimum.accumulate(np.where(last, np.arange(times.size), times.size)[::-1])[::-1]
    w_end = walk[last_index] + sigma * np.sqrt(1.0 - frac[last_index]) * z_end[minute]
    bridge = walk - frac * w_end  # 0 at the minute's open, 0 again at its close
    log_price = np.log(o) + frac * np.log(c / o) + bridge
    log_price = np.clip(log_price, np.log(lo), np.log(h))
    tick = symbol_profile(symbol).tick
    prices = np.maximum(np.round(np.exp(log_price) / tick) * tick, tick)

    # Each tick carries the volume of its share of the minute, busier where the price moved more.
    spacing = np.diff(np.append(times, times[-1] + (times[-1] - times[-2] if times.size > 1 else MINUTE_MS)))
    move = np.abs(np.diff(np.concatenate([[log_price[0]], log_price])))
    activity = np.exp(0.5 * move / (sigma * np.sqrt(np.maximum(spacing, 1) / MINUTE_MS)) + 0.3 * weight_noise)
    activity /= activity.mean()
    volumes = np.round(v * np.minimum(spacing, MINUTE_MS) / MINUTE_MS * activity, 8)
    return prices, volumes


def _symbol_stream(symbol: str, first_ms: int, interval_ms: int, seed: int) -> Iterator[Tick]:
    """One symbol's endless ticks at first_ms, first_ms + interval, …, generated an hour at a time."""
    k = 0
    while True:
        t0 = first_ms + k * interval_ms
        hour = t0 // HOUR_MS * HOUR_MS
        n = -(-(hour + HOUR_MS - t0) // interval_ms)  # ticks left in this hour
        times = t0 + np.arange(n, dtype=np.int64) * interval_ms
        prices, volumes = _hour_ticks(symbol, times, hour, seed)
        for ts, price, volume in zip(times.tolist(), prices.tolist(), volumes.tolist(), strict=True):
            yield Tick(symbol, price, volume, ts, SIMULATED)
        k += n


def simulated_ticks(
    symbols: Iterable[str],
    start_ms: int,
    interval_ms: int = 2_000,
    seed: int = 7,
    count: int | None = None,
) -> Iterator[Tick]:
    """Ticks of every symbol in event-time order: each symbol every `interval_ms`, symbols staggered
    evenly inside the interval. Deterministic: the same arguments give the same ticks."""
    names = [normalize_symbol(s) for s in symbols]
    if not names:
        raise ValueError("no symbols")
    if interval_ms < 1:
        raise ValueError(f"interval_ms must be ≥ 1, got {interval_ms}")
    streams = [
        _symbol_stream(name, start_ms + j * interval_ms // len(names), interval_ms, seed)
        for j, name in enumerate(names)
    ]
    merged = heapq.merge(*streams, key=lambda t: t.timestamp_ms)
    return merged if count is None else islice(merged, count)


# --- replay -----------------------------------------------------------------------------------------

# Where in a bar its four ticks sit, as fractions of the bar: all strictly inside [ts, ts + bar).
_BAR_TICK_POSITIONS = (0.0, 0.25, 0.5, 59 / 60)


def bar_ticks(
    symbol: str, ts: int, open_: float, high: float, low: float, close: float, volume: float, bar_ms: int
) -> list[Tick]:
    """Four ticks for one bar: open, then low and high in the order a bar closing up (down) most
    plausibly visited them (down first then up, or the reverse), then close; volume split evenly."""
    middle = (low, high) if close >= open_ else (high, low)
    prices = (open_, *middle, close)
    share = volume / len(prices)
    return [
        Tick(symbol, float(price), share, ts + int(position * bar_ms), REPLAY)
        for price, position in zip(prices, _BAR_TICK_POSITIONS, strict=True)
    ]


def _frame_ticks(symbol: str, frame: pl.DataFrame, bar_ms: int) -> Iterator[Tick]:
    for row in frame.select("ts", "open", "high", "low", "close", "volume").iter_rows():
        yield from bar_ticks(symbol, *row, bar_ms)


def replay_ticks(bars: Mapping[str, pl.DataFrame], timeframe: str = "1h") -> Iterator[Tick]:
    """The bars of every symbol (OHLCV frames sorted by ts) as ticks, merged in event-time order."""
    bar_ms = timeframe_ms(timeframe)
    streams = [
        _ranked(rank, normalize_symbol(symbol), frame, bar_ms)
        for rank, (symbol, frame) in enumerate(bars.items())
    ]
    return (t for _, _, t in heapq.merge(*streams))


def _ranked(rank: int, symbol: str, frame: pl.DataFrame, bar_ms: int) -> Iterator[tuple[int, int, Tick]]:
    # (event time, symbol rank): ties between symbols break by the order given, never by comparing ticks.
    for tick in _frame_ticks(symbol, frame.sort("ts"), bar_ms):
        yield tick.timestamp_ms, rank, tick


# --- exchange ---------------------------------------------------------------------------------------


def ticker_tick(
    symbol: str, ticker: Mapping[str, Any], previous_volume: float | None, now_ms: int
) -> tuple[Tick | None, float | None]:
    """A tick from a ccxt unified ticker, and the 24 h volume to remember for the next one.

    The ticker's volume is a rolling 24 h total; the tick carries what was traded since the last poll
    (its increase, 0 on the first poll or when the window dropped more than it added). A ticker with no
    usable price gives no tick.
    """
    price = ticker.get("last") or ticker.get("close")
    volume_24h = ticker.get("baseVolume")
    volume_24h = float(volume_24h) if volume_24h is not None else None
    if price is None or not math.isfinite(float(price)) or float(price) <= 0:
        return None, volume_24h
    traded = 0.0
    if volume_24h is not None and previous_volume is not None:
        traded = max(0.0, volume_24h - previous_volume)
    timestamp = ticker.get("timestamp")
    ts = int(timestamp) if timestamp else now_ms
    return Tick(normalize_symbol(symbol), float(price), round(traded, 8), ts, EXCHANGE), volume_24h


def exchange_ticks(
    fetch_ticker: Callable[[str], Mapping[str, Any]],
    symbols: Iterable[str],
    *,
    clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    on_error: Callable[[str, Exception], None] | None = None,
) -> Iterator[Tick]:
    """Endless round-robin ticker polls (one call per tick; the caller's pacing sets the request rate).

    A failed poll is passed to `on_error` and skipped (the next round tries again); without `on_error`
    it raises.
    """
    names = [normalize_symbol(s) for s in symbols]
    if not names:
        raise ValueError("no symbols")
    volumes: dict[str, float | None] = dict.fromkeys(names)
    while True:
        for name in names:
            try:
                ticker = fetch_ticker(name)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(name, exc)
                continue
            tick, volumes[name] = ticker_tick(name, ticker, volumes[name], clock_ms())
            if tick is not None:
                yield tick


# --- replay input (disk / object store) -------------------------------------------------------------


def load_replay_bars(
    symbols: Iterable[str],
    timeframe: str,
    start_ms: int | None,
    end_ms: int | None,
    *,
    days: int = 1,
    data_dir: str | None = None,
    location: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, pl.DataFrame]:
    """Bars to replay per symbol: from `binance_<SYMBOL>_<tf>` files in `data_dir` (the exchange replay
    server's format), else from the pipeline's stored `ohlcv` asset at `location`.

    Without `start_ms`, each symbol replays its last `days` days of bars (up to `end_ms` if given).
    """
    from crypto_platform.lib import storage
    from crypto_platform.lib.market.bar_store import FileBarStore
    from crypto_platform.lib.market.symbols import exchange_symbol_id

    bar_ms = timeframe_ms(timeframe)
    span_bars = max(1, days * 24 * HOUR_MS // bar_ms)
    end = end_ms if end_ms is not None else 2**62
    out: dict[str, pl.DataFrame] = {}
    if data_dir is not None:
        files = FileBarStore(data_dir)
        for symbol in symbols:
            symbol_id = exchange_symbol_id(symbol)
            if symbol_id not in files.symbol_ids():
                raise FileNotFoundError(f"no {timeframe} bars for {symbol} in {data_dir}")
            if start_ms is None:
                frame = files.last_bars(symbol_id, timeframe, end, span_bars)
            else:
                frame = files.first_bars(symbol_id, timeframe, start_ms, end, 10_000_000)
            out[normalize_symbol(symbol)] = frame
        return out
    if location is None:
        raise ValueError("give a data directory or a storage location to replay from")
    store = storage.open_store(location, endpoint_url)
    for symbol in symbols:
        window_start, window_end = start_ms, end
        if window_start is None:
            days_stored = [day for _, day in storage.list_partitions(store, storage.OHLCV_ASSET, symbol)]
            if not days_stored:
                raise FileNotFoundError(f"no stored ohlcv bars for {symbol} in {store.uri('ohlcv')}")
            last_day_end = storage.day_start_ms(days_stored[-1]) + 24 * HOUR_MS
            window_end = min(end, last_day_end)
            window_start = window_end - span_bars * bar_ms
        frame = storage.read_ohlcv(store, symbol, window_start, window_end)
        out[normalize_symbol(symbol)] = frame.drop("symbol", "source", strict=False)
    return out
