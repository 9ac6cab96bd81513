"""Tick → bar aggregation: grid, closing rule, late ticks, holes, warm start, feature parity."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.features import FEATURE_COLUMNS, compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.model.windows import FEATURE_BARS
from crypto_platform.lib.stream.bars import BarBook, SymbolBars
from crypto_platform.lib.stream.ticks import Tick

HOUR_MS = 3_600_000
T0 = 1_748_736_000_000  # 2025-06-01T00:00Z, on the hourly grid


def tick(ts: int, price: float, volume: float = 1.0, symbol: str = "BTC/USDT") -> Tick:
    return Tick(symbol, price, volume, ts, "test")


def bar_ticks(row: dict, symbol: str = "BTC/USDT") -> list[Tick]:
    """Four ticks that rebuild an OHLCV bar exactly: open, high, low, close; volumes add up."""
    ts, v = row["ts"], row["volume"]
    return [
        tick(ts + 1_000, row["open"], v * 0.25, symbol),
        tick(ts + 600_000, row["high"], v * 0.25, symbol),
        tick(ts + 1_200_000, row["low"], v * 0.25, symbol),
        tick(ts + 3_000_000, row["close"], v - 3 * (v * 0.25), symbol),
    ]


def test_a_bar_closes_when_a_tick_of_a_later_bar_arrives():
    bars = SymbolBars("BTC/USDT", "1h", keep=10)
    assert bars.add(tick(T0 + 5, 100.0, 2.0)).closed == ()
    bars.add(tick(T0 + 60_000, 104.0, 1.0))
    bars.add(tick(T0 + 120_000, 98.0, 0.5))
    bars.add(tick(T0 + 30_000, 101.0, 0.5))  # out of order inside the open bar: merged
    assert bars.last_closed_ts is None and bars.open_bar is not None
    result = bars.add(tick(T0 + HOUR_MS + 1, 99.0))
    assert result.closed == (T0,) and result.bar_ts == T0 + HOUR_MS
    frame = bars.frame()
    assert frame.row(0) == (T0, 100.0, 104.0, 98.0, 98.0, 4.0)
    assert frame.schema["ts"] == pl.Int64 and frame.schema["volume"] == pl.Float64


def test_open_and_close_follow_event_time_not_arrival():
    bars = SymbolBars("BTC/USDT", "1h", keep=10)
    bars.add(tick(T0 + 50_000, 10.0))
    bars.add(tick(T0 + 10_000, 9.0))  # earlier: becomes the open
    bars.add(tick(T0 + 40_000, 11.0))  # earlier than the latest: not the close
    bars.add(tick(T0 + HOUR_MS, 12.0))
    assert bars.frame().row(0) == (T0, 9.0, 11.0, 9.0, 10.0, 3.0)


def test_late_ticks_are_counted_and_never_merged():
    bars = SymbolBars("BTC/USDT", "1h", keep=10)
    bars.add(tick(T0, 100.0))
    bars.add(tick(T0 + HOUR_MS, 101.0))
    before = bars.frame().row(0)
    late = bars.add(tick(T0 + 10, 500.0, 9.0))
    assert late.late and late.bar_ts == T0 and bars.late_ticks == 1
    assert bars.frame().row(0) == before
    older = bars.add(tick(T0 - 5 * HOUR_MS, 1.0))
    assert older.late and bars.late_ticks == 2 and bars.closed_count == 1


def test_bars_without_ticks_stay_holes_and_the_timeframe_sets_the_grid():
    bars = SymbolBars("ETH/USDT", "15m", keep=10)
    bars.add(tick(T0 + 14 * 60_000, 5.0))
    bars.add(tick(T0 + 15 * 60_000, 6.0))  # next 15-minute bar
    bars.add(tick(T0 + 75 * 60_000, 7.0))  # skips three bars
    assert bars.frame()["ts"].to_list() == [T0, T0 + 15 * 60_000]
    assert bars.open_bar.ts == T0 + 75 * 60_000


def test_warm_start_seed_and_ticks_for_seeded_bars_are_late():
    seed = simulate_ohlcv("BTC/USDT", "1h", T0 - 10 * HOUR_MS, T0)
    book = BarBook("1h", keep=5)
    assert book.seed("BTC/USDT", seed.with_columns(pl.lit("x").alias("source"))) == 5
    bars = book.get("BTC/USDT")
    assert bars.last_closed_ts == T0 - HOUR_MS
    assert book.add(tick(T0 - HOUR_MS + 5, 1.0)).late
    assert book.add(tick(T0 + 5, 1.0)).closed == ()
    assert book.add(tick(T0 + HOUR_MS, 1.0)).closed == (T0,)
    assert bars.closed_count == 6  # trimming waits for trim()
    book.trim()
    assert bars.frame()["ts"].to_list() == [T0 - (4 - i) * HOUR_MS for i in range(5)]
    with pytest.raises(ValueError, match="grid"):
        SymbolBars("BTC/USDT", "1h", 3).seed(seed.with_columns(pl.col("ts") + 1))


def test_features_from_tick_built_bars_equal_the_pipeline_features():
    """Warm start from stored bars, then rebuild 30 more bars from ticks of two symbols: the features
    of each newly closed bar, computed over the bars held (FEATURE_BARS), equal `compute_features` over
    the whole history, the way the features asset computes them."""
    history = {s: simulate_ohlcv(s, "1h", T0 - 900 * HOUR_MS, T0, seed=3) for s in ("BTC/USDT", "ETH/USDT")}
    book = BarBook("1h", keep=FEATURE_BARS)
    stored, live = 870, 30
    for symbol, frame in history.items():
        book.seed(symbol, frame.head(stored))
    rows = {s: frame.tail(live).to_dicts() for s, frame in history.items()}
    for i in range(live):
        for symbol in history:
            for t in bar_ticks(rows[symbol][i], symbol):
                book.add(t)
    for symbol in history:  # the first tick of the next bar closes the last rebuilt one
        book.add(tick(T0 + 5, 1.0, symbol=symbol))
    frames = book.frames(("BTC/USDT", "ETH/USDT"))
    assert frames.height == 2 * (FEATURE_BARS + live)  # not trimmed inside a batch
    ours = compute_features(frames, "1h")
    book.trim()
    assert book.get("BTC/USDT").closed_count == FEATURE_BARS
    for symbol, frame in history.items():
        pipeline = compute_features(frame, "1h").tail(live)
        mine = ours.filter(pl.col("symbol") == symbol).tail(live)
        assert mine["ts"].to_list() == pipeline["ts"].to_list()
        for column in ("open", "high", "low", "close", "volume", *FEATURE_COLUMNS):
            np.testing.assert_allclose(
                mine[column].to_numpy(), pipeline[column].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=column
            )
        assert mine["feature_ready"].all()
