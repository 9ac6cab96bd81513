"""Tick sources: simulated ticks at a realistic scale, bars replayed as ticks, ticker polls, and pacing."""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.stream.tick_sources import (
    bar_ticks,
    exchange_ticks,
    replay_ticks,
    simulated_ticks,
    ticker_tick,
)
from serving.stream.producer import MAX_CATCH_UP_S, Pacer

START = 1_748_736_000_000  # 2025-06-01T00:00Z


def _log_returns(prices: list[float]) -> np.ndarray:
    return np.diff(np.log(np.asarray(prices)))


@pytest.mark.parametrize("symbol", ["BTC/USDT", "ETH/USDT", "SOL/USDT"])
def test_simulated_tick_moves_match_the_simulators_volatility_at_tick_scale(symbol):
    hours = 3
    ticks = list(simulated_ticks([symbol], START, 2_000, count=hours * 1800))
    per_tick = _log_returns([t.price for t in ticks]).std()
    # The simulator's own minute bars over the same hours, scaled from 60 s to 2 s (√(dt) scaling):
    # the ticks follow the market's current regime, not a fixed number.
    minutes = simulate_ohlcv(symbol, "1m", START, START + hours * HOUR_MS)
    implied = _log_returns(minutes["close"].to_list()).std() * math.sqrt(2 / 60)
    assert 0.5 * implied < per_tick < 2.0 * implied
    # The seed moved 2–4 % per 2-second tick; here no tick moves even 0.5 %.
    assert np.abs(_log_returns([t.price for t in ticks])).max() < 0.005


