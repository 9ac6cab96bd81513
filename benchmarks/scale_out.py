"""Scale-out benchmark: scorer throughput with 1, 2, 3 `crypto-platform score` instances in one consumer group
on a 3-broker cluster (`kafka-local --brokers 3`: replication 3, min ISR 2, acks=all everywhere).

Per instance count K (fresh topics of `--partitions` partitions and a fresh group each time):
1. start K scorer processes and wait until the group is Stable with all K owning partitions;
2. produce N ticks as fast as the load generator can (idempotent, acks=all; over the last 3 hours of
   event time, so bars close and features refresh on the way);
3. ticks/s = predictions / (last − first prediction's timestamp, stamped by the scorers' producers):
   the scorers' own rate with start-up and group join excluded.

The load generator's own rate is printed beside it: when it is not well above the scorers' rate, the
figure is the generator's, not the scorers'. The capacity table divides an expected tick rate by the
measured rate per instance at 50 % utilisation (headroom for the survivors to take a dead instance's
partitions and its backlog) and gives twice as many partitions as instances (at least 3, a leader per
broker): partitions cannot be added later without moving symbols between partitions (their order), so
there is room to double the replicas.

Prints JSON. This machine's CPUs are shared by the three brokers, the scorers and the generator: see
`cpus` and `load_average` in the output before reading the figures as a scaling curve.

    .venv/bin/python benchmarks/scale_out.py [--ticks 60000] [--instances 1,2,3] [--partitions 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stream import ticks  # noqa: E402  (benchmarks/stream.py: the same synthetic tick stream)

from crypto_platform.devtools.kafka.cluster_state import group_state  # noqa: E402
from crypto_platform.devtools.kafka.local_broker import replication_for, resolve_jars  # noqa: E402
from crypto_platform.devtools.kafka.runner import LocalKafkaCluster  # noqa: E402
from crypto_platform.lib.stream.ticks import encode_tick, tick_key  # noqa: E402
from serving.stream.config import Topics, ensure_topics  # noqa: E402

BASES = (
    "BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "AVAX", "DOT", "LINK", "LTC", "TRX",
    "ATOM", "NEAR", "APT", "ARB", "OP", "FIL", "ETC", "XLM", "UNI", "AAVE", "SUI", "INJ",
)  # fmt: skip
EXPECTED_TICKS_PER_S = (1_000, 5_000, 10_000, 50_000, 100_000)
TARGET_UTILISATION = 0.5


def covering_symbols(partitions: int, per_partition: int = 2) -> list[str]:
    """Symbols chosen so that every partition of the prices topic gets `per_partition` of them (the key
    decides the partition): no instance is idle for want of a symbol."""
    partitioner = DefaultPartitioner()
    ids = list(range(partitions))
    chosen: dict[int, list[str]] = {p: [] for p in ids}
    for base in BASES:
        symbol = f"{base}/USDT"
        slot = partitioner(tick_key(symbol), ids, ids)
        if len(chosen[slot]) < per_partition:
            chosen[slot].append(symbol)
    short = [p for p, symbols in chosen.items() if not symbols]
    if short:
        raise SystemExit(f"no symbol of BASES lands on partitions {short}: use fewer partitions")
    return [s for symbols in chosen.values() for s in symbols]


async def produce_all(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Send everything (idempotent, acks=all); seconds until the last acknowledgement."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def prediction_times(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[int]:
    """The timestamps (ms) of the first `count` predictions, read from the beginning."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=50
    )
    await consumer.start()
    stamps: list[int] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(stamps) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for messages in batch.values():
                stamps.extend(m.timestamp for m in messages)
    finally:
        await consumer.stop()
    return stamps


