"""`crypto-platform score` as a process on a real broker: SIGKILL at random points (0 lost; 0 duplicates
for read_committed readers with --exactly-once), a broker restart mid-stream, SIGTERM drains and commits."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from crypto_platform.devtools.ports import free_port
from crypto_platform_tests.integration.scorer_support import (
    ScorerProcess,
    end_and_committed,
    now_ms,
    produce_ticks,
    read_topic,
    scorer_env,
    ticks_for,
    values,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


def scorer(kafka_broker, topics, tmp_path: Path, *extra: str) -> ScorerProcess:
    env = scorer_env(kafka_broker.bootstrap_servers, topics, {"CRYPTO_SYMBOLS": ",".join(SYMBOLS)})
    args = ["--group-id", f"g-{topics.prices}", "--no-model", "--no-warm-start", "--batch-size", "200"]
    port = free_port()
    args += ["--metrics-port", str(port), *extra]
    proc = ScorerProcess(env, args, tmp_path / "scorer.log")
    proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
    return proc


def total_end(bootstrap: str, topic: str) -> int:
    async def run() -> int:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            return sum((await consumer.end_offsets(partitions)).values()) if partitions else 0
        finally:
            await consumer.stop()

    return asyncio.run(run())


def wait_for(predicate, timeout_s: float, what: str, proc: ScorerProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{proc.log_tail() if proc else ''}")


def background_producer(bootstrap: str, topic: str, n: int, rate: float) -> tuple[threading.Thread, list]:
    positions: list = []
    ticks = ticks_for(SYMBOLS, n, now_ms() - 60_000, step_ms=5)

    def run() -> None:
        positions.extend(produce_ticks(bootstrap, topic, ticks, rate_per_s=rate))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, positions


def kill_at_random_points(
    kafka_broker, topics, proc: ScorerProcess, kills: int, rng: random.Random, producer: threading.Thread
) -> int:
    """Start the scorer, wait until it is producing, SIGKILL it after a random delay; `kills` times.
    Returns how many kills landed while the scorer was producing."""
    landed = 0
    for _ in range(kills):
        before = total_end(kafka_broker.bootstrap_servers, topics.predictions)
        proc.start()
        wait_for(
            lambda b=before: (
                total_end(kafka_broker.bootstrap_servers, topics.predictions) > b or not producer.is_alive()
            ),
            60,
            "the scorer to produce",
            proc,
        )
        landed += producer.is_alive()
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
    return landed


def finish(kafka_broker, topics, proc: ScorerProcess, positions: list, start: bool = True) -> None:
    """Run the scorer until every input has a prediction, then SIGTERM: exit 0, offsets committed."""
    if start:
        proc.start()
    expected = len(positions)
    wait_for(
        lambda: len(read_topic(kafka_broker.bootstrap_servers, topics.predictions, timeout_s=10)) >= expected,
        90,
        "predictions for every input",
        proc,
    )
    assert proc.terminate() == 0, proc.log_tail()
    ends, committed = end_and_committed(kafka_broker.bootstrap_servers, topics.prices, f"g-{topics.prices}")
    assert committed == ends  # SIGTERM drained and committed everything


def test_sigkill_at_random_points_loses_nothing(kafka_broker, kafka_topics, tmp_path):
    rng = random.Random(5)
    producer, positions = background_producer(kafka_broker.bootstrap_servers, kafka_topics.prices, 5000, 200)
    proc = scorer(kafka_broker, kafka_topics, tmp_path)
    try:
        assert kill_at_random_points(kafka_broker, kafka_topics, proc, 3, rng, producer) >= 2
        producer.join(60)
        finish(kafka_broker, kafka_topics, proc, positions)
    finally:
        proc.kill()
    seen = Counter(
        (b["source"]["partition"], b["source"]["offset"])
        for b in values(read_topic(kafka_broker.bootstrap_servers, kafka_topics.predictions))
    )
    missing = set(positions) - set(seen)
    assert not missing, f"{len(missing)} inputs without a prediction"


def test_exactly_once_sigkill_gives_read_committed_readers_each_prediction_once(
    kafka_broker, kafka_topics, tmp_path
):
    rng = random.Random(11)
    producer, positions = background_producer(kafka_broker.bootstrap_servers, kafka_topics.prices, 5000, 200)
    proc = scorer(kafka_broker, kafka_topics, tmp_path, "--exactly-once")
    try:
        assert kill_at_random_points(kafka_broker, kafka_topics, proc, 3, rng, producer) >= 2
        producer.join(60)
        finish(kafka_broker, kafka_topics, proc, positions)
    finally:
        proc.kill()
    committed = read_topic(
        kafka_broker.bootstrap_servers, kafka_topics.predictions, isolation_level="read_committed"
    )
    seen = Counter((b["source"]["partition"], b["source"]["offset"]) for b in values(committed))
    lost = set(positions) - set(seen)
    if lost:  # tell a lost output (never committed) from a reader problem (committed, not read)
        everything = read_topic(kafka_broker.bootstrap_servers, kafka_topics.predictions)
        found = [
            (r.partition, r.offset)
            for r in everything
            if tuple(json.loads(r.value)["source"].values())[1:] in lost
        ]
        raise AssertionError(
            f"{len(lost)} lost: {sorted(lost)[:3]}; in read_uncommitted at {found[:5]} "
            f"of {len(everything)}\n{proc.log_tail(20000)}"
        )
    duplicates = {k: n for k, n in seen.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} inputs predicted more than once"
    # The kills did leave aborted output behind, which only read_uncommitted readers see.
    everything = read_topic(kafka_broker.bootstrap_servers, kafka_topics.predictions)
    assert len(everything) >= len(committed)


def test_broker_restart_mid_stream_recovers_without_manual_action(kafka_broker, kafka_topics, tmp_path):
    bootstrap = kafka_broker.bootstrap_servers
    proc = scorer(kafka_broker, kafka_topics, tmp_path)
    try:
        proc.start()
        first = produce_ticks(bootstrap, kafka_topics.prices, ticks_for(SYMBOLS, 600, now_ms() - 60_000), 400)
        wait_for(
            lambda: total_end(bootstrap, kafka_topics.predictions) > 0, 60, "the first predictions", proc
        )
        kafka_broker.restart()  # controlled shutdown and start on the same port and data directory
        second = produce_ticks(
            bootstrap, kafka_topics.prices, ticks_for(SYMBOLS, 600, now_ms() - 30_000), 400
        )
        assert proc.proc.poll() is None, proc.log_tail()  # the scorer rode it out
        wait_for(lambda: total_end(bootstrap, kafka_topics.predictions) >= 1200, 60, "all predictions", proc)
        text = urllib.request.urlopen(proc.metrics_url, timeout=5).read().decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        # At-least-once may re-read a batch after the restart: counts are at least the inputs.
        assert samples[("crypto_scorer_consumed_total", ())] >= 1200
        assert samples[("crypto_scorer_produced_total", (("topic", kafka_topics.predictions),))] >= 1200
        assert samples[("crypto_scorer_model_loaded", ())] == 0
        assert samples[("crypto_scorer_batch_seconds_count", ())] > 0
        assert {("partition", str(p)) for p in range(3)} <= {
            labels[0] for (name, labels) in samples if name == "crypto_scorer_consumer_lag"
        }
        finish(kafka_broker, kafka_topics, proc, first + second, start=False)
    finally:
        proc.kill()
        if not kafka_broker.running:
            kafka_broker.start()
    seen = {
        (b["source"]["partition"], b["source"]["offset"])
        for b in values(read_topic(bootstrap, kafka_topics.predictions))
    }
    assert set(first + second) <= seen


def test_sigterm_mid_stream_commits_exactly_what_was_produced(kafka_broker, kafka_topics, tmp_path):
    bootstrap = kafka_broker.bootstrap_servers
    proc = scorer(kafka_broker, kafka_topics, tmp_path)
    producer, _ = background_producer(bootstrap, kafka_topics.prices, 4000, 2000)
    try:
        proc.start()
        wait_for(
            lambda: total_end(bootstrap, kafka_topics.predictions) > 0, 60, "the first predictions", proc
        )
        assert proc.terminate() == 0, proc.log_tail()
    finally:
        proc.kill()
        producer.join(60)
    _, committed = end_and_committed(bootstrap, kafka_topics.prices, f"g-{kafka_topics.prices}")
    predicted: dict[int, set[int]] = {}
    for body in values(read_topic(bootstrap, kafka_topics.predictions)):
        predicted.setdefault(body["source"]["partition"], set()).add(body["source"]["offset"])
    for partition, offsets in predicted.items():
        # Drained: every offset below the committed one has its prediction, and nothing was predicted
        # beyond it (the batch in flight finished and was committed before the exit).
        assert committed[partition] == max(offsets) + 1
        assert offsets == set(range(committed[partition]))
