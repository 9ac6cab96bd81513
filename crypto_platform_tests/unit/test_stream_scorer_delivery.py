"""The scorer's delivery loop with a fake broker: a dead letter the broker refuses never blocks the batch.

The fake producer refuses every record batch to the dead-letter topic (too large: not retriable, or a
retriable error that never clears); predictions are acknowledged. The batch must commit its offsets,
with the refused dead letter logged and counted in `crypto_scorer_dlq_unwritable_total`.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import MessageSizeTooLargeError, NotLeaderForPartitionError

import serving.stream.scorer as scorer_module
from crypto_platform.settings import Settings
from serving.stream.config import Topics
from serving.stream.scorer import DLQ_MAX_ATTEMPTS, Scorer, ScorerConfig
from serving.stream.scorer_state import BatchWork, OutMessage

TOPICS = Topics("prices", "preds", "alerts", "prices.dlq")


class FakeBatch:
    """aiokafka's `BatchBuilder` as the scorer uses it: append, then close before it is sent."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.closed = False

    def append(self, *, key, value, timestamp, headers):
        if self.closed:
            return None
        self.records.append(value)
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    def __init__(self, dlq_error: type[Exception]) -> None:
        self.dlq_error = dlq_error
        self.acknowledged: list[tuple[str, bytes]] = []
        self.dlq_attempts = 0
        self.open_batches_sent = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.open_batches_sent += not batch.closed
        if topic == TOPICS.dlq:
            self.dlq_attempts += 1
            future.set_exception(self.dlq_error())
        else:
            self.acknowledged += [(topic, value) for value in batch.records]
            future.set_result(None)
        return future


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def assignment(self) -> set:
        return {scorer_module.TopicPartition("prices", 0)}

    async def commit(self, offsets: dict) -> None:
        self.commits.append(offsets)


class FakeBrokerScorer(Scorer):
    def __init__(self, producer: FakeProducer, tmp_path) -> None:
        settings = Settings(
            symbols=("BTC/USDT",), data_location=str(tmp_path), market_source="simulated",
            mlflow_tracking_uri="sqlite:///unused.db",
        )  # fmt: skip
        super().__init__(ScorerConfig(bootstrap_servers="unused:9092", topics=TOPICS, settings=settings))
        self.fake = producer
        self.producer = producer
        self.consumer = FakeConsumer()

    def _new_producer(self):  # a recovered producer is the same fake broker connection
        return self.fake


@pytest.mark.parametrize(
    ("error", "attempts"), [(MessageSizeTooLargeError, 1), (NotLeaderForPartitionError, DLQ_MAX_ATTEMPTS)]
)
def test_a_dead_letter_the_broker_refuses_is_counted_and_the_batch_commits(
    error, attempts, tmp_path, monkeypatch
):
    monkeypatch.setattr(scorer_module, "RETRY_BACKOFF_S", (0.0,))
    producer = FakeProducer(error)
    scorer = FakeBrokerScorer(producer, tmp_path)
    dead = OutMessage(TOPICS.dlq, b"k", b"x" * 100, (("reason", b"too_large: 1 bytes"),))
    prediction = OutMessage(TOPICS.predictions, b"BTC/USDT", b'{"price":1}')
    work = BatchWork(offsets={("prices", 0): 7})

    async def deliver() -> None:
        await asyncio.wait_for(scorer._deliver([dead, prediction], work), timeout=30)

    asyncio.run(deliver())
    assert producer.dlq_attempts == attempts  # refused for good at once, or after bounded retries
    assert producer.acknowledged == [(TOPICS.predictions, b'{"price":1}')]  # acknowledged once, not resent
    assert scorer.consumer.commits == [{scorer_module.TopicPartition("prices", 0): 7}]
    assert scorer.metrics.registry.get_sample_value("crypto_scorer_dlq_unwritable_total") == 1


def test_every_batch_is_closed_before_it_is_sent(tmp_path):
    # An open batch waits out the producer's linger for `send()` calls that never come: latency per batch.
    producer = FakeProducer(MessageSizeTooLargeError)
    scorer = FakeBrokerScorer(producer, tmp_path)
    predictions = [OutMessage(TOPICS.predictions, b"BTC/USDT", b'{"n":%d}' % i) for i in range(3)]
    failed = asyncio.run(scorer._send_all(predictions))
    assert failed == []
    assert producer.acknowledged == [(TOPICS.predictions, m.value) for m in predictions]
    assert producer.open_batches_sent == 0


def test_at_least_once_commits_acknowledged_offsets_at_most_every_interval_and_all_on_demand(tmp_path):
    """Batches within `commit_interval_ms` of the last commit add their offsets up; the next due commit
    (or a forced one: idle stream, revocation, stop) carries the newest acknowledged offset of each
    partition. Nothing is committed before its outputs are acknowledged."""
    producer = FakeProducer(MessageSizeTooLargeError)
    scorer = FakeBrokerScorer(producer, tmp_path)
    scorer.config.commit_interval_ms = 60_000  # nothing falls due again within the test
    tp = scorer_module.TopicPartition("prices", 0)

    def batch(n: int) -> tuple[list[OutMessage], BatchWork]:
        return [OutMessage(TOPICS.predictions, b"BTC/USDT", b'{"n":%d}' % n)], BatchWork(
            offsets={("prices", 0): n}
        )

    async def run() -> None:
        for n in (1, 2, 3):
            await scorer._deliver(*batch(n))
        assert scorer.consumer.commits == [{tp: 1}]  # the first is due at once, the next two wait
        assert len(producer.acknowledged) == 3  # ... though their outputs are all acknowledged
        await scorer.delivered()  # what the rebalance listener awaits: every acknowledged offset commits
        assert scorer.consumer.commits == [{tp: 1}, {tp: 3}]
        await scorer._deliver(*batch(4))
        await scorer._deliver([], scorer_module._NO_WORK, force_commit=True)  # an idle poll / stop
        assert scorer.consumer.commits == [{tp: 1}, {tp: 3}, {tp: 4}]
        await scorer._deliver([], scorer_module._NO_WORK, force_commit=True)  # nothing new: no request
        assert len(scorer.consumer.commits) == 3

    asyncio.run(run())
