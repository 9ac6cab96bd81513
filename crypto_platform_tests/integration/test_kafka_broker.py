"""The local Kafka broker (`crypto-platform kafka-local`) and topic setup, against the real broker."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from crypto_platform.devtools.kafka.runner import broker_count
from crypto_platform.lib.stream.ticks import Tick, encode_tick, parse_tick, tick_key
from serving.stream.config import Topics, ensure_topics

pytestmark = pytest.mark.integration

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT")


async def _consume(
    servers: str,
    topic: str,
    count: int,
    *,
    isolation_level: str = "read_uncommitted",
    timeout_s: float = 20.0,
) -> list:
    """The first `count` records of `topic` from the beginning (no consumer group), in arrival order."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for part_records in batch.values():
                    records.extend(part_records)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


async def _produce_ticks(servers: str, topic: str, ticks: list[Tick]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=servers, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, encode_tick(t), key=tick_key(t.symbol)) for t in ticks]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _ticks(n_per_symbol: int, start_ms: int = 1_748_736_000_000) -> list[Tick]:
    # Interleaved across symbols; the price encodes the per-symbol sequence number.
    return [
        Tick(symbol, 100.0 + i, 0.5, start_ms + i * 1000 + j, "simulated")
        for i in range(n_per_symbol)
        for j, symbol in enumerate(SYMBOLS)
    ]


def test_broker_serves_metadata(kafka_broker):
    host, port = kafka_broker.bootstrap_servers.split(":")
    assert host == "127.0.0.1" and int(port) == kafka_broker.port
    assert broker_count(host, kafka_broker.port) == 1
    assert kafka_broker.last_start_s is not None


def test_ensure_topics_is_idempotent(kafka_running, kafka_topics: Topics):
    from aiokafka.admin import AIOKafkaAdminClient

    async def scenario() -> list[dict]:
        # Again, and twice at once (two processes starting together): no error, nothing changes.
        await ensure_topics(kafka_running.bootstrap_servers, kafka_topics, 3)
        extra = Topics(**{**kafka_topics.__dict__, "dlq": kafka_topics.dlq + "-second"})
        await asyncio.gather(
            ensure_topics(kafka_running.bootstrap_servers, extra, 3),
            ensure_topics(kafka_running.bootstrap_servers, extra, 3),
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_running.bootstrap_servers)
        await admin.start()
        try:
            return await admin.describe_topics([*kafka_topics.all(), extra.dlq])
        finally:
            await admin.close()

    described = asyncio.run(scenario())
    assert sorted(t["topic"] for t in described) == sorted(
        [*kafka_topics.all(), kafka_topics.dlq + "-second"]
    )
    for topic in described:
        assert topic["error_code"] == 0
        assert len(topic["partitions"]) == 3
        assert all(p["leader"] >= 0 for p in topic["partitions"])


def test_keyed_round_trip_keeps_each_symbol_ordered_on_one_partition(kafka_running, kafka_topics: Topics):
    ticks = _ticks(50)
    asyncio.run(_produce_ticks(kafka_running.bootstrap_servers, kafka_topics.prices, ticks))
    records = asyncio.run(_consume(kafka_running.bootstrap_servers, kafka_topics.prices, len(ticks)))

    assert len(records) == len(ticks)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    by_partition: dict[int, list] = defaultdict(list)
    for record in records:
        partitions[record.key].add(record.partition)
        by_partition[record.partition].append(record)
    assert set(partitions) == {tick_key(s) for s in SYMBOLS}
    assert all(len(p) == 1 for p in partitions.values()), dict(partitions)
    # With 4 keys on 3 partitions, at least two partitions carry data: keys are really spread.
    assert len(by_partition) >= 2

    for partition_records in by_partition.values():
        offsets = [r.offset for r in partition_records]
        assert offsets == sorted(offsets)
    for symbol in SYMBOLS:
        got = [parse_tick(r.value, SYMBOLS, now_ms=2**62).price for r in records if r.key == tick_key(symbol)]
        assert got == [100.0 + i for i in range(50)]


def test_transactions_work_on_one_node(kafka_running, kafka_topics: Topics):
    """The scorer's --exactly-once mode needs the transaction coordinator (replication 1, min ISR 1)."""
    from aiokafka import AIOKafkaProducer

    servers = kafka_running.bootstrap_servers

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=servers, transactional_id=f"{kafka_topics.prices}-txn")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(kafka_topics.predictions, b"committed", key=b"k")
            await producer.begin_transaction()
            await producer.send(kafka_topics.predictions, b"aborted", key=b"k")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send(kafka_topics.predictions, b"committed-2", key=b"k")
        finally:
            await producer.stop()

    asyncio.run(scenario())
    committed = asyncio.run(
        _consume(servers, kafka_topics.predictions, 3, isolation_level="read_committed", timeout_s=5)
    )
    assert [r.value for r in committed] == [b"committed", b"committed-2"]
    everything = asyncio.run(_consume(servers, kafka_topics.predictions, 3, timeout_s=5))
    assert sorted(r.value for r in everything) == [b"aborted", b"committed", b"committed-2"]


def test_stop_and_start_keep_port_and_data(kafka_running, kafka_topics: Topics):
    servers = kafka_running.bootstrap_servers
    ticks = _ticks(5)
    asyncio.run(_produce_ticks(servers, kafka_topics.prices, ticks))

    kafka_running.stop()
    assert not kafka_running.running
    with pytest.raises(OSError):
        broker_count("127.0.0.1", kafka_running.port, timeout_s=1)
    kafka_running.start()

    assert kafka_running.bootstrap_servers == servers
    records = asyncio.run(_consume(servers, kafka_topics.prices, len(ticks)))
    assert sorted(r.value for r in records) == sorted(encode_tick(t) for t in ticks)
    # And it accepts writes again.
    asyncio.run(_produce_ticks(servers, kafka_topics.prices, ticks[:1]))
    assert len(asyncio.run(_consume(servers, kafka_topics.prices, len(ticks) + 1))) == len(ticks) + 1
