"""The replay server speaks Binance: raw HTTP checks of its answers, and unmodified ccxt against it."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ccxt
import polars as pl
import pytest
import requests

from crypto_platform.devtools.replay.faults import FaultSpecError, parse_fault_spec
from crypto_platform.devtools.replay.server import ReplayServer
from crypto_platform.lib.market.bar_store import aggregate_bars
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.market.timeframes import HOUR_MS, parse_instant
from crypto_platform_tests.fixtures.exchange import REAL_REPLAY_NOW_MS, REPLAY_NOW_MS

pytestmark = pytest.mark.integration

DAY_MS = 24 * HOUR_MS
OPEN_HOUR = REPLAY_NOW_MS // HOUR_MS * HOUR_MS


def get(server: ReplayServer, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{server.url}{path}", params=params, timeout=10)


def klines(server: ReplayServer, **params: Any) -> list[list[Any]]:
    response = get(server, "/api/v3/klines", **params)
    assert response.status_code == 200, response.text
    return response.json()


def ccxt_binance(server: ReplayServer) -> ccxt.binance:
    """Stock ccxt binance with its URLs pointed at the server (no platform code involved)."""
    exchange = ccxt.binance({"enableRateLimit": False})
    exchange.urls["api"] = {
        name: server.url + "/" + url.split("/", 3)[3] for name, url in exchange.urls["api"].items()
    }
    exchange.options["fetchMarkets"]["types"] = ["spot"]
    return exchange


# --- klines -----------------------------------------------------------------------------------


def test_kline_rows_have_binances_12_fields(replay_server: ReplayServer) -> None:
    rows = klines(replay_server, symbol="BTCUSDT", interval="1h", startTime=OPEN_HOUR - 3 * HOUR_MS, limit=2)
    expected = simulate_ohlcv("BTC/USDT", "1h", OPEN_HOUR - 3 * HOUR_MS, OPEN_HOUR - HOUR_MS)
    assert len(rows) == 2 and all(len(row) == 12 for row in rows)
    for row, bar in zip(rows, expected.iter_rows(named=True), strict=True):
        assert row[0] == bar["ts"] and row[6] == bar["ts"] + HOUR_MS - 1
        assert [float(v) for v in row[1:6]] == pytest.approx(
            [bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]]
        )
        assert all(isinstance(v, str) for v in row[1:6])  # decimal strings, as Binance sends


def test_start_and_end_time_are_inclusive_and_limit_caps(replay_server: ReplayServer) -> None:
    start, end = OPEN_HOUR - 10 * HOUR_MS, OPEN_HOUR - 5 * HOUR_MS
    rows = klines(replay_server, symbol="ETHUSDT", interval="1h", startTime=start, endTime=end)
    assert [r[0] for r in rows] == list(range(start, end + 1, HOUR_MS))
    rows = klines(replay_server, symbol="ETHUSDT", interval="1h", startTime=start, endTime=end, limit=2)
    assert [r[0] for r in rows] == [start, start + HOUR_MS]
    # endTime alone: the last `limit` bars up to it; nothing at all: the last 500 closed bars.
    rows = klines(replay_server, symbol="ETHUSDT", interval="1h", endTime=end, limit=3)
    assert [r[0] for r in rows] == [end - 2 * HOUR_MS, end - HOUR_MS, end]
    rows = klines(replay_server, symbol="ETHUSDT", interval="1h")
    assert len(rows) == 500 and rows[-1][0] == OPEN_HOUR - HOUR_MS


def test_at_most_1000_klines_per_answer(replay_server: ReplayServer) -> None:
    rows = klines(
        replay_server, symbol="BTCUSDT", interval="1h", startTime=OPEN_HOUR - 5000 * HOUR_MS, limit=1000
    )
    assert len(rows) == 1000
    response = get(replay_server, "/api/v3/klines", symbol="BTCUSDT", interval="1h", limit=1001)
    assert response.status_code == 400 and response.json()["code"] == -1130


def test_no_bar_after_now_is_served(replay_server: ReplayServer) -> None:
    assert klines(replay_server, symbol="BTCUSDT", interval="1h", startTime=OPEN_HOUR) == []
    rows = klines(replay_server, symbol="BTCUSDT", interval="1d", startTime=OPEN_HOUR - 3 * DAY_MS)
    assert rows[-1][0] + DAY_MS <= REPLAY_NOW_MS


def test_open_candle_only_when_the_answer_reaches_now(replay_server: ReplayServer) -> None:
    response = requests.post(f"{replay_server.url}/__replay__/faults", json={"open_candle": True}, timeout=5)
    assert response.json()["open_candle"] is True
    rows = klines(replay_server, symbol="BTCUSDT", interval="1h", startTime=OPEN_HOUR - 3 * HOUR_MS)
    assert [r[0] for r in rows][-2:] == [OPEN_HOUR - HOUR_MS, OPEN_HOUR]
    assert rows[-1][1] == rows[-1][4] == rows[-2][4] and float(rows[-1][5]) == 0.0  # just opened
    # A full page, or a range ending before now, does not include it.
    full = klines(replay_server, symbol="BTCUSDT", interval="1h", startTime=OPEN_HOUR - 3 * HOUR_MS, limit=3)
    assert full[-1][0] == OPEN_HOUR - HOUR_MS
    before = klines(replay_server, symbol="BTCUSDT", interval="1h", endTime=OPEN_HOUR - 1, limit=2)
    assert before[-1][0] == OPEN_HOUR - HOUR_MS
    latest = klines(replay_server, symbol="BTCUSDT", interval="1h", limit=2)
    assert [r[0] for r in latest] == [OPEN_HOUR - HOUR_MS, OPEN_HOUR]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"symbol": "DOGEUSDT", "interval": "1h"}, 400, -1121),
        ({"interval": "1h"}, 400, -1102),
        ({"symbol": "BTCUSDT", "interval": "3d"}, 400, -1120),
        ({"symbol": "BTCUSDT"}, 400, -1102),
        ({"symbol": "BTCUSDT", "interval": "1h", "startTime": "yesterday"}, 400, -1100),
        ({"symbol": "BTCUSDT", "interval": "1h", "limit": 0}, 400, -1130),
        ({"symbol": "BTCUSDT", "interval": "1h", "startTime": 10, "endTime": 5}, 400, -1023),
    ],
)
def test_bad_requests_get_binances_errors(
    replay_server: ReplayServer, params: dict, status: int, code: int
) -> None:
    response = get(replay_server, "/api/v3/klines", **params)
    assert response.status_code == status and response.json()["code"] == code


def test_ccxt_maps_the_errors_like_binances(replay_server: ReplayServer) -> None:
    exchange = ccxt_binance(replay_server)
    with pytest.raises(ccxt.BadSymbol):
        exchange.publicGetKlines({"symbol": "NOPEUSDT", "interval": "1h"})
    exchange.load_markets()
    with pytest.raises(ccxt.BadRequest):
        exchange.fetch_ohlcv("BTC/USDT", "3d")


# --- markets, tickers, time -------------------------------------------------------------------


def test_unmodified_ccxt_loads_markets_and_reads_data(replay_server: ReplayServer) -> None:
    exchange = ccxt_binance(replay_server)
    markets = exchange.load_markets()
    assert set(markets) == {"BTC/USDT", "ETH/USDT", "ETH/BTC"}
    assert markets["ETH/BTC"]["spot"] and markets["ETH/BTC"]["active"]
    assert exchange.fetch_time() == REPLAY_NOW_MS
    bars = exchange.fetch_ohlcv("ETH/BTC", "4h", since=OPEN_HOUR - 2 * DAY_MS, limit=1000)
    assert len(bars) == 12 and bars[0][0] % (4 * HOUR_MS) == 0
    # load_markets on spot only needs exchangeInfo; ccxt asked for nothing else.
    requests_seen = get(replay_server, "/__replay__/stats").json()["requests"]
    assert requests_seen == {"/api/v3/exchangeInfo": 1, "/api/v3/time": 1, "/api/v3/klines": 1}


def test_tickers(replay_server: ReplayServer) -> None:
    day = simulate_ohlcv("BTC/USDT", "1h", OPEN_HOUR - DAY_MS, OPEN_HOUR)
    ticker = get(replay_server, "/api/v3/ticker/24hr", symbol="BTCUSDT").json()
    assert float(ticker["lastPrice"]) == pytest.approx(day["close"][-1])
    assert float(ticker["openPrice"]) == pytest.approx(day["open"][0])
    assert float(ticker["highPrice"]) == pytest.approx(day["high"].max())
    assert float(ticker["volume"]) == pytest.approx(day["volume"].sum())
    assert ticker["closeTime"] == REPLAY_NOW_MS
    every = get(replay_server, "/api/v3/ticker/24hr").json()
    assert sorted(t["symbol"] for t in every) == ["BTCUSDT", "ETHBTC", "ETHUSDT"]
    some = get(replay_server, "/api/v3/ticker/price", symbols='["ETHUSDT","ETHBTC"]').json()
    assert [p["symbol"] for p in some] == ["ETHUSDT", "ETHBTC"]
    price = get(replay_server, "/api/v3/ticker/price", symbol="BTCUSDT").json()
    assert float(price["price"]) == pytest.approx(day["close"][-1])
    assert get(replay_server, "/api/v3/ticker/price", symbol="XRPUSDT").json()["code"] == -1121
    assert get(replay_server, "/api/v3/ping").json() == {}


# --- control endpoints ------------------------------------------------------------------------


def test_stats_reset_and_runtime_faults(replay_server: ReplayServer) -> None:
    url = replay_server.url
    body = {
        "faults": [{"kind": "503", "count": 2, "endpoint": "klines"}, {"kind": "429", "retry_after_s": 3}]
    }
    pending = requests.post(f"{url}/__replay__/faults", json=body, timeout=5).json()["pending"]
    assert [(p["kind"], p["remaining"]) for p in pending] == [("503", 2), ("429", 1)]
    # The klines fault does not touch other endpoints; the unscoped 429 takes the first request it sees.
    limited = get(replay_server, "/api/v3/time")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert get(replay_server, "/api/v3/time").status_code == 200
    for _ in range(2):
        response = get(replay_server, "/api/v3/klines", symbol="BTCUSDT", interval="1h", limit=1)
        assert response.status_code == 503 and response.json()["code"] == -1008
    assert get(replay_server, "/api/v3/klines", symbol="BTCUSDT", interval="1h", limit=1).status_code == 200
    served = get(replay_server, "/__replay__/stats").json()
    assert served["requests"] == {"/api/v3/time": 2, "/api/v3/klines": 3}
    assert served["faults_served"] == {"/api/v3/time": {"429": 1}, "/api/v3/klines": {"503": 2}}
    assert requests.post(f"{url}/__replay__/reset", timeout=5).json() == {"ok": True}
    assert get(replay_server, "/__replay__/stats").json()["total"] == 0


def test_bad_fault_requests_are_refused(replay_server: ReplayServer) -> None:
    for body in ({"kind": "404"}, {"faults": [{"kind": "500", "count": 0}]}, {"fault": []}, [1]):
        response = requests.post(f"{replay_server.url}/__replay__/faults", json=body, timeout=5)
        assert response.status_code == 400, body
    assert get(replay_server, "/__replay__/faults").json()["pending"] == []
    with pytest.raises(FaultSpecError):
        parse_fault_spec("429:many")
    assert parse_fault_spec("timeout:2:klines", delay_s=3).to_dict() == {
        "kind": "timeout", "count": 2, "endpoint": "klines", "retry_after_s": 1, "delay_s": 3.0,
        "symbol": None,
    }  # fmt: skip


def test_a_fault_for_one_symbol_leaves_the_others_answering(replay_server: ReplayServer) -> None:
    body = {"faults": [{"kind": "500", "count": 2, "endpoint": "klines", "symbol": "ETHUSDT"}]}
    assert requests.post(f"{replay_server.url}/__replay__/faults", json=body, timeout=5).status_code == 200
    params = {"interval": "1h", "limit": 3}
    assert get(replay_server, "/api/v3/klines", symbol="BTCUSDT", **params).status_code == 200
    assert get(replay_server, "/api/v3/klines", symbol="ETHUSDT", **params).status_code == 500
    assert get(replay_server, "/api/v3/klines", symbol="BTCUSDT", **params).status_code == 200
    assert get(replay_server, "/api/v3/klines", symbol="ETHUSDT", **params).status_code == 500
    assert get(replay_server, "/api/v3/klines", symbol="ETHUSDT", **params).status_code == 200


def test_clock_can_move(replay_server: ReplayServer) -> None:
    later = REPLAY_NOW_MS + 2 * HOUR_MS
    response = requests.post(f"{replay_server.url}/__replay__/clock", json={"now_ms": later}, timeout=5)
    assert response.json() == {"now_ms": later, "frozen": True}
    rows = klines(replay_server, symbol="BTCUSDT", interval="1h", limit=1)
    assert rows[0][0] == OPEN_HOUR + HOUR_MS
    response = requests.post(
        f"{replay_server.url}/__replay__/clock", json={"now": "2025-01-01T00:00Z"}, timeout=5
    )
    assert response.json()["now_ms"] == parse_instant("2025-01-01T00:00:00+00:00")
    replay_server.reset()
    assert get(replay_server, "/api/v3/time").json()["serverTime"] == REPLAY_NOW_MS


# --- file data --------------------------------------------------------------------------------


@pytest.fixture
def file_dir(tmp_path: Path) -> Path:
    """Simulated hourly bars written in all three file formats, plus files the store must ignore."""
    start, end = parse_instant("2024-03-01T00:00Z"), parse_instant("2024-03-11T00:00Z")
    btc = simulate_ohlcv("BTC/USDT", "1h", start, end)
    # A 5-hour hole, as in real exchange outages.
    btc = btc.filter((pl.col("ts") < start + 50 * HOUR_MS) | (pl.col("ts") >= start + 55 * HOUR_MS))
    with gzip.open(tmp_path / "binance_BTCUSDT_1h.csv.gz", "wb") as fh:
        btc.write_csv(fh)
    simulate_ohlcv("ETH/USDT", "1h", start, end).write_csv(tmp_path / "binance_ETHUSDT_1h.csv")
    simulate_ohlcv("SOL/USDT", "1h", start, end).write_parquet(tmp_path / "binance_SOLUSDT_1h.parquet")
    (tmp_path / "kraken_XRPUSDT_1h.csv").write_text("ts,open,high,low,close,volume\n")
    (tmp_path / "notes.txt").write_text("not data")
    return tmp_path


def test_files_in_every_format_are_served_with_their_gaps(file_dir: Path) -> None:
    with ReplayServer(data_dir=file_dir, now_ms=parse_instant("2024-03-20T00:00Z")) as server:
        assert (
            requests.get(f"{server.url}/api/v3/exchangeInfo", timeout=5).json()["symbols"][0]["symbol"]
            == "BTCUSDT"
        )
        exchange = ccxt_binance(server)
        assert set(exchange.load_markets()) == {"BTC/USDT", "ETH/USDT", "SOL/USDT"}
        since = parse_instant("2024-03-01T00:00Z")
        for symbol in ("ETH/USDT", "SOL/USDT"):
            bars = exchange.fetch_ohlcv(symbol, "1h", since=since, limit=1000)
            assert [b[0] for b in bars] == list(range(since, since + 240 * HOUR_MS, HOUR_MS))
        btc = exchange.fetch_ohlcv("BTC/USDT", "1h", since=since, limit=1000)
        assert len(btc) == 235 and since + 50 * HOUR_MS not in {b[0] for b in btc}


def test_coarser_intervals_are_aggregated_from_hourly_files(file_dir: Path) -> None:
    with ReplayServer(data_dir=file_dir, now_ms=parse_instant("2024-03-20T00:00Z")) as server:
        since = parse_instant("2024-03-01T00:00Z")
        hourly = pl.read_csv(file_dir / "binance_ETHUSDT_1h.csv")
        for interval, bar_ms in (("4h", 4 * HOUR_MS), ("1d", DAY_MS)):
            rows = requests.get(
                f"{server.url}/api/v3/klines",
                params={"symbol": "ETHUSDT", "interval": interval, "startTime": since},
                timeout=5,
            ).json()
            expected = aggregate_bars(hourly, bar_ms)
            assert [r[0] for r in rows] == expected["ts"].to_list()
            assert [float(r[2]) for r in rows] == pytest.approx(expected["high"].to_list())
            assert [float(r[5]) for r in rows] == pytest.approx(expected["volume"].to_list())
        # Bars finer than the files cannot be made up.
        minute = requests.get(
            f"{server.url}/api/v3/klines", params={"symbol": "ETHUSDT", "interval": "1m"}, timeout=5
        )
        assert minute.status_code == 400 and minute.json() == {"code": -1120, "msg": "Invalid interval."}


def test_aggregation_keeps_a_partial_bucket_and_skips_an_empty_one() -> None:
    t0 = parse_instant("2024-01-01T00:00Z")
    # Hours 0–3 present, hours 4–5 missing, 6 present; hours 8–11 missing entirely.
    ts = [t0 + h * HOUR_MS for h in (0, 1, 2, 3, 6, 12)]
    frame = pl.DataFrame(
        {"ts": ts, "open": [1.0, 2, 3, 4, 7, 13], "high": [2.0, 3, 4, 5, 8, 14], "low": [0.5, 1, 2, 3, 6, 12],
         "close": [2.0, 3, 4, 5, 8, 14], "volume": [1.0] * 6}
    )  # fmt: skip
    four_hourly = aggregate_bars(frame, 4 * HOUR_MS)
    assert four_hourly.rows() == [
        (t0, 1.0, 5.0, 0.5, 5.0, 4.0),
        (t0 + 4 * HOUR_MS, 7.0, 8.0, 6.0, 8.0, 1.0),
        (t0 + 12 * HOUR_MS, 13.0, 14.0, 12.0, 14.0, 1.0),
    ]


@pytest.mark.real_data
def test_real_files_are_replayed_up_to_now(real_replay_server: ReplayServer) -> None:
    exchange = ccxt_binance(real_replay_server)
    assert set(exchange.load_markets()) == {"BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT"}
    # BTC's file runs to July 2026 but "now" is 2026-04-16 00:30: the last bar served is 2026-04-15 23:00.
    last = exchange.fetch_ohlcv("BTC/USDT", "1h", limit=1)
    assert last[0][0] == REAL_REPLAY_NOW_MS // HOUR_MS * HOUR_MS - HOUR_MS
    first = exchange.fetch_ohlcv("BTC/USDT", "1h", since=0, limit=1)
    assert first[0][0] == parse_instant("2017-08-17T04:00Z")  # Binance's first BTC/USDT candle


# --- CLI --------------------------------------------------------------------------------------


def test_cli_serves_until_terminated(tmp_path: Path) -> None:
    cli = Path(sys.executable).with_name("crypto-platform")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "crypto_platform.cli"]
    args = ["exchange-replay", "--port", "0", "--simulate", "BTCUSDT,ethbtc", "--now", "2025-06-01T00:30Z"]
    args += ["--fault", "418:1:klines", "--fault-retry-after", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            if "CRYPTO_EXCHANGE_API_URL=" in line:
                url = line.strip().split("=", 1)[1]
        assert url, "the CLI never printed its URL"
        banned = requests.get(
            f"{url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h"}, timeout=5
        )
        assert banned.status_code == 418 and banned.headers["Retry-After"] == "2"
        rows = requests.get(
            f"{url}/api/v3/klines", params={"symbol": "ETHBTC", "interval": "1h", "limit": 1}
        ).json()
        assert rows[0][0] == OPEN_HOUR - HOUR_MS
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    assert process.returncode == 0
