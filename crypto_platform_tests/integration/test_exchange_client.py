"""ExchangeClient and load_bars against the replay server: unmodified ccxt over real HTTP.

Request counts are read from the server (`/__replay__/stats`), not from the client's own tally.
Retry tests record the client's back-off waits instead of sleeping them, which keeps them fast and
lets them assert that a Retry-After was honoured without timing anything.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import requests

from crypto_platform.devtools.replay.server import ReplayServer
from crypto_platform.lib.market.client import (
    ExchangeClient,
    ExchangeUnavailableError,
    FetchResult,
    UnknownSymbolError,
    clear_exchange_clients,
    get_exchange_client,
)
from crypto_platform.lib.market.schema import OHLCV_SCHEMA, Gap
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.market.source import load_bars, reset_exchange_probe
from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.settings import Settings
from crypto_platform_tests.fixtures.exchange import REAL_REPLAY_NOW_MS, REPLAY_NOW_MS

pytestmark = pytest.mark.integration

DAY_MS = 24 * HOUR_MS
LAST_OPEN_HOUR = REPLAY_NOW_MS // HOUR_MS * HOUR_MS  # the candle still open at the replayed "now"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def make_client(url: str, sleeps: list[float] | None = None, **kwargs: Any) -> ExchangeClient:
    """A client without ccxt's rate limiter (a local server) whose back-off waits are recorded."""
    options: dict[str, Any] = {"enable_rate_limit": False, "backoff_base_s": 0.01, "retry_budget_s": 30.0}
    if sleeps is not None:
        options["sleep"] = sleeps.append
    options.update(kwargs)
    return ExchangeClient(api_url=url, **options)


def stats(server: ReplayServer) -> dict[str, Any]:
    return requests.get(f"{server.url}/__replay__/stats", timeout=5).json()


def post_faults(server: ReplayServer, body: dict[str, Any]) -> None:
    response = requests.post(f"{server.url}/__replay__/faults", json=body, timeout=5)
    response.raise_for_status()


def assert_complete_hourly(frame: pl.DataFrame, since: int, until: int) -> None:
    """Every hour of [since, until) exactly once, in order, typed."""
    assert dict(frame.schema) == OHLCV_SCHEMA
    expected = list(range(since, until, HOUR_MS))
    assert frame["ts"].to_list() == expected


# --- request cost -----------------------------------------------------------------------------


def test_one_year_backfill_of_two_symbols_costs_ceil_bars_over_1000(replay_server: ReplayServer) -> None:
    client = make_client(replay_server.url)
    since, until = LAST_OPEN_HOUR - 365 * DAY_MS, LAST_OPEN_HOUR
    bars = (until - since) // HOUR_MS  # 8760
    for symbol in ("BTC/USDT", "ETH/USDT"):
        result = client.fetch_ohlcv(symbol, "1h", since, until, now_ms=REPLAY_NOW_MS)
        assert_complete_hourly(result.frame, since, until)
        assert result.gaps == []
        assert result.requests == math.ceil(bars / 1000) == 9
        assert result.retries == 0
    served = stats(replay_server)
    assert served["klines_by_symbol"] == {"BTCUSDT": 9, "ETHUSDT": 9}
    assert served["klines_limits"] == {"1000": 16, "760": 2}  # the last page asks only for what is left
    assert served["requests"]["/api/v3/exchangeInfo"] == 1  # markets loaded once per client


@pytest.mark.parametrize("bars", [1, 999, 1000, 1001, 2000, 2500])
def test_request_count_is_exact_at_page_boundaries(replay_server: ReplayServer, bars: int) -> None:
    # 1000 and 2000 bars end exactly on a page: no trailing empty request may follow.
    client = make_client(replay_server.url)
    until = LAST_OPEN_HOUR - 10 * DAY_MS
    since = until - bars * HOUR_MS
    result = client.fetch_ohlcv("BTCUSDT", "1h", since, until, now_ms=REPLAY_NOW_MS)
    assert result.frame.height == bars
    assert stats(replay_server)["klines_by_symbol"] == {"BTCUSDT": math.ceil(bars / 1000)}


