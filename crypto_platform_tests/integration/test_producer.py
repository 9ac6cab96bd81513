"""`crypto-platform produce` as a subprocess against the real broker, for each tick source."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from crypto_platform.lib import storage
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.stream.ticks import Tick, parse_tick, tick_key
from crypto_platform_tests.fixtures.exchange import REPLAY_NOW_MS
from serving.stream.config import Topics

pytestmark = pytest.mark.integration

DAY_START = 1_748_736_000_000  # 2025-06-01T00:00Z


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTO_", "KAFKA_"))}
    return {**env, **extra}


def _produce(servers: str, topic: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    command = [sys.executable, "-m", "crypto_platform.cli", "produce", "--bootstrap-servers", servers]
    return subprocess.run(
        [*command, "--topic", topic, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
        check=False,
    )


def _summary(stdout: str) -> dict[str, str]:
    line = [ln for ln in stdout.splitlines() if ln.startswith("produce:")][-1]
    return dict(part.split("=", 1) for part in line.split()[1:])


async def _consume_async(servers: str, topic: str, count: int, timeout_s: float) -> list:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < count:
                for part in (await consumer.getmany(timeout_ms=300)).values():
                    records.extend(part)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


def _consume(servers: str, topic: str, count: int, timeout_s: float = 15.0) -> list[tuple[bytes, Tick]]:
    """(key, parsed tick) of the first `count` records; every value must pass the scorer's validation."""
    records = asyncio.run(_consume_async(servers, topic, count, timeout_s))
    now_ms = int(time.time() * 1000)
    return [(r.key, parse_tick(r.value, (), now_ms)) for r in records]


def _by_symbol(pairs: list[tuple[bytes, Tick]]) -> dict[str, list[Tick]]:
    grouped: dict[str, list[Tick]] = defaultdict(list)
    for key, tick in pairs:
        assert key == tick_key(tick.symbol)
        grouped[tick.symbol].append(tick)
    return grouped


