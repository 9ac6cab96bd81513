"""The scorer's ceiling on this client: consume → produce the same bytes → commit, nothing computed.

Run as its own process by `benchmarks/stream.py` (like the scorer is), so the two are measured under
the same conditions: the same broker, the same pre-produced messages, the consumer settings, batch
size, fetch settings and commit cadence of `ScorerConfig` and the producer settings of
`Scorer._new_producer` (idempotent, acks=all, the same linger and batch size), outputs packed into
closed record batches per partition with the default partitioner applied to the key (cached per key,
as the scorer does), every acknowledgement awaited before the offsets count as committable (committed
every `commit_interval_ms`, and when the poll comes back empty). The only thing missing is the
scoring: what the scorer costs beyond this loop is its own per-tick work.

`--value-bytes N` sends, instead of each input value, one constant value of N bytes (nothing computed
per message either): the loop with outputs the size of the scorer's predictions (~3× a tick), so the
client's cost of the larger outputs (the record batches built, the bytes written to the socket) is
told apart from the scorer's own work.

    python benchmarks/stream_passthrough.py --bootstrap-servers H:P --source T --dest T --group G
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

# The repository first: run as a script, this folder leads sys.path and its serving.py would shadow
# the `serving` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.stream.scorer import ScorerConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ScorerConfig)}
BATCH_SIZE: int = _DEFAULTS["batch_size"]
FETCH_TIMEOUT_MS: int = _DEFAULTS["fetch_timeout_ms"]
FETCH_MIN_BYTES: int = _DEFAULTS["fetch_min_bytes"]
FETCH_MAX_WAIT_MS: int = _DEFAULTS["fetch_max_wait_ms"]
COMMIT_INTERVAL_S: float = _DEFAULTS["commit_interval_ms"] / 1000


async def pass_through(
    bootstrap: str, source: str, dest: str, group: str, batch_size: int, value_bytes: int | None = None
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch_size,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )
    partitioner = DefaultPartitioner()
    constant = b"x" * value_bytes if value_bytes else None  # the one value sent for every input
    routes: dict[bytes | None, int] = {}  # key → partition, cached as the scorer does
    uncommitted: dict[TopicPartition, int] = {}  # acknowledged, not committed yet
    committed_at = float("-inf")
    await consumer.start()
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(dest))
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=batch_size)
            if not batch:
                if uncommitted:
                    await consumer.commit(uncommitted)
                    uncommitted = {}
                continue
            groups: dict[int, list] = {}
            offsets: dict[TopicPartition, int] = {}
            for tp, messages in batch.items():
                offsets[tp] = messages[-1].offset + 1
                for m in messages:
                    partition = routes.get(m.key)
                    if partition is None:
                        partition = routes[m.key] = partitioner(m.key, partitions, partitions)
                    groups.setdefault(partition, []).append(m)
            futures = []
            for partition, messages in groups.items():
                builder = producer.create_batch()
                for m in messages:
                    value = m.value if constant is None else constant
                    if builder.append(key=m.key, value=value, timestamp=None) is None:
                        builder.close()
                        futures.append(await producer.send_batch(builder, dest, partition=partition))
                        builder = producer.create_batch()
                        builder.append(key=m.key, value=value, timestamp=None)
                builder.close()
                futures.append(await producer.send_batch(builder, dest, partition=partition))
            await asyncio.gather(*futures)
            uncommitted.update(offsets)
            if loop.time() - committed_at >= COMMIT_INTERVAL_S:
                await consumer.commit(uncommitted)
                uncommitted, committed_at = {}, loop.time()
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--value-bytes", type=int, default=None, help="send a constant value of this size")
    args = parser.parse_args()
    asyncio.run(
        pass_through(
            args.bootstrap_servers, args.source, args.dest, args.group, args.batch_size, args.value_bytes
        )
    )


if __name__ == "__main__":
    main()