def test_range_reaching_now_stops_without_a_trailing_request(replay_server: ReplayServer) -> None:
    client = make_client(replay_server.url)
    since = LAST_OPEN_HOUR - 2000 * HOUR_MS  # 2000 closed bars up to now, then nothing
    result = client.fetch_ohlcv("ETH/USDT", "1h", since, None, now_ms=REPLAY_NOW_MS)
    assert_complete_hourly(result.frame, since, LAST_OPEN_HOUR)
    assert stats(replay_server)["klines_by_symbol"] == {"ETHUSDT": 2}


def test_other_timeframes_page_the_same_way(replay_server: ReplayServer) -> None:
    client = make_client(replay_server.url)
    day = LAST_OPEN_HOUR // DAY_MS * DAY_MS
    result = client.fetch_ohlcv("BTC/USDT", "15m", day - 1500 * 15 * 60_000, day, now_ms=REPLAY_NOW_MS)
    assert result.frame.height == 1500 and result.requests == 2
    assert result.frame["ts"].diff().drop_nulls().unique().to_list() == [15 * 60_000]


def test_gaps_never_add_requests_except_after_an_exact_multiple(tmp_path: Path) -> None:
    """The cost rule in the client's docstring, on a market with outages."""
    t0 = ms("2024-01-01T00:00:00")
    bars = simulate_ohlcv("BTC/USDT", "1h", t0, t0 + 3000 * HOUR_MS)
    hour = (pl.col("ts") - t0) // HOUR_MS
    # A 200-hour outage in hours 900–1099, and nothing between hours 2200 and 2210.
    bars = bars.filter(~hour.is_between(900, 1099) & ~hour.is_between(2200, 2209))
    bars.write_csv(tmp_path / "binance_BTCUSDT_1h.csv")
    with ReplayServer(data_dir=tmp_path, now_ms=t0 + 4000 * HOUR_MS) as server:
        client = make_client(server.url)
        # 2100 slots, 1900 bars present: ceil(1900 / 1000) = 2 requests, not ceil(2100 / 1000) = 3.
        result = client.fetch_ohlcv("BTC/USDT", "1h", t0, t0 + 2100 * HOUR_MS)
        assert result.frame.height == 1900 and result.requests == 2
        assert result.gaps == [Gap(t0 + 899 * HOUR_MS, 200)]
        # 2210 slots ending inside the second outage, 2000 bars present: the two full pages cannot
        # tell that nothing follows, so a third (empty) request is needed.
        result = client.fetch_ohlcv("BTC/USDT", "1h", t0, t0 + 2210 * HOUR_MS)
        assert result.frame.height == 2000 and result.requests == 3
        assert stats(server)["klines_by_symbol"] == {"BTCUSDT": 5}


# --- retries ----------------------------------------------------------------------------------


def reference(server: ReplayServer, symbol: str, since: int, until: int) -> pl.DataFrame:
    frame = make_client(server.url).fetch_ohlcv(symbol, "1h", since, until, now_ms=REPLAY_NOW_MS).frame
    server.reset()
    return frame


def test_429_is_retried_after_the_servers_retry_after(replay_server: ReplayServer) -> None:
    since, until = LAST_OPEN_HOUR - 3000 * HOUR_MS, LAST_OPEN_HOUR
    expected = reference(replay_server, "BTC/USDT", since, until)
    post_faults(
        replay_server, {"faults": [{"kind": "429", "count": 2, "endpoint": "klines", "retry_after_s": 7}]}
    )
    sleeps: list[float] = []
    result = make_client(replay_server.url, sleeps).fetch_ohlcv(
        "BTC/USDT", "1h", since, until, now_ms=REPLAY_NOW_MS
    )
    assert result.frame.equals(expected)
    assert result.retries == 2 and result.requests == 3
    # Both waits are at least the 7 s the exchange asked for (not the ~10 ms back-off).
    assert len(sleeps) == 2 and all(s >= 7.0 for s in sleeps)
    served = stats(replay_server)
    assert served["faults_served"] == {"/api/v3/klines": {"429": 2}}
    assert served["klines_by_symbol"] == {"BTCUSDT": 5}