def scorer(
    bootstrap: str, topics: Topics, symbols: list[str], group: str, instance: int, work: Path, eos: bool
):
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **topics.env(),
            "CRYPTO_SYMBOLS": ",".join(symbols),
            "CRYPTO_MARKET_SOURCE": "simulated",
            "CRYPTO_DATA_LOCATION": str(work / "data"),
            "CRYPTO_SCORER_INSTANCE": str(instance),
        }
    )
    args = [
        "--group-id",
        group,
        "--no-model",
        "--no-warm-start",
        "--metrics-port",
        "0",
        "--log-level",
        "WARNING",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "score", *args, *(["--exactly-once"] if eos else [])],
        cwd=REPO,
        env=env,
        stdout=(work / f"scorer-{group}-{instance}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for_group(bootstrap: str, group: str, topic: str, members: int, partitions: int, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = asyncio.run(group_state(bootstrap, group))
        except KafkaError:  # the coordinator is still being elected or loading the offsets topic
            time.sleep(0.5)
            continue
        owners = state.owners(topic)
        if state.state == "Stable" and len(owners) == partitions and len(set(owners.values())) == members:
            return
        time.sleep(0.5)
    raise SystemExit(f"group {group} did not settle with {members} members within {timeout_s:.0f}s")


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_instances(
    cluster, k: int, n: int, partitions: int, symbols: list[str], work: Path, eos: bool
) -> dict:
    bootstrap = cluster.bootstrap_servers
    stamp = f"scale-{k}-{os.getpid()}-{int(time.time())}"
    topics = Topics(f"{stamp}.prices", f"{stamp}.predictions", f"{stamp}.alerts", f"{stamp}.dlq")
    replication, _ = replication_for(cluster.size)
    asyncio.run(ensure_topics(bootstrap, topics, partitions, replication_factor=replication))
    group = f"g-{stamp}"
    procs = [scorer(bootstrap, topics, symbols, group, i, work, eos) for i in range(k)]
    try:
        wait_for_group(bootstrap, group, topics.prices, k, partitions, 180)
        now = time.time_ns() // 1_000_000
        items = ticks(symbols, n, now - 3 * 3_600_000, 3 * 3_600_000 - 60_000)
        messages = [(tick_key(t.symbol), encode_tick(t)) for t in items]
        produce_s = asyncio.run(produce_all(bootstrap, topics.prices, messages))
        stamps = asyncio.run(prediction_times(bootstrap, topics.predictions, n, 600))
    finally:
        stop(procs)
    if len(stamps) < n:
        raise SystemExit(f"{k} instance(s): only {len(stamps)} of {n} predictions within 600 s")
    span_s = (max(stamps) - min(stamps)) / 1000
    rate = n / span_s if span_s > 0 else float("inf")
    return {
        "instances": k,
        "ticks": n,
        "scorer_ticks_per_s": round(rate),
        "per_instance_ticks_per_s": round(rate / k),
        "scoring_s": round(span_s, 2),
        "load_generator_ticks_per_s": round(n / produce_s),
    }


def capacity_table(per_instance: float) -> list[dict]:
    rows = []
    for expected in EXPECTED_TICKS_PER_S:
        instances = max(1, math.ceil(expected / (per_instance * TARGET_UTILISATION)))
        # At least 3 partitions: one leader per broker of a 3-broker cluster.
        rows.append(
            {"expected_ticks_per_s": expected, "instances": instances, "partitions": max(3, 2 * instances)}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=60_000, help="ticks per instance count")
    parser.add_argument("--instances", default="1,2,3", help="comma-separated instance counts")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the prices topic")
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--exactly-once", action="store_true", help="scorers with --exactly-once")
    args = parser.parse_args()
    counts = [int(c) for c in args.instances.split(",") if c.strip()]
    if any(c < 1 or c > args.partitions for c in counts):
        raise SystemExit("every instance count must be between 1 and --partitions")
    symbols = covering_symbols(args.partitions)
    resolve_jars()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        cluster = LocalKafkaCluster(work / "kafka", args.brokers, heap="384m").start()
        cluster_start_s = time.perf_counter() - started
        try:
            runs = [
                run_instances(cluster, k, args.ticks, args.partitions, symbols, work, args.exactly_once)
                for k in counts
            ]
        finally:
            cluster.stop()
    single = next((r for r in runs if r["instances"] == 1), runs[0])
    per_instance = single["per_instance_ticks_per_s"]
    for run in runs:
        run["speed_up_vs_1"] = round(run["scorer_ticks_per_s"] / single["scorer_ticks_per_s"], 2)
    replication, min_isr = replication_for(args.brokers)
    print(
        json.dumps(
            {
                "cluster": {
                    "brokers": args.brokers,
                    "replication_factor": replication,
                    "min_insync_replicas": min_isr,
                    "start_s": round(cluster_start_s, 1),
                },
                "partitions": args.partitions,
                "symbols": len(symbols),
                "delivery": "exactly-once" if args.exactly_once else "at-least-once",
                "cpus": os.cpu_count(),
                "load_average": {
                    "before": [round(x, 1) for x in load_before],
                    "after": [round(x, 1) for x in os.getloadavg()],
                },
                "runs": runs,
                "capacity": {
                    "per_instance_ticks_per_s": per_instance,
                    "target_utilisation": TARGET_UTILISATION,
                    "table": capacity_table(per_instance),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
