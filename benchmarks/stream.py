"""Streaming scorer benchmark on a real Kafka broker (started like the test fixture does).

1. Throughput: N ticks over S symbols are produced first; then one `crypto-platform score` process
   consumes them and produces one prediction each. ticks/s = predictions / (time between the first and
   the last prediction's broker timestamp, i.e. the scorer's own send times: start-up excluded).
2. Latency at a fixed rate (1k ticks/s): tick → prediction = the moment the benchmark's reader receives
   the prediction − the tick's producer timestamp (one clock, one machine). p50 / p99.
3. The naive design (the seed's consumer), measured in the same run on a sample: consume one message,
   POST it to `/v1/crypto/signal` of a running `crypto-platform serve`, produce the answer, wait for the
   ack, next message.

Prints JSON with the figures, the ratio to the naive design and the goals as booleans
(≥ 20k ticks/s per scorer process, ≥ 50× naive, p99 ≤ 50 ms at 1k ticks/s).

    .venv/bin/python benchmarks/stream.py [--ticks 200000] [--symbols 10] [--rate 1000] [--naive 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crypto_platform.devtools.kafka.runner import LocalKafka  # noqa: E402
from crypto_platform.devtools.ports import free_port  # noqa: E402
from crypto_platform.lib.stream.ticks import Tick, encode_tick, tick_key  # noqa: E402
from serving.stream.config import Topics, ensure_topics  # noqa: E402

BASES = ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "AVAX", "DOT", "LINK", "LTC", "TRX")
GOAL_TICKS_PER_S = 20_000
GOAL_RATIO = 50
GOAL_P99_MS = 50


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ticks(symbols: list[str], n: int, start_ms: int, span_ms: int) -> list[Tick]:
    rng = np.random.default_rng(7)
    steps = rng.normal(0, 2e-4, size=n)
    step = max(span_ms // max(n, 1), 1)
    prices = {s: 100.0 * (i + 1) for i, s in enumerate(symbols)}
    out = []
    for i in range(n):
        s = symbols[i % len(symbols)]
        prices[s] *= 1 + steps[i]
        out.append(Tick(s, prices[s], float(abs(steps[i]) * 100), start_ms + i * step, "benchmark"))
    return out


async def produce_all(bootstrap: str, topic: str, items: list[Tick]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, encode_tick(t), key=tick_key(t.symbol)) for t in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_predictions(bootstrap: str, topic: str, count: int, timeout_s: float, on_record=None) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=5
    )
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            received = time.time()
            for messages in batch.values():
                for m in messages:
                    records.append(m)
                    if on_record is not None:
                        on_record(m, received)
    finally:
        await consumer.stop()
    return records


def scorer_process(bootstrap: str, topics: Topics, symbols: list[str], data_dir: Path, log: Path, group: str):
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **topics.env(),
            "CRYPTO_SYMBOLS": ",".join(symbols),
            "CRYPTO_MARKET_SOURCE": "simulated",
            "CRYPTO_DATA_LOCATION": str(data_dir),
        }
    )
    args = ["--group-id", group, "--no-model", "--metrics-port", str(free_port()), "--log-level", "WARNING"]
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "score", *args],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def unique_topics(tag: str) -> Topics:
    stamp = f"bench-{tag}-{os.getpid()}-{int(time.time())}"
    return Topics(f"{stamp}.prices", f"{stamp}.predictions", f"{stamp}.alerts", f"{stamp}.dlq")


def throughput(bootstrap: str, symbols: list[str], n: int, work: Path) -> dict:
    topics = unique_topics("tput")
    asyncio.run(ensure_topics(bootstrap, topics, 3))
    # Event times over the last 3 hours: bars close on the way, so features and signals are refreshed.
    items = ticks(symbols, n, now_ms() - 3 * 3_600_000, 3 * 3_600_000 - 60_000)
    started = time.perf_counter()
    asyncio.run(produce_all(bootstrap, topics.prices, items))
    produce_s = time.perf_counter() - started
    proc = scorer_process(bootstrap, topics, symbols, work / "data", work / "scorer-tput.log", "bench-tput")
    try:
        records = asyncio.run(read_predictions(bootstrap, topics.predictions, n, timeout_s=600))
    finally:
        stop(proc)
    stamps = sorted(r.timestamp for r in records)
    elapsed_s = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else float("nan")
    return {
        "ticks": n,
        "symbols": len(symbols),
        "predictions": len(records),
        "scoring_seconds": elapsed_s,
        "ticks_per_s": (len(records) - 1) / elapsed_s if elapsed_s > 0 else None,
        "pre_produce_seconds": round(produce_s, 2),
    }


def latency(bootstrap: str, symbols: list[str], rate: float, seconds: float, work: Path) -> dict:
    topics = unique_topics("lat")
    asyncio.run(ensure_topics(bootstrap, topics, 3))
    proc = scorer_process(bootstrap, topics, symbols, work / "data", work / "scorer-lat.log", "bench-lat")
    n = int(rate * seconds)
    received_at: list[tuple[tuple[int, int], float]] = []  # (input partition, offset) → receive time ms
    sent_at_ms: dict[tuple[int, int], int] = {}

    def on_record(record, received: float) -> None:
        source = json.loads(record.value)["source"]
        received_at.append(((source["partition"], source["offset"]), received * 1000))

    async def run() -> None:
        # Warm-up: wait until the scorer answers one tick, so start-up is not measured.
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        warm = Tick(symbols[0], 100.0, 0.0, now_ms() - 1000, "benchmark")
        meta = await producer.send_and_wait(topics.prices, encode_tick(warm), key=tick_key(warm.symbol))
        sent_at_ms[(meta.partition, meta.offset)] = meta.timestamp
        reader = asyncio.create_task(read_predictions(bootstrap, topics.predictions, n + 1, 300, on_record))
        while not received_at:
            await asyncio.sleep(0.05)
        received_at.clear()
        items = ticks(symbols, n, now_ms() - 1000, 1000)
        t0 = time.monotonic()
        pending = []
        for i, tick in enumerate(items):
            ts = now_ms()
            fut = await producer.send(
                topics.prices, encode_tick(tick), key=tick_key(tick.symbol), timestamp_ms=ts
            )
            pending.append((fut, ts))
            delay = t0 + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= 50:
                for f, t in pending:
                    m = await f
                    sent_at_ms[(m.partition, m.offset)] = t
                pending.clear()
        for f, t in pending:
            m = await f
            sent_at_ms[(m.partition, m.offset)] = t
        await reader
        await producer.stop()

    try:
        asyncio.run(run())
    finally:
        stop(proc)
    values = np.asarray([at - sent_at_ms[key] for key, at in received_at if key in sent_at_ms])
    return {
        "rate_per_s": rate,
        "ticks": n,
        "measured": int(values.size),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


def naive(bootstrap: str, symbols: list[str], sample: int, work: Path) -> dict:
    """The seed's design: one message at a time through the REST API, one produce with an ack each."""
    topics = unique_topics("naive")
    asyncio.run(ensure_topics(bootstrap, topics, 3))
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "CRYPTO_SYMBOLS": ",".join(symbols),
            "CRYPTO_MARKET_SOURCE": "simulated",
            "CRYPTO_DATA_LOCATION": str(work / "data"),
            "CRYPTO_API_RATE_LIMIT": "0",
            "CRYPTO_API_HISTORY_URL": f"sqlite:///{work / 'history.db'}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "CRYPTO_API_MODEL_STARTUP_S": "1",
        }
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=(work / "api.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or api.poll() is not None:
                    raise RuntimeError(
                        f"the API did not start: {(work / 'api.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        for symbol in symbols:  # warm the API's caches: the naive loop is measured in steady state
            _post(f"{url}/v1/crypto/signal", {"symbol": symbol})
        asyncio.run(produce_all(bootstrap, topics.prices, ticks(symbols, sample, now_ms() - 60_000, 50_000)))

        async def loop() -> float:
            consumer = AIOKafkaConsumer(
                topics.prices,
                bootstrap_servers=bootstrap,
                group_id="bench-naive",
                auto_offset_reset="earliest",
            )
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
            await consumer.start()
            await producer.start()
            try:
                done = 0
                started = None
                while done < sample:
                    message = await consumer.getone()
                    started = started or time.perf_counter()
                    tick = json.loads(message.value)
                    body = await asyncio.to_thread(
                        _post, f"{url}/v1/crypto/signal", {"symbol": tick["symbol"]}
                    )
                    body["price"] = tick["price"]
                    await producer.send_and_wait(
                        topics.predictions, json.dumps(body).encode(), key=message.key
                    )
                    done += 1
                return time.perf_counter() - started
            finally:
                await consumer.stop()
                await producer.stop()

        seconds = asyncio.run(loop())
    finally:
        stop(api)
    return {"sample": sample, "seconds": seconds, "ticks_per_s": sample / seconds}


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--naive", type=int, default=500, help="ticks in the naive design's sample")
    parser.add_argument("--bootstrap-servers", default=None, help="use this broker instead of starting one")
    args = parser.parse_args()
    symbols = [f"{b}/USDT" for b in BASES[: args.symbols]]
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        work = Path(tmp)
        broker = None
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            broker = LocalKafka(work / "kafka", log_path=work / "kafka.log").start()
            bootstrap = broker.bootstrap_servers
        try:
            tput = throughput(bootstrap, symbols, args.ticks, work)
            lat = latency(bootstrap, symbols, args.rate, args.latency_seconds, work)
            slow = naive(bootstrap, symbols, args.naive, work)
        finally:
            if broker is not None:
                broker.stop()
    ratio = tput["ticks_per_s"] / slow["ticks_per_s"] if tput["ticks_per_s"] else None
    print(
        json.dumps(
            {
                "benchmark": "stream",
                "throughput": tput,
                "latency": lat,
                "naive": slow,
                "ratio_vs_naive": ratio,
                "goals": {
                    "ticks_per_s_ge_20k": bool(
                        tput["ticks_per_s"] and tput["ticks_per_s"] >= GOAL_TICKS_PER_S
                    ),
                    "ratio_ge_50x": bool(ratio and ratio >= GOAL_RATIO),
                    "p99_le_50ms_at_1k": lat["p99_ms"] <= GOAL_P99_MS,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