@pytest.mark.parametrize("kind", ["418", "500", "502", "503", "504"])
def test_server_errors_are_retried_without_losing_or_duplicating_bars(
    replay_server: ReplayServer, kind: str
) -> None:
    since, until = LAST_OPEN_HOUR - 2500 * HOUR_MS, LAST_OPEN_HOUR
    expected = reference(replay_server, "ETH/USDT", since, until)
    post_faults(
        replay_server, {"faults": [{"kind": kind, "count": 2, "endpoint": "klines", "retry_after_s": 0}]}
    )
    sleeps: list[float] = []
    result = make_client(replay_server.url, sleeps).fetch_ohlcv(
        "ETH/USDT", "1h", since, until, now_ms=REPLAY_NOW_MS
    )
    assert_complete_hourly(result.frame, since, until)
    assert result.frame.equals(expected)
    assert result.retries == 2 and len(sleeps) == 2
    assert stats(replay_server)["faults_served"] == {"/api/v3/klines": {kind: 2}}


def test_a_slow_answer_times_out_and_is_retried(replay_server: ReplayServer) -> None:
    since, until = LAST_OPEN_HOUR - 1500 * HOUR_MS, LAST_OPEN_HOUR
    expected = reference(replay_server, "BTC/USDT", since, until)
    post_faults(replay_server, {"kind": "timeout", "count": 1, "endpoint": "klines", "delay_s": 3})
    client = make_client(replay_server.url, [], timeout_ms=300)
    result = client.fetch_ohlcv("BTC/USDT", "1h", since, until, now_ms=REPLAY_NOW_MS)
    assert result.frame.equals(expected)
    assert result.retries == 1
    assert stats(replay_server)["faults_served"] == {"/api/v3/klines": {"timeout": 1}}


def test_faults_mixed_across_pages_and_markets(replay_server: ReplayServer) -> None:
    since, until = LAST_OPEN_HOUR - 365 * DAY_MS, LAST_OPEN_HOUR
    expected = reference(replay_server, "BTC/USDT", since, until)
    faults = [{"kind": "503", "count": 1, "endpoint": "exchangeInfo"}]
    faults += [
        {"kind": kind, "count": 1, "endpoint": "klines", "retry_after_s": 0} for kind in ("429", "500", "504")
    ]
    post_faults(replay_server, {"faults": faults})
    result = make_client(replay_server.url, []).fetch_ohlcv(
        "BTC/USDT", "1h", since, until, now_ms=REPLAY_NOW_MS
    )
    assert result.frame.equals(expected)
    assert result.retries == 4 and result.requests == 9


def test_retries_stop_at_max_attempts(replay_server: ReplayServer) -> None:
    post_faults(replay_server, {"faults": [{"kind": "500", "count": 10, "endpoint": "klines"}]})
    client = make_client(replay_server.url, [], max_attempts=3)
    with pytest.raises(ExchangeUnavailableError, match=r"3 attempt\(s\), the maximum") as info:
        client.fetch_ohlcv("BTC/USDT", "1h", LAST_OPEN_HOUR - DAY_MS, LAST_OPEN_HOUR, now_ms=REPLAY_NOW_MS)
    assert info.value.attempts == 3
    assert replay_server.url in str(info.value)
    assert stats(replay_server)["klines_by_symbol"] == {"BTCUSDT": 3}


def test_a_retry_after_beyond_the_budget_gives_up_at_once(replay_server: ReplayServer) -> None:
    post_faults(
        replay_server, {"faults": [{"kind": "429", "count": 1, "endpoint": "klines", "retry_after_s": 120}]}
    )
    sleeps: list[float] = []
    client = make_client(replay_server.url, sleeps, retry_budget_s=5)
    with pytest.raises(ExchangeUnavailableError, match="retry budget"):
        client.fetch_ohlcv("BTC/USDT", "1h", LAST_OPEN_HOUR - DAY_MS, LAST_OPEN_HOUR, now_ms=REPLAY_NOW_MS)
    assert sleeps == []