def test_simulated_source(kafka_running, kafka_topics: Topics):
    servers = kafka_running.bootstrap_servers
    done = _produce(
        servers, kafka_topics.prices, "--source", "simulated", "--rate", "0", "--count", "300",
        "--symbols", "BTC/USDT,ETH/USDT,SOL/USDT", "--interval", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = _summary(done.stdout)
    assert (summary["sent"], summary["errors"]) == ("300", "0")

    pairs = _consume(servers, kafka_topics.prices, 300)
    assert len(pairs) == 300
    grouped = _by_symbol(pairs)
    assert sorted(grouped) == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    now_ms = int(time.time() * 1000)
    for ticks in grouped.values():
        assert len(ticks) == 100
        assert all(t.source == "simulated" and t.volume >= 0 for t in ticks)
        stamps = [t.timestamp_ms for t in ticks]
        # 2 s apart in event time, and an unpaced bounded run ends at "now", not in the future.
        assert all(b - a == 2000 for a, b in itertools.pairwise(stamps))
        assert now_ms - 600_000 < stamps[-1] <= now_ms
        moves = [abs(math.log(b.price / a.price)) for a, b in itertools.pairwise(ticks)]
        assert max(moves) < 0.005  # per-tick scale: a 2 s tick never moves like the seed's 2–4 %


def test_rate_limits_the_send_rate(kafka_running, kafka_topics: Topics):
    done = _produce(
        kafka_running.bootstrap_servers, kafka_topics.prices,
        "--source", "simulated", "--rate", "40", "--count", "40", "--symbols", "BTC/USDT",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = _summary(done.stdout)
    assert summary["sent"] == "40"
    # 40 ticks at 40/s: the last one is due 39/40 s after the first, whatever the machine's load.
    assert float(summary["elapsed"].rstrip("s")) >= 0.95


def _write_bars(frame: pl.DataFrame, path: Path) -> None:
    frame.write_csv(path)


def test_replay_source_from_files_and_from_the_stored_asset(kafka_running, kafka_topics: Topics, tmp_path):
    servers = kafka_running.bootstrap_servers
    btc = simulate_ohlcv("BTC/USDT", "1h", DAY_START, DAY_START + 24 * HOUR_MS)
    eth = simulate_ohlcv("ETH/USDT", "1h", DAY_START - 24 * HOUR_MS, DAY_START + 24 * HOUR_MS)
    files = tmp_path / "files"
    files.mkdir()
    _write_bars(btc, files / "binance_BTCUSDT_1h.csv")
    _write_bars(eth, files / "binance_ETHUSDT_1h.csv")
    # Files: the last day of each symbol (--days 1), replayed unpaced.
    done = _produce(
        servers, kafka_topics.prices, "--source", "replay", "--data-dir", str(files), "--rate", "0",
        "--symbols", "BTC/USDT,ETH/USDT",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _summary(done.stdout)["sent"] == str(2 * 24 * 4)

    # The pipeline's stored ohlcv asset (a local data location), one symbol, an explicit window.
    location = tmp_path / "data"
    store = storage.open_store(str(location))
    storage.write_parquet(store, storage.ohlcv_key("SOL/USDT", "2025-06-01"), simulate_ohlcv(
        "SOL/USDT", "1h", DAY_START, DAY_START + 24 * HOUR_MS
    ))  # fmt: skip
    done = _produce(
        servers, kafka_topics.prices, "--source", "replay", "--rate", "0", "--symbols", "SOL/USDT",
        "--start", "2025-06-01T06:00Z", "--end", "2025-06-01T09:00Z",
        env=_env(CRYPTO_DATA_LOCATION=str(location)),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _summary(done.stdout)["sent"] == str(3 * 4)

    grouped = _by_symbol(_consume(servers, kafka_topics.prices, 2 * 96 + 12))
    expected = {
        "BTC/USDT": btc,
        "ETH/USDT": eth.filter(pl.col("ts") >= DAY_START),
        "SOL/USDT": simulate_ohlcv("SOL/USDT", "1h", DAY_START + 6 * HOUR_MS, DAY_START + 9 * HOUR_MS),
    }
    for symbol, bars in expected.items():
        ticks = grouped[symbol]
        assert len(ticks) == 4 * bars.height
        assert [t.timestamp_ms for t in ticks] == sorted(t.timestamp_ms for t in ticks)
        for i, bar in enumerate(bars.iter_rows(named=True)):
            four = ticks[4 * i : 4 * i + 4]
            assert all(bar["ts"] <= t.timestamp_ms < bar["ts"] + HOUR_MS for t in four)
            assert (four[0].price, four[-1].price) == (bar["open"], bar["close"])
            assert {four[1].price, four[2].price} == {bar["low"], bar["high"]}
            assert math.isclose(sum(t.volume for t in four), bar["volume"], rel_tol=1e-9)
            assert all(t.source == "replay" for t in four)


def test_exchange_source_polls_tickers_from_the_replay_server(
    kafka_running, kafka_topics: Topics, replay_server
):
    done = _produce(
        kafka_running.bootstrap_servers, kafka_topics.prices, "--source", "exchange", "--rate", "20",
        "--count", "6", "--symbols", "BTC/USDT,ETH/USDT",
        env=_env(CRYPTO_EXCHANGE_API_URL=replay_server.url),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _summary(done.stdout)["sent"] == "6"
    assert replay_server.stats()["requests"].get("/api/v3/ticker/24hr", 0) >= 6

    grouped = _by_symbol(_consume(kafka_running.bootstrap_servers, kafka_topics.prices, 6))
    closed_hour = REPLAY_NOW_MS // HOUR_MS * HOUR_MS
    for symbol in ("BTC/USDT", "ETH/USDT"):
        last_close = simulate_ohlcv(symbol, "1h", closed_hour - HOUR_MS, closed_hour)["close"][0]
        ticks = grouped[symbol]
        assert len(ticks) == 3
        # The replay server's clock is frozen: every poll sees the last closed hour's close, stamped "now",
        # and no volume is traded between polls.
        assert all(t.price == last_close and t.timestamp_ms == REPLAY_NOW_MS for t in ticks)
        assert all(t.volume == 0 and t.source == "exchange" for t in ticks)


async def _sigterm_once_flowing(proc: subprocess.Popen, servers: str, topic: str) -> None:
    """SIGTERM the producer as soon as its first tick is readable from the topic."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert proc.poll() is None, "the producer ended before it was stopped"
    proc.send_signal(signal.SIGTERM)


def test_sigterm_flushes_and_reports(kafka_running, kafka_topics: Topics):
    servers = kafka_running.bootstrap_servers
    proc = subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "produce", "--bootstrap-servers", servers,
         "--topic", kafka_topics.prices, "--source", "simulated", "--rate", "200", "--symbols", "BTC/USDT"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        asyncio.run(_sigterm_once_flowing(proc, servers, kafka_topics.prices))
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    summary = _summary(stdout)
    sent = int(summary["sent"])
    assert sent > 0 and summary["errors"] == "0"
    # Everything it counted as sent is in the topic, and nothing more.
    records = asyncio.run(_consume_async(servers, kafka_topics.prices, sent + 1, 5.0))
    assert len(records) == sent


def test_unreachable_broker_exits_2(closed_port_url):
    port = closed_port_url.rsplit(":", 1)[1]
    done = _produce(f"127.0.0.1:{port}", "prices", "--count", "1", "--connect-timeout", "2", timeout=60)
    assert done.returncode == 2
    assert "not usable" in done.stderr
