"""Helpers of the scorer's broker tests: produce ticks, read topics back, run the scorer in-process or as
the `crypto-platform score` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from crypto_platform.lib.stream.ticks import Tick, encode_tick, tick_key
from crypto_platform.settings import Settings
from crypto_platform_tests.fixtures.kafka import KAFKA_TEST_PARTITIONS
from serving.stream.config import Topics

REPO_ROOT = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ticks_for(
    symbols: Iterable[str], n: int, start_ms: int, step_ms: int = 10, base: float = 100.0
) -> list[Tick]:
    """`n` ticks round-robin over `symbols`, prices wandering slowly (no alert-sized moves)."""
    symbols = list(symbols)
    return [
        Tick(
            symbols[i % len(symbols)],
            base * (1 + 0.0001 * ((i * 7) % 13 - 6)),
            0.01,
            start_ms + i * step_ms,
            "test",
        )
        for i in range(n)
    ]


async def produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None]],
    rate_per_s: float | None = None,
) -> list[tuple[int, int]]:
    """Send (key, value) pairs in order; returns their (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = []
        started = time.monotonic()
        for i, (key, value) in enumerate(messages):
            futures.append(await producer.send(topic, value, key=key))
            if rate_per_s:
                delay = started + (i + 1) / rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        metadata = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metadata]
    finally:
        await producer.stop()


def produce_ticks(
    bootstrap: str, topic: str, ticks: list[Tick], rate_per_s: float | None = None
) -> list[tuple[int, int]]:
    return asyncio.run(
        produce(bootstrap, topic, [(tick_key(t.symbol), encode_tick(t)) for t in ticks], rate_per_s)
    )


async def _read(
    bootstrap: str, topic: str, isolation_level: str, until_count: int | None, timeout_s: float
) -> list:
    # Subscribed without a group: every partition is assigned once the topic's metadata arrives, and
    # reading starts at the beginning (auto_offset_reset) since nothing is committed.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation_level,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        records: list = []
        deadline = time.monotonic() + timeout_s
        ends: dict | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(messages)
            if until_count is not None:
                if len(records) >= until_count:
                    break
                continue
            partitions = sorted(consumer.assignment())
            if not partitions:
                continue
            if ends is None:
                ends = await consumer.end_offsets(partitions)
            # Up to the end offsets taken at the start (with read_committed every transaction must be
            # finished by then: the position moves past commit markers and aborted records too).
            positions = [await consumer.position(tp) for tp in partitions]
            if all(pos >= ends[tp] for pos, tp in zip(positions, partitions, strict=True)):
                break
        return records
    finally:
        await consumer.stop()


def read_topic(
    bootstrap: str,
    topic: str,
    until_count: int | None = None,
    timeout_s: float = 30.0,
    isolation_level: str = "read_uncommitted",
) -> list:
    """Records of `topic` from the beginning: until `until_count` are read, or (None) up to the end."""
    return asyncio.run(_read(bootstrap, topic, isolation_level, until_count, timeout_s))


def values(records: list) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


async def _offsets(bootstrap: str, topic: str, group: str) -> tuple[dict[int, int], dict[int, int | None]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        # The test topics have KAFKA_TEST_PARTITIONS partitions; a consumer that is not subscribed has no
        # metadata to list them from.
        partitions = [TopicPartition(topic, p) for p in range(KAFKA_TEST_PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        committed = {tp.partition: await consumer.committed(tp) for tp in partitions}
        return {tp.partition: off for tp, off in ends.items()}, committed
    finally:
        await consumer.stop()


def end_and_committed(bootstrap: str, topic: str, group: str) -> tuple[dict[int, int], dict[int, int | None]]:
    return asyncio.run(_offsets(bootstrap, topic, group))


def platform_settings(
    data_location: Path | str, symbols: tuple[str, ...], mlflow_uri: str = "sqlite:///none.db"
) -> Settings:
    return Settings(
        symbols=symbols,
        data_location=str(data_location),
        market_source="simulated",
        mlflow_tracking_uri=mlflow_uri,
    )


@dataclass
class InProcessScorer:
    """A `Scorer` on its own event loop in a thread (fast to start; the process tests use the CLI)."""

    scorer: Any
    thread: threading.Thread | None = None
    loop: asyncio.AbstractEventLoop | None = None
    error: list[BaseException] = field(default_factory=list)

    def start(self, timeout_s: float = 60.0) -> InProcessScorer:
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                task = asyncio.create_task(self.scorer.run())
                waiter = asyncio.create_task(self.scorer.ready.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                ready.set()
                await task

            try:
                asyncio.run(main())
            except BaseException as exc:
                self.error.append(exc)
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(timeout_s), "the scorer did not start"
        if self.error:
            raise self.error[0]
        return self

    def stop(self) -> None:
        if self.loop is not None and self.thread is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.scorer.request_stop)
            self.thread.join(60)
        if self.error:
            raise self.error[0]


def scorer_env(bootstrap: str, topics: Topics, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **topics.env(),
            "CRYPTO_MARKET_SOURCE": "simulated",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


class ScorerProcess:
    """`crypto-platform score` as a child process, its output in a log file."""

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        self.env, self.args, self.log_path = env, args, log_path
        self.proc: subprocess.Popen | None = None
        self.metrics_url: str | None = None

    def start(self) -> ScorerProcess:
        assert self.proc is None or self.proc.poll() is not None, "the scorer process is already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crypto_platform.cli", "score", *self.args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def __enter__(self) -> ScorerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