def test_unknown_symbol_is_not_retried(replay_server: ReplayServer) -> None:
    sleeps: list[float] = []
    client = make_client(replay_server.url, sleeps)
    # Not listed by the exchange: refused from the loaded markets, no klines request at all.
    with pytest.raises(UnknownSymbolError, match="DOGE/USDT"):
        client.fetch_ohlcv("DOGEUSDT", "1h", LAST_OPEN_HOUR - DAY_MS, LAST_OPEN_HOUR)
    # Refused by the server (Binance -1121 → ccxt BadSymbol): one request, raised at once.
    with pytest.raises(UnknownSymbolError):
        client._call(
            "klines", lambda exchange: exchange.publicGetKlines({"symbol": "NOPEUSDT", "interval": "1h"})
        )
    assert sleeps == []
    assert stats(replay_server)["klines_by_symbol"] == {"NOPEUSDT": 1}


# --- open candle, clock -----------------------------------------------------------------------


@pytest.fixture
def outage_server(tmp_path: Path) -> Iterator[ReplayServer]:
    """A market whose last day had a 3-hour outage, with Binance's open candle in klines answers."""
    bars = simulate_ohlcv("BTC/USDT", "1h", LAST_OPEN_HOUR - 2 * DAY_MS, LAST_OPEN_HOUR + 5 * HOUR_MS)
    hole = (pl.col("ts") >= LAST_OPEN_HOUR - 10 * HOUR_MS) & (pl.col("ts") < LAST_OPEN_HOUR - 7 * HOUR_MS)
    bars.filter(~hole).write_csv(tmp_path / "binance_BTCUSDT_1h.csv")  # the file runs past "now"
    with ReplayServer(data_dir=tmp_path, now_ms=REPLAY_NOW_MS, open_candle=True) as server:
        yield server


def _assert_outage_window(result: FetchResult, since: int) -> None:
    hole = range(LAST_OPEN_HOUR - 10 * HOUR_MS, LAST_OPEN_HOUR - 7 * HOUR_MS, HOUR_MS)
    assert result.frame["ts"].to_list() == [t for t in range(since, LAST_OPEN_HOUR, HOUR_MS) if t not in hole]
    assert result.gaps == [Gap(LAST_OPEN_HOUR - 11 * HOUR_MS, 3)]


def test_open_candle_is_dropped(outage_server: ReplayServer) -> None:
    since = LAST_OPEN_HOUR - 2 * DAY_MS
    result = make_client(outage_server.url).fetch_ohlcv("BTC/USDT", "1h", since, None, now_ms=REPLAY_NOW_MS)
    # The client asked for the 48 closed hours; the outage left room in the page, so the exchange
    # appended the candle opened at 00:00 (as Binance does) …
    assert stats(outage_server)["klines_limits"] == {"48": 1}
    assert result.dropped_open_candle  # … and the client dropped it.
    _assert_outage_window(result, since)


def test_now_defaults_to_the_exchange_clock(outage_server: ReplayServer) -> None:
    # The replay clock is frozen in 2025, the host's clock is later: the exchange's clock decides.
    client = make_client(outage_server.url)
    since = LAST_OPEN_HOUR - 2 * DAY_MS
    result = client.fetch_ohlcv("BTC/USDT", "1h", since)
    assert result.dropped_open_candle
    _assert_outage_window(result, since)
    assert abs(client.now_ms() - REPLAY_NOW_MS) < 60_000
    assert stats(outage_server)["requests"]["/api/v3/time"] == 1  # measured once per client


def test_a_gap_free_range_never_asks_for_the_open_candle(replay_server: ReplayServer) -> None:
    post_faults(replay_server, {"open_candle": True})
    since = LAST_OPEN_HOUR - 5 * HOUR_MS
    result = make_client(replay_server.url).fetch_ohlcv("BTC/USDT", "1h", since, None, now_ms=REPLAY_NOW_MS)
    assert not result.dropped_open_candle
    assert_complete_hourly(result.frame, since, LAST_OPEN_HOUR)
    assert stats(replay_server)["klines_limits"] == {"5": 1}


# --- symbols, tickers, shared clients ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "symbol_id"), [("btcusdt", "BTCUSDT"), ("ETH-USDT", "ETHUSDT"), ("ETHBTC", "ETHBTC")]
)
def test_symbols_are_normalised_before_the_request(
    replay_server: ReplayServer, raw: str, symbol_id: str
) -> None:
    client = make_client(replay_server.url)
    result = client.fetch_ohlcv(
        raw, "1h", LAST_OPEN_HOUR - 10 * HOUR_MS, LAST_OPEN_HOUR, now_ms=REPLAY_NOW_MS
    )
    assert result.frame.height == 10
    assert stats(replay_server)["klines_by_symbol"] == {symbol_id: 1}


