"""Faults on a 3-broker cluster (replication 3, min ISR 2), with the real `crypto-platform produce` and
`crypto-platform score` processes:

- a broker SIGKILLed mid-stream: the producer (idempotent, acks=all) and the scorer ride it out, and every
  produced tick has its prediction;
- three scorer instances in one group, one SIGKILLed: its partitions move to the other two, every input
  has a prediction, and with `--exactly-once` a read_committed reader sees each exactly once;
- an instance added to a running group: the partitions are spread over three, nothing lost or doubled.

Timing the tests wait for (the reason for their timeouts):
- the scorers are static members (`group.instance.id`) with aiokafka's 10 s session timeout: a SIGKILLed
  instance keeps its partitions for up to 10 s, then the group rebalances (heartbeats every 3 s);
- the KRaft controller fences a SIGKILLed broker after `broker.session.timeout.ms` (9 s) and moves the
  leadership of its partitions; clients retry meanwhile;
- a transaction the SIGKILLed instance left open blocks read_committed readers of its output partitions
  until the coordinator aborts it, after aiokafka's 60 s `transaction_timeout_ms` (checked every 10 s).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError

from crypto_platform.devtools.kafka.cluster_state import group_state, partition_replicas, topic_configs
from crypto_platform_tests.fixtures.kafka import KAFKA_TEST_PARTITIONS
from crypto_platform_tests.integration.scorer_support import (
    REPO_ROOT,
    ScorerProcess,
    end_and_committed,
    read_topic,
    scorer_env,
    values,
)
from serving.stream.config import Topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One symbol per partition of a 3-partition topic (murmur2 of the key): every partition carries ticks,
# so every scorer instance has work.
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
PARTITIONS = set(range(KAFKA_TEST_PARTITIONS))
SESSION_TIMEOUT_S = 10  # aiokafka's default session_timeout_ms, which the scorer keeps
TRANSACTION_TIMEOUT_S = 60  # aiokafka's default transaction_timeout_ms, which the scorer keeps


def client_id(instance: str) -> str:
    return f"crypto-scorer-{instance}"  # the scorer's client id: its prefix and its instance id


def scorer(cluster, topics: Topics, tmp_path: Path, group: str, instance: str, *extra: str) -> ScorerProcess:
    env = scorer_env(
        cluster.bootstrap_servers,
        topics,
        {"CRYPTO_SYMBOLS": ",".join(SYMBOLS), "CRYPTO_SCORER_INSTANCE": instance},
    )
    args = ["--group-id", group, "--no-model", "--no-warm-start", "--batch-size", "200"]
    return ScorerProcess(env, [*args, "--metrics-port", "0", *extra], tmp_path / f"scorer-{instance}.log")


class Producer:
    """`crypto-platform produce --source simulated` paced at `rate`, `count` ticks, as a child process."""

    def __init__(self, cluster, topics: Topics, tmp_path: Path, count: int, rate: float) -> None:
        self.count = count
        self.log_path = tmp_path / "produce.log"
        env = scorer_env(cluster.bootstrap_servers, topics, {"CRYPTO_SYMBOLS": ",".join(SYMBOLS)})
        command = ["produce", "--source", "simulated", "--rate", str(rate), "--count", str(count)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crypto_platform.cli", *command],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout_s: float = 180.0) -> str:
        """Wait for the exit; assert it acknowledged every tick. Returns its summary line."""
        code = self.proc.wait(timeout_s)
        output = self.log_path.read_text(errors="replace")
        summary = next((line for line in output.splitlines() if line.startswith("produce: sent=")), "")
        assert code == 0, output[-3000:]
        assert re.search(rf"sent={self.count} errors=0 ", summary), output[-3000:]
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(predicate, timeout_s: float, what: str, *procs: ScorerProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.log_path.name}\n{p.log_tail(2000)}" for p in procs)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")


def owners(cluster, group: str, topic: str) -> dict[int, str]:
    """partition → owning client id, once the group is Stable (empty while it rebalances)."""
    try:
        state = asyncio.run(group_state(cluster.bootstrap_servers, group))
    except KafkaError:  # the coordinator moving (a broker down) or still loading
        return {}
    return state.owners(topic) if state.state == "Stable" else {}


def wait_for_owners(cluster, group: str, topic: str, instances: set[str], timeout_s: float, *procs) -> None:
    """Until every partition is owned, by exactly the clients of `instances`."""
    expected = {client_id(i) for i in instances}

    def settled() -> bool:
        current = owners(cluster, group, topic)
        return set(current) == PARTITIONS and set(current.values()) == expected

    wait_for(settled, timeout_s, f"partitions owned by {sorted(expected)}", *procs)


def inputs(cluster, topics: Topics) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in read_topic(cluster.bootstrap_servers, topics.prices)}


def predicted(cluster, topics: Topics, isolation_level: str = "read_uncommitted") -> Counter:
    """(input partition, input offset) → predictions of it a reader at `isolation_level` sees."""
    records = read_topic(cluster.bootstrap_servers, topics.predictions, isolation_level=isolation_level)
    return Counter((body["source"]["partition"], body["source"]["offset"]) for body in values(records))


def wait_for_every_prediction(
    cluster, topics: Topics, expected: set, timeout_s: float, isolation_level: str, *procs
) -> Counter:
    seen: Counter = Counter()

    def covered() -> bool:
        nonlocal seen
        seen = predicted(cluster, topics, isolation_level)
        return expected <= set(seen)

    try:
        wait_for(covered, timeout_s, "a prediction for every input", *procs)
    except AssertionError as exc:
        missing = expected - set(seen)
        raise AssertionError(f"{len(missing)} of {len(expected)} inputs unpredicted; {exc}") from None
    return seen


def stop_all(procs: list[ScorerProcess]) -> None:
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            assert proc.terminate() == 0, proc.log_tail()


def test_cluster_replicates_platform_and_internal_topics(cluster_running, cluster_topics):
    bootstrap = cluster_running.bootstrap_servers
    for topic in (*cluster_topics.all(), "__consumer_offsets", "__transaction_state"):
        replicas: list = []

        def replicated(topic: str = topic) -> bool:
            nonlocal replicas
            # A broker that has not yet applied the new topic's metadata record describes no partitions.
            replicas = asyncio.run(partition_replicas(bootstrap, topic))
            return len(replicas) >= KAFKA_TEST_PARTITIONS and all(len(r.isr) == 3 for r in replicas)

        wait_for(replicated, 30, f"{topic} fully replicated")
        assert all(len(r.replicas) == 3 for r in replicas), (topic, replicas)
    configs = asyncio.run(topic_configs(bootstrap, [*cluster_topics.all(), "__consumer_offsets"]))
    assert {name: c["min.insync.replicas"] for name, c in configs.items()} == dict.fromkeys(configs, "2")
    assert (
        asyncio.run(topic_configs(bootstrap, ["__transaction_state"]))["__transaction_state"][
            "min.insync.replicas"
        ]
        == "2"
    )


def test_broker_sigkill_mid_stream_loses_no_tick_and_no_prediction(cluster_running, cluster_topics, tmp_path):
    cluster, topics = cluster_running, cluster_topics
    proc = scorer(cluster, topics, tmp_path, f"g-{topics.prices}", "0")
    producer = None
    try:
        proc.start()
        wait_for_owners(cluster, f"g-{topics.prices}", topics.prices, {"0"}, 90, proc)
        producer = Producer(cluster, topics, tmp_path, count=6000, rate=300)
        wait_for(lambda: len(predicted(cluster, topics)) >= 300, 60, "the first predictions", proc)
        # The leader of a prices partition: the producer and the scorer's fetches both lose it.
        victim = asyncio.run(partition_replicas(cluster.bootstrap_servers, topics.prices))[0].leader
        predicted_before = len(predicted(cluster, topics))
        cluster.kill(victim)
        assert producer.running(), "the producer finished before the broker was killed"
        summary = producer.finish()
        expected = inputs(cluster, topics)
        assert len(expected) == producer.count  # every acknowledged tick is in the topic: none lost
        seen = wait_for_every_prediction(cluster, topics, expected, 120, "read_uncommitted", proc)
        assert proc.proc.poll() is None, proc.log_tail()  # the scorer rode it out
        replicas = asyncio.run(partition_replicas(cluster.bootstrap_servers, topics.prices))
        assert victim not in {r.leader for r in replicas}  # leadership did move off the dead broker
        duplicates = sum(n - 1 for n in seen.values())
        print(
            f"\nbroker {victim} SIGKILLed after {predicted_before} of {producer.count} predictions; "
            f"{summary}; lost inputs 0, inputs without a prediction 0, "
            f"duplicate predictions {duplicates} (at-least-once)"
        )
        stop_all([proc])
    finally:
        proc.kill()
        if producer is not None:
            producer.kill()


def test_scorer_instance_sigkill_moves_its_partitions_exactly_once(cluster_running, cluster_topics, tmp_path):
    cluster, topics = cluster_running, cluster_topics
    group = f"g-{topics.prices}"
    procs = {i: scorer(cluster, topics, tmp_path, group, i, "--exactly-once") for i in ("0", "1", "2")}
    producer = None
    try:
        for proc in procs.values():
            proc.start()
        wait_for_owners(cluster, group, topics.prices, set(procs), 120, *procs.values())
        producer = Producer(cluster, topics, tmp_path, count=9000, rate=300)
        victim_partition = 0
        victim = owners(cluster, group, topics.prices)[victim_partition].removeprefix("crypto-scorer-")
        wait_for(
            lambda: any(p == victim_partition for p, _ in predicted(cluster, topics)),
            60,
            f"instance {victim}'s first committed predictions",
            procs[victim],
        )
        time.sleep(1.0)  # mid-stream: its transactions keep opening and committing
        procs[victim].kill()
        killed = time.monotonic()
        survivors = set(procs) - {victim}
        # Static membership: the partition stays with the dead member until its session times out.
        wait_for_owners(cluster, group, topics.prices, survivors, SESSION_TIMEOUT_S + 60, *procs.values())
        moved_s = time.monotonic() - killed
        assert producer.running(), "the producer finished before the partitions moved"
        summary = producer.finish()
        expected = inputs(cluster, topics)
        assert len(expected) == producer.count
        seen = wait_for_every_prediction(
            cluster, topics, expected, TRANSACTION_TIMEOUT_S + 90, "read_committed", *procs.values()
        )
        duplicates = {k: n for k, n in seen.items() if n > 1}
        assert not duplicates, f"{len(duplicates)} inputs predicted more than once for read_committed"
        uncommitted = predicted(cluster, topics)
        aborted = sum(uncommitted.values()) - sum(seen.values())
        stop_all([procs[i] for i in sorted(survivors)])
        ends, committed = end_and_committed(cluster.bootstrap_servers, topics.prices, group)
        assert committed == ends  # the survivors committed the dead instance's partition to its end
        print(
            f"\ninstance {victim} (partition {victim_partition}) SIGKILLed; partitions moved after "
            f"{moved_s:.1f}s; {summary}; inputs without a prediction 0, read_committed duplicates 0, "
            f"aborted predictions visible only to read_uncommitted {aborted}"
        )
    finally:
        for proc in procs.values():
            proc.kill()
        if producer is not None:
            producer.kill()


def test_added_instance_takes_partitions_without_loss_or_duplicates(
    cluster_running, cluster_topics, tmp_path
):
    cluster, topics = cluster_running, cluster_topics
    group = f"g-{topics.prices}"
    procs = {i: scorer(cluster, topics, tmp_path, group, i, "--exactly-once") for i in ("0", "1", "2")}
    producer = None
    try:
        procs["0"].start()
        procs["1"].start()
        wait_for_owners(cluster, group, topics.prices, {"0", "1"}, 120, *procs.values())
        producer = Producer(cluster, topics, tmp_path, count=6000, rate=300)
        wait_for(lambda: len(predicted(cluster, topics)) >= 300, 60, "the first predictions", *procs.values())
        before = owners(cluster, group, topics.prices)
        added = time.monotonic()
        procs["2"].start()
        wait_for_owners(cluster, group, topics.prices, set(procs), 120, *procs.values())
        rebalanced_s = time.monotonic() - added
        after = owners(cluster, group, topics.prices)
        assert producer.running(), "the producer finished before the rebalance"
        summary = producer.finish()
        expected = inputs(cluster, topics)
        assert len(expected) == producer.count
        seen = wait_for_every_prediction(cluster, topics, expected, 120, "read_committed", *procs.values())
        duplicates = {k: n for k, n in seen.items() if n > 1}
        assert not duplicates, f"{len(duplicates)} inputs predicted more than once for read_committed"
        stop_all(list(procs.values()))
        ends, committed = end_and_committed(cluster.bootstrap_servers, topics.prices, group)
        assert committed == ends
        print(
            f"\nowners {before} → {after} {rebalanced_s:.1f}s after instance 2 started; {summary}; "
            "inputs without a prediction 0, read_committed duplicates 0"
        )
    finally:
        for proc in procs.values():
            proc.kill()
        if producer is not None:
            producer.kill()