def test_simulated_ticks_stay_inside_their_minute_and_carry_its_volume():
    ticks = list(simulated_ticks(["ETH/USDT"], START, 2_000, count=1800))  # exactly one hour
    minutes = simulate_ohlcv("ETH/USDT", "1m", START, START + HOUR_MS)
    for tick in ticks:
        bar = minutes.row((tick.timestamp_ms - START) // 60_000, named=True)
        assert bar["low"] <= tick.price <= bar["high"]
    assert ticks[0].price == minutes["open"][0]  # a tick exactly at a minute's start is its open
    hour_volume = simulate_ohlcv("ETH/USDT", "1h", START, START + HOUR_MS)["volume"][0]
    assert sum(t.volume for t in ticks) == pytest.approx(hour_volume, rel=0.1)


def test_simulated_ticks_are_deterministic_ordered_and_staggered():
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT"]
    first = list(simulated_ticks(symbols, START, 2_000, count=4000))
    again = list(simulated_ticks(symbols, START, 2_000, count=4000))
    assert first == again
    other_seed = list(simulated_ticks(["BTC/USDT"], START, 2_000, seed=8, count=1000))
    assert [t.price for t in first if t.symbol == "BTC/USDT"] != [t.price for t in other_seed]

    stamps = [t.timestamp_ms for t in first]
    assert stamps == sorted(stamps)
    # Round robin: each symbol every 2 s, the four symbols 0.5 s apart inside the interval.
    assert [t.symbol for t in first[:8]] == symbols * 2
    assert stamps[:5] == [START, START + 500, START + 1000, START + 1500, START + 2000]
    for symbol in symbols:
        own = [t.timestamp_ms for t in first if t.symbol == symbol]
        assert set(np.diff(own).tolist()) == {2_000}
    assert all(t.source == "simulated" and t.volume >= 0 for t in first)


def test_simulated_ticks_validate_arguments():
    with pytest.raises(ValueError):
        simulated_ticks([], START)
    with pytest.raises(ValueError):
        simulated_ticks(["BTC/USDT"], START, interval_ms=0)


@pytest.mark.parametrize(
    ("open_", "high", "low", "close", "middle"),
    [(100.0, 110.0, 95.0, 105.0, (95.0, 110.0)), (100.0, 104.0, 90.0, 92.0, (104.0, 90.0))],
)
def test_bar_ticks_visit_the_extremes_in_a_plausible_order(open_, high, low, close, middle):
    ticks = bar_ticks("BTC/USDT", START, open_, high, low, close, 8.0, HOUR_MS)
    assert [t.price for t in ticks] == [open_, *middle, close]
    stamps = [t.timestamp_ms for t in ticks]
    assert stamps == sorted(set(stamps))
    assert stamps[0] == START and stamps[-1] < START + HOUR_MS
    assert sum(t.volume for t in ticks) == pytest.approx(8.0)
    assert {t.source for t in ticks} == {"replay"}


def test_replay_merges_symbols_in_event_time_and_keeps_each_bar_inside_its_hour():
    btc = simulate_ohlcv("BTC/USDT", "1h", START, START + 6 * HOUR_MS)
    eth = simulate_ohlcv("ETH/USDT", "1h", START + 2 * HOUR_MS, START + 8 * HOUR_MS)
    # Given unsorted: the replay sorts each symbol's bars.
    ticks = list(replay_ticks({"BTCUSDT": btc.reverse(), "eth/usdt": eth}, "1h"))
    assert len(ticks) == 4 * (btc.height + eth.height)
    stamps = [t.timestamp_ms for t in ticks]
    assert stamps == sorted(stamps)
    for symbol, bars in (("BTC/USDT", btc), ("ETH/USDT", eth)):
        own = [t for t in ticks if t.symbol == symbol]
        for bar, four in zip(
            bars.iter_rows(named=True), (own[i : i + 4] for i in range(0, len(own), 4)), strict=True
        ):
            assert all(bar["ts"] <= t.timestamp_ms < bar["ts"] + HOUR_MS for t in four)
            assert (four[0].price, four[-1].price) == (bar["open"], bar["close"])
            assert max(t.price for t in four) == bar["high"] and min(t.price for t in four) == bar["low"]


def test_replay_of_an_empty_frame_gives_nothing():
    empty = simulate_ohlcv("BTC/USDT", "1h", START, START)
    assert list(replay_ticks({"BTC/USDT": empty})) == []
    assert isinstance(empty, pl.DataFrame)


def test_ticker_tick_sends_volume_increments_not_the_24h_total():
    ticker = {"last": 100.0, "baseVolume": 1000.0, "timestamp": START}
    tick, remembered = ticker_tick("btcusdt", ticker, None, now_ms=0)
    assert tick is not None and (tick.symbol, tick.price, tick.volume, tick.timestamp_ms) == (
        "BTC/USDT", 100.0, 0.0, START,
    )  # fmt: skip
    assert remembered == 1000.0
    tick, remembered = ticker_tick("BTC/USDT", {**ticker, "baseVolume": 1002.5}, remembered, now_ms=0)
    assert tick.volume == pytest.approx(2.5) and remembered == 1002.5
    # The rolling window dropped more than was traded: no negative volume.
    tick, _ = ticker_tick("BTC/USDT", {**ticker, "baseVolume": 990.0}, remembered, now_ms=0)
    assert tick.volume == 0.0
    # No exchange timestamp: the caller's clock; no price: no tick.
    tick, _ = ticker_tick("BTC/USDT", {"last": 5.0, "timestamp": None}, None, now_ms=START + 7)
    assert tick.timestamp_ms == START + 7
    assert ticker_tick("BTC/USDT", {"last": None, "close": None}, None, now_ms=0)[0] is None


def test_exchange_ticks_poll_round_robin_and_skip_failed_polls():
    calls: list[str] = []
    failures: list[tuple[str, str]] = []

    def fetch(symbol: str) -> dict:
        calls.append(symbol)
        if len(calls) == 2:
            raise ConnectionError("exchange down")
        return {"last": 10.0 + len(calls), "baseVolume": float(len(calls)), "timestamp": START + len(calls)}

    ticks = list(
        itertools.islice(
            exchange_ticks(
                fetch, ["BTC/USDT", "ETH/USDT"], on_error=lambda s, e: failures.append((s, str(e)))
            ),
            3,
        )
    )
    assert calls == ["BTC/USDT", "ETH/USDT", "BTC/USDT", "ETH/USDT"]
    assert failures == [("ETH/USDT", "exchange down")]
    assert [(t.symbol, t.price) for t in ticks] == [
        ("BTC/USDT", 11.0),
        ("BTC/USDT", 13.0),
        ("ETH/USDT", 14.0),
    ]
    with pytest.raises(ConnectionError):
        list(
            itertools.islice(
                exchange_ticks(lambda s: (_ for _ in ()).throw(ConnectionError()), ["BTC/USDT"]), 1
            )
        )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pacer_spaces_ticks_by_rate_without_bursting_after_a_stall():
    clock = FakeClock()
    pacer = Pacer(rate=10, clock=clock)
    assert [pacer.due(0) for _ in range(3)] == pytest.approx([1000.0, 1000.1, 1000.2])
    clock.now = 1010.0  # a 10 s stall: at most MAX_CATCH_UP_S of ticks go out at once, then the rate again
    dues = [pacer.due(0) for _ in range(4)]
    assert dues[0] == pytest.approx(1010.0 - MAX_CATCH_UP_S)
    assert np.diff(dues) == pytest.approx([0.1, 0.1, 0.1])


def test_pacer_replays_event_time_at_the_speed_factor_capped_by_rate():
    clock = FakeClock()
    pacer = Pacer(rate=0, speed=60, clock=clock)
    # One hour of event time in one minute of wall time.
    assert pacer.due(START) == pytest.approx(1000.0)
    assert pacer.due(START + 15 * 60_000) == pytest.approx(1015.0)
    assert pacer.due(START + HOUR_MS) == pytest.approx(1060.0)
    capped = Pacer(rate=1, speed=1000, clock=clock)
    assert [capped.due(START + i) for i in range(3)] == pytest.approx([1000.0, 1001.0, 1002.0])
    unlimited = Pacer(clock=clock)
    assert {unlimited.due(START + i * HOUR_MS) for i in range(5)} == {1000.0}