def test_fetch_ticker(replay_server: ReplayServer) -> None:
    client = make_client(replay_server.url)
    ticker = client.fetch_ticker("eth/btc")
    last_bar = simulate_ohlcv("ETH/BTC", "1h", LAST_OPEN_HOUR - HOUR_MS, LAST_OPEN_HOUR)
    assert ticker["symbol"] == "ETH/BTC"
    assert ticker["last"] == pytest.approx(last_bar["close"][0])
    assert ticker["timestamp"] == REPLAY_NOW_MS
    assert "info" not in ticker
    assert stats(replay_server)["requests"]["/api/v3/ticker/24hr"] == 1


def test_fetch_ticker_retries_like_fetch_ohlcv(replay_server: ReplayServer) -> None:
    post_faults(replay_server, {"faults": [{"kind": "502", "count": 2, "endpoint": "ticker/24hr"}]})
    sleeps: list[float] = []
    ticker = make_client(replay_server.url, sleeps).fetch_ticker("BTCUSDT")
    assert ticker["last"] > 0 and len(sleeps) == 2


def test_shared_client_per_configuration(replay_server: ReplayServer, closed_port_url: str) -> None:
    clear_exchange_clients()
    try:
        settings = Settings(exchange_api_url=replay_server.url)
        seen: list[ExchangeClient] = []
        threads = [
            threading.Thread(target=lambda: seen.append(get_exchange_client(settings))) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(c) for c in seen}) == 1
        assert get_exchange_client(Settings(exchange_api_url=replay_server.url)) is seen[0]
        assert get_exchange_client(Settings(exchange_api_url=closed_port_url)) is not seen[0]
        # Markets load once per shared client, however many fetches use it.
        for _ in range(3):
            seen[0].fetch_ohlcv(
                "BTC/USDT", "1h", LAST_OPEN_HOUR - HOUR_MS, LAST_OPEN_HOUR, now_ms=REPLAY_NOW_MS
            )
        assert stats(replay_server)["requests"]["/api/v3/exchangeInfo"] == 1
    finally:
        clear_exchange_clients()


def test_settings_env_points_the_shared_client_at_the_replay(replay_exchange_env: str) -> None:
    data = load_bars("BTC/USDT", "1h", LAST_OPEN_HOUR - 3 * HOUR_MS, LAST_OPEN_HOUR, source="exchange")
    assert data.source == "exchange" and data.frame.height == 3 and data.requests == 1


# --- unreachable exchange, auto fallback ------------------------------------------------------


def test_unreachable_exchange_fails_quickly_with_a_clear_message(closed_port_url: str) -> None:
    client = ExchangeClient(api_url=closed_port_url, retry_budget_s=1.0, backoff_base_s=0.05)
    started = time.monotonic()
    with pytest.raises(ExchangeUnavailableError) as info:
        client.fetch_ohlcv("BTC/USDT", "1h", LAST_OPEN_HOUR - DAY_MS, LAST_OPEN_HOUR)
    assert time.monotonic() - started < 10  # bounded by the 1 s budget, not by timeouts
    message = str(info.value)
    assert closed_port_url in message and "unavailable" in message
    assert "Connection refused" in message  # the root cause, not just ccxt's "NetworkError"
    assert info.value.url == closed_port_url and info.value.attempts >= 2


