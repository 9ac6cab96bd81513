"""Publish ticks to Kafka: an idempotent aiokafka producer, paced, with a clean stop.

- Key = the normalised symbol (`tick_key`), so each symbol's ticks stay on one partition, in order.
- `enable_idempotence=True` (acks=all): the broker drops the duplicates a retried batch would create,
  so a network hiccup never doubles a tick.
- Sends are not awaited one by one: each send's future reports its outcome (counted in `sent` /
  `errors`), and `stop()` flushes what is still buffered, so SIGTERM loses nothing that was handed over.
- `Pacer` decides when each tick goes out: at most `rate` per second, and with `speed` the ticks'
  event-time spacing replayed `speed` times faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from crypto_platform.lib.stream.ticks import Tick, encode_tick, tick_key

log = logging.getLogger(__name__)

# How far behind schedule the pacer may fall before it stops catching up: a short burst after a slow
# step keeps the average rate, a long stall does not turn into a flood.
MAX_CATCH_UP_S = 0.1


class Pacer:
    """When to send each tick (monotonic seconds); `rate` ≤ 0 and `speed` ≤ 0 disable either limit."""

    def __init__(self, rate: float = 0.0, speed: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = 1.0 / rate if rate > 0 else 0.0
        self.speed = speed if speed > 0 else 0.0
        self.clock = clock
        self._next: float | None = None
        self._anchor: tuple[float, int] | None = None  # (wall time, event time ms) of the first tick

    def due(self, event_ms: int) -> float:
        now = self.clock()
        due = now if self._next is None else max(self._next, now - MAX_CATCH_UP_S)
        if self.speed:
            if self._anchor is None:
                self._anchor = (due, event_ms)
            wall0, event0 = self._anchor
            due = max(due, wall0 + (event_ms - event0) / 1000.0 / self.speed)
        self._next = due + self.interval_s
        return due


@dataclass
class ProduceSummary:
    sent: int = 0  # acknowledged by the broker
    errors: int = 0  # sends the broker did not acknowledge
    source_errors: int = 0  # ticks the source could not produce (e.g. a failed ticker poll)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self, topic: str, source: str) -> str:
        return (
            f"produce: sent={self.sent} errors={self.errors} source_errors={self.source_errors} "
            f"elapsed={self.elapsed_s:.1f}s rate={self.rate:.0f}/s topic={topic} source={source}"
        )


class TickProducer:
    """An idempotent aiokafka producer of ticks to one topic, counting acknowledged and failed sends."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "crypto-platform-producer",
        linger_ms: int = 5,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.client_id = client_id
        self.linger_ms = linger_ms
        self.sent = 0
        self.errors = 0
        self._producer = None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Connect, retrying while the broker is not reachable yet (started together with it)."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaConnectionError

        deadline = time.monotonic() + timeout_s
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                enable_idempotence=True,
                acks="all",
                linger_ms=self.linger_ms,
            )
            try:
                await producer.start()
            except KafkaConnectionError:
                await producer.stop()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
                continue
            self._producer = producer
            return

    def _done(self, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            self.errors += 1
            if self.errors <= 5 or self.errors % 1000 == 0:
                error = "cancelled" if future.cancelled() else repr(future.exception())
                log.error("tick not delivered to %s (%d so far): %s", self.topic, self.errors, error)
        else:
            self.sent += 1

    async def send(self, tick: Tick) -> None:
        """Hand one tick to the producer's buffer; its delivery is counted when the broker answers."""
        if self._producer is None:
            raise RuntimeError("TickProducer.start() was not called")
        try:
            future = await self._producer.send(self.topic, encode_tick(tick), key=tick_key(tick.symbol))
        except Exception as exc:  # e.g. the topic's metadata did not arrive in time
            self.errors += 1
            log.error("tick not accepted for %s: %r", self.topic, exc)
            return
        future.add_done_callback(self._done)

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()

    async def stop(self) -> None:
        """Flush what is buffered, then close."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
            # The last futures resolved during stop(); their done-callbacks (the counters) run next.
            await asyncio.sleep(0)


async def _sleep_unless_stopped(delay: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)


async def produce(
    ticks: Iterator[Tick],
    producer: TickProducer,
    pacer: Pacer,
    stop: asyncio.Event,
    *,
    limit: int | None = None,
    blocking_source: bool = False,
    source_errors: Callable[[], int] = lambda: 0,
) -> ProduceSummary:
    """Send ticks until the source ends, `limit` ticks were handed over, or `stop` is set; then flush.

    `blocking_source`: the source does network I/O (ticker polling), so each tick is pulled in a worker
    thread and the event loop keeps serving the producer's network traffic meanwhile.
    """
    started = time.monotonic()
    handed = 0
    try:
        while not stop.is_set() and (limit is None or handed < limit):
            if blocking_source:
                pull = asyncio.ensure_future(asyncio.to_thread(next, ticks, None))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({pull, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not pull.done():
                    break  # stopped while polling: that poll's tick is not sent
                tick = pull.result()
            else:
                tick = next(ticks, None)
            if tick is None:
                break
            delay = pacer.due(tick.timestamp_ms) - pacer.clock()
            if delay > 0.0005:
                await _sleep_unless_stopped(delay, stop)
                if stop.is_set():
                    break
            await producer.send(tick)
            handed += 1
            if handed % 512 == 0:
                await asyncio.sleep(0)  # unpaced runs: let the producer's sender task run
    finally:
        await producer.stop()
    return ProduceSummary(
        sent=producer.sent,
        errors=producer.errors,
        source_errors=source_errors(),
        elapsed_s=time.monotonic() - started,
    )
