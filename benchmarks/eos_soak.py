"""Soak of the exactly-once scorer under SIGKILL: lost and duplicated inputs per run (read_committed).

Each run is the SIGKILL scenario of `test_scorer_process.py` on fresh topics and a fresh group: ticks are
produced in the background at a fixed rate while `crypto-platform score --exactly-once` is started,
SIGKILLed at a random moment after its first output, started again (`--kills` times); then it runs until
the group's committed offsets reach the input's end and is stopped with SIGTERM. A `read_committed` reader
then reads every prediction, and each input position (partition, offset) is counted:

- lost: an input without a committed prediction (the offsets moved past it, its output did not commit);
- duplicated: an input with more than one committed prediction.

For a lost input the run also tells whether its prediction exists in the log at all (read_uncommitted:
written in a transaction that was aborted) and the lost offset ranges, the clue to which batch it was.

Prints one JSON object per run as it finishes, then a summary (runs, kills, lost, duplicates, wall time):

    .venv/bin/python benchmarks/eos_soak.py [--runs 20] [--ticks 5000] [--rate 200] [--kills 3]
        [--batch-size 200] [--seed 1] [--bootstrap HOST:PORT] [--logs DIR]

Without `--bootstrap` a local broker (`LocalKafka`, as the tests use) is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crypto_platform.devtools.kafka.runner import LocalKafka  # noqa: E402
from crypto_platform.devtools.ports import free_port  # noqa: E402
from crypto_platform_tests.fixtures.kafka import KAFKA_TEST_PARTITIONS, unique_topics  # noqa: E402
from crypto_platform_tests.integration.scorer_support import (  # noqa: E402
    ScorerProcess,
    end_and_committed,
    now_ms,
    produce_ticks,
    read_topic,
    scorer_env,
    ticks_for,
)
from serving.stream.config import Topics, ensure_topics  # noqa: E402

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


def total_end(bootstrap: str, topic: str) -> int:
    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(KAFKA_TEST_PARTITIONS)]
            return sum((await consumer.end_offsets(partitions)).values())
        finally:
            await consumer.stop()

    return asyncio.run(run())


def wait_for(predicate, timeout_s: float, what: str, proc: ScorerProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}\n{proc.log_tail()}")


def metrics_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def ranges(positions: set[tuple[int, int]]) -> list[str]:
    """(partition, offset) pairs as "p:first-last" runs of consecutive offsets."""
    out: list[str] = []
    for partition in sorted({p for p, _ in positions}):
        offsets = sorted(o for p, o in positions if p == partition)
        start = prev = offsets[0]
        for offset in [*offsets[1:], None]:
            if offset is not None and offset == prev + 1:
                prev = offset
                continue
            out.append(f"{partition}:{start}-{prev}")
            if offset is not None:
                start = prev = offset
    return out


def one_run(bootstrap: str, run: int, args: argparse.Namespace, logs: Path) -> dict:
    started = time.monotonic()
    rng = random.Random(args.seed * 1000 + run)
    topics: Topics = unique_topics(f"eos-soak-{run}")
    asyncio.run(ensure_topics(bootstrap, topics, KAFKA_TEST_PARTITIONS))
    group = f"g-{topics.prices}"
    log_path = logs / f"run-{run:03d}-scorer.log"
    env = scorer_env(bootstrap, topics, {"CRYPTO_SYMBOLS": ",".join(SYMBOLS)})
    metrics_port = free_port()
    proc = ScorerProcess(
        env,
        [
            "--group-id", group, "--no-model", "--no-warm-start", "--batch-size", str(args.batch_size),
            "--metrics-port", str(metrics_port), "--exactly-once",
        ],
        log_path,
    )  # fmt: skip

    positions: list[tuple[int, int]] = []
    ticks = ticks_for(SYMBOLS, args.ticks, now_ms() - 60_000, step_ms=5)
    producer = threading.Thread(
        target=lambda: positions.extend(produce_ticks(bootstrap, topics.prices, ticks, rate_per_s=args.rate)),
        daemon=True,
    )
    producer.start()
    landed = 0
    try:
        for _ in range(args.kills):
            before = total_end(bootstrap, topics.predictions)
            proc.start()
            wait_for(
                lambda b=before: total_end(bootstrap, topics.predictions) > b or not producer.is_alive(),
                90,
                "the scorer to produce",
                proc,
            )
            landed += producer.is_alive()
            time.sleep(rng.uniform(0.0, 1.0))
            proc.kill()
        producer.join(120)
        proc.start()

        def drained() -> bool:
            ends, committed = end_and_committed(bootstrap, topics.prices, group)
            return all(committed.get(p) == end for p, end in ends.items())

        wait_for(drained, 120, "the committed offsets to reach the end of the input", proc)
        # Its metrics answer once the scorer runs its loop's signal handlers: a SIGTERM before that would
        # only measure the start-up (exit by signal), not the drain.
        wait_for(lambda: metrics_answer(metrics_port), 60, "the scorer's metrics endpoint", proc)
        exit_code = proc.terminate()
    finally:
        proc.kill()

    committed_out = read_topic(bootstrap, topics.predictions, isolation_level="read_committed", timeout_s=60)
    seen = Counter((body["source"]["partition"], body["source"]["offset"]) for body in _bodies(committed_out))
    lost = set(positions) - set(seen)
    duplicates = {k: n for k, n in seen.items() if n > 1}
    result: dict = {
        "run": run,
        "inputs": len(positions),
        "kills": args.kills,
        "kills_while_producing": landed,
        "predictions_read_committed": len(committed_out),
        "lost": len(lost),
        "duplicated": len(duplicates),
        "sigterm_exit": exit_code,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if lost:
        everything = read_topic(bootstrap, topics.predictions, timeout_s=60)
        written = {(b["source"]["partition"], b["source"]["offset"]) for b in _bodies(everything)}
        result["lost_ranges"] = ranges(lost)[:20]
        result["lost_written_but_not_committed"] = len(lost & written)
        result["log"] = str(log_path)
    if duplicates:
        result["duplicated_ranges"] = ranges(set(duplicates))[:20]
        result["log"] = str(log_path)
    return result


def _bodies(records: list) -> list[dict]:
    return [json.loads(r.value) for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=5000, help="inputs per run")
    parser.add_argument("--rate", type=float, default=200.0, help="inputs produced per second")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per run")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--logs", type=Path, help="where the scorer logs go (default: a temporary directory)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="eos-soak-") as tmp:
        logs = args.logs or Path(tmp) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        broker = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            broker = LocalKafka(Path(tmp) / "kafka", log_path=Path(tmp) / "broker.log").start()
            bootstrap = broker.bootstrap_servers
        started = time.monotonic()
        results = []
        try:
            for run in range(1, args.runs + 1):
                result = one_run(bootstrap, run, args, logs)
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            if broker is not None:
                broker.stop()
        summary = {
            "summary": True,
            "runs": len(results),
            "kills": sum(r["kills"] for r in results),
            "kills_while_producing": sum(r["kills_while_producing"] for r in results),
            "inputs": sum(r["inputs"] for r in results),
            "lost": sum(r["lost"] for r in results),
            "duplicated": sum(r["duplicated"] for r in results),
            "runs_with_loss": sum(1 for r in results if r["lost"]),
            "runs_with_duplicates": sum(1 for r in results if r["duplicated"]),
            "wall_s": round(time.monotonic() - started, 1),
            "goal_zero_lost_zero_duplicated": all(not r["lost"] and not r["duplicated"] for r in results),
        }
        print(json.dumps(summary), flush=True)
        return 0 if summary["goal_zero_lost_zero_duplicated"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