def test_auto_falls_back_to_the_simulator_once_per_process(
    closed_port_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    reset_exchange_probe()
    sleeps: list[float] = []
    client = ExchangeClient(
        api_url=closed_port_url, retry_budget_s=1.0, backoff_base_s=0.05, sleep=sleeps.append
    )
    settings = Settings(exchange_api_url=closed_port_url, simulator_seed=11)
    since, until = LAST_OPEN_HOUR - 2 * DAY_MS, LAST_OPEN_HOUR - DAY_MS
    try:
        with caplog.at_level(logging.WARNING):
            data = load_bars("BTCUSDT", "1h", since, until, source="auto", settings=settings, client=client)
        assert data.source == "simulated" and data.requests == 0
        assert data.frame.equals(simulate_ohlcv("BTC/USDT", "1h", since, until, seed=11))
        assert data.warnings and "SIMULATED" in data.warnings[0] and closed_port_url in data.warnings[0]
        assert any("SIMULATED" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        probe_waits = len(sleeps)
        assert probe_waits > 0
        # The outcome is remembered: the next partition does not wait on the dead exchange again.
        again = load_bars(
            "BTC/USDT", "1h", until, until + DAY_MS, source="auto", settings=settings, client=client
        )
        assert again.source == "simulated" and again.warnings
        assert len(sleeps) == probe_waits
    finally:
        reset_exchange_probe()


def test_auto_uses_the_exchange_when_it_answers(replay_server: ReplayServer) -> None:
    reset_exchange_probe()
    try:
        client = make_client(replay_server.url)
        since, until = LAST_OPEN_HOUR - DAY_MS, LAST_OPEN_HOUR
        data = load_bars("ETH/USDT", "1h", since, until, source="auto", settings=Settings(), client=client)
        assert data.source == "exchange" and data.warnings == [] and data.requests == 1
        assert_complete_hourly(data.frame, since, until)
    finally:
        reset_exchange_probe()


def test_exchange_source_never_falls_back(closed_port_url: str) -> None:
    client = ExchangeClient(api_url=closed_port_url, retry_budget_s=0.3, backoff_base_s=0.05)
    with pytest.raises(ExchangeUnavailableError):
        load_bars("BTC/USDT", "1h", LAST_OPEN_HOUR - DAY_MS, LAST_OPEN_HOUR, source="exchange", client=client)


def test_simulated_source_serves_only_closed_bars() -> None:
    data = load_bars(
        "BTC/USDT", "1h", LAST_OPEN_HOUR - 3 * HOUR_MS, None, source="simulated", now_ms=REPLAY_NOW_MS
    )
    assert data.source == "simulated" and data.frame["ts"].to_list()[-1] == LAST_OPEN_HOUR - HOUR_MS


# --- real data --------------------------------------------------------------------------------


def _real_bars(directory: Path, symbol_id: str, since: int, until: int) -> pl.DataFrame:
    frame = pl.read_csv(directory / f"binance_{symbol_id}_1h.csv.gz")
    return frame.filter((pl.col("ts") >= since) & (pl.col("ts") < until))


@pytest.mark.real_data
def test_real_outage_is_reported_as_a_gap_not_filled(
    real_replay_server: ReplayServer, shared_ohlcv_dir: Path
) -> None:
    # Binance was down from 2018-02-08 01:00 to 2018-02-09 09:00 UTC: 33 hourly bars never existed.
    since, until = ms("2018-02-07T00:00:00"), ms("2018-02-11T00:00:00")
    client = make_client(real_replay_server.url)
    result = client.fetch_ohlcv("BTC/USDT", "1h", since, until, now_ms=REAL_REPLAY_NOW_MS)
    assert [(g.after_ts, g.missing_bars) for g in result.gaps] == [(ms("2018-02-08T00:00:00"), 33)]
    assert result.frame.height == 4 * 24 - 33
    # Exactly the exchange's bars: nothing interpolated into the hole.
    assert result.frame.equals(_real_bars(shared_ohlcv_dir, "BTCUSDT", since, until).cast(OHLCV_SCHEMA))
    assert result.requests == 1


@pytest.mark.real_data
def test_real_year_with_outages_costs_ceil_present_bars_over_1000(real_replay_server: ReplayServer) -> None:
    since, until = ms("2018-01-01T00:00:00"), ms("2019-01-01T00:00:00")
    result = make_client(real_replay_server.url).fetch_ohlcv(
        "ETH/USDT", "1h", since, until, now_ms=REAL_REPLAY_NOW_MS
    )
    missing = sum(g.missing_bars for g in result.gaps)
    assert missing > 33 and result.frame.height + missing == 8760
    assert result.requests == math.ceil(result.frame.height / 1000)
    assert stats(real_replay_server)["klines_by_symbol"] == {"ETHUSDT": result.requests}
