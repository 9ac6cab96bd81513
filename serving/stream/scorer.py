"""The streaming scorer: ticks from `crypto-prices` → `predictions`, `alerts`, `crypto-prices.dlq`.

One asyncio process on aiokafka. The loop, per batch (`getmany`):

    records ─► ScorerState.ingest (validate, aggregate bars)            event loop, µs per record
            ─► ScorerState.refresh (features, signal, forecast)          worker thread, only when bars closed
            ─► ScorerState.emit (one prediction per valid tick, alerts)   event loop
            ─► produce all outputs, await every acknowledgement, then commit the batch's offsets

Delivery:
- at-least-once (default): idempotent producer (acks=all), `enable_auto_commit=False`; offsets are
  committed only after every output of the batch is acknowledged. A crash between the two replays the
  batch: duplicates are possible, losses are not.
- exactly-once (`exactly_once=True`): a transactional producer (`transactional_id` = group + instance,
  stable across restarts so a restarted instance fences its zombie and aborts its open transaction);
  per batch `begin_transaction`, the sends, `send_offsets_to_transaction`, `commit_transaction`. The
  consumer reads `read_committed` (it may itself consume transactional input). A read_committed reader of
  the outputs sees each input's prediction exactly once.
- Failures while producing or committing (a broker restart) are retried with backoff on the SAME
  outputs (computed once; the state is not rolled back), in a new transaction in exactly-once mode,
  until they succeed: recovery needs no manual action.
- A `ConsumerRebalanceListener` takes the batch lock in `on_partitions_revoked`, so the batch in
  flight finishes and commits before partitions move; records fetched for a partition no longer
  assigned are dropped (the new owner reads them from the committed offset).
- SIGTERM / SIGINT: stop fetching, finish the batch, commit, close consumer and producer, exit 0.

Warm start: the last `FEATURE_BARS` closed bars per symbol from the stored `ohlcv` asset (through the
API's `MarketService`: the store first, the live exchange / simulator when the store is stale), so the
first tick already has a signal and a forecast. The model is the MLflow `champion` (`ModelStore`, polled:
hot reload); without one, forecasts are null and scoring goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import polars as pl
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import DefaultPartitioner

from crypto_platform.lib.stream.alerts import AlertConfig
from crypto_platform.lib.stream.ticks import DEFAULT_MAX_FUTURE_MS
from crypto_platform.settings import Settings
from serving.api.model_store import ModelStore
from serving.api.scoring import FEATURE_BARS
from serving.stream.config import Topics, ensure_topics
from serving.stream.metrics import ScorerMetrics
from serving.stream.scorer_state import BatchWork, OutMessage, ScorerState

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
VISIBLE_OFFSETS_WAIT_S = 10.0  # exactly-once: how long a revoked member waits for its offsets to show
STOP_ATTEMPTS = 3  # delivery retries left once a stop is requested
_PARTITIONER = DefaultPartitioner()
T = TypeVar("T")


@dataclass
class ScorerConfig:
    bootstrap_servers: str
    topics: Topics
    settings: Settings
    group_id: str = "crypto-scorer"
    instance_id: str = "0"
    exactly_once: bool = False
    batch_size: int = 5000
    fetch_timeout_ms: int = 100
    symbols: tuple[str, ...] = ()
    metrics_port: int | None = None
    model_name: str | None = None  # None: no model (forecasts null)
    model_alias: str = "champion"
    model_poll_s: float = 60.0
    model_startup_s: float = 30.0
    warm_start: bool = True
    static_membership: bool = True
    partitions: int = 3
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    alert_config: AlertConfig = field(default_factory=AlertConfig)
    client_id: str = "crypto-scorer"

    @property
    def transactional_id(self) -> str:
        return f"{self.group_id}-scorer-{self.instance_id}"


def load_warm_start(settings: Settings, symbols: Sequence[str], timeframe: str) -> dict[str, pl.DataFrame]:
    """The newest `FEATURE_BARS` closed bars per symbol (blocking: storage and maybe the exchange)."""
    from crypto_platform.lib.storage import open_store
    from serving.api.market import MarketService

    store = open_store(settings.data_location, settings.s3_endpoint_url)
    market = MarketService(settings, store)
    seeded = {}
    for symbol in symbols:
        try:
            bars = market.bars(symbol, timeframe, FEATURE_BARS)
        except Exception as exc:  # a symbol without history is scored without a signal until it has one
            log.warning("warm start of %s failed: %s; it starts without history", symbol, exc)
            continue
        seeded[symbol] = bars.frame
        log.info("warm start %s: %d bars from %s (%s)", symbol, bars.frame.height, bars.origin, bars.source)
    return seeded


class _Revoker(ConsumerRebalanceListener):
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    async def on_partitions_revoked(self, revoked) -> None:
        # Waiting for the lock means the batch in flight has produced, been acknowledged and committed
        # before the partitions go to another member.
        async with self.scorer.batch_lock:
            log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
            if self.scorer.config.exactly_once:
                await self.scorer.await_visible_offsets(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


class Scorer:
    def __init__(
        self,
        config: ScorerConfig,
        metrics: ScorerMetrics | None = None,
        model_store: ModelStore | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or ScorerMetrics()
        if model_store is None and config.model_name:
            model_store = ModelStore(
                config.settings.mlflow_tracking_uri,
                config.model_name,
                config.model_alias,
                poll_s=config.model_poll_s,
                on_change=lambda m: self.metrics.set_model(m.version if m else None),
            )
        self.model_store = model_store
        symbols = config.symbols or config.settings.symbols
        self.state = ScorerState(
            symbols,
            config.settings.timeframe,
            config.topics,
            model=(lambda: self.model_store.current) if self.model_store else (lambda: None),
            alert_config=config.alert_config,
            max_future_ms=config.max_future_ms,
            clock_ms=clock_ms,
        )
        self.batch_lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once the consumer has joined and the loop runs
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.batches = 0
        self._partitions: dict[str, list[int]] = {}
        # Exactly-once: the offsets each partition's last committed transaction carried.
        self._transaction_offsets: dict[TopicPartition, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        config = self.config
        if config.metrics_port:
            self.metrics.serve(config.metrics_port)
        self.metrics.set_model(None)
        await self._until_connected(
            "creating topics",
            lambda: ensure_topics(config.bootstrap_servers, config.topics, config.partitions),
        )
        poller = await self._start_model()
        if config.warm_start:
            seeded = await asyncio.to_thread(
                load_warm_start, config.settings, sorted(self.state.symbols), config.settings.timeframe
            )
            for symbol, frame in seeded.items():
                self.state.seed(symbol, frame)
            await asyncio.to_thread(self.state.refresh, self.state.warm_work())
        self.producer = await self._until_connected("starting the producer", self._started_producer)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap_servers,
            group_id=config.group_id,
            # Static membership: a restarted instance (same id) takes its partitions back at once
            # instead of waiting for the session of its killed predecessor to time out.
            group_instance_id=f"{config.group_id}-{config.instance_id}" if config.static_membership else None,
            client_id=f"{config.client_id}-{config.instance_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if config.exactly_once else "read_uncommitted",
            max_poll_records=config.batch_size,
            fetch_max_wait_ms=50,
        )
        self.consumer.subscribe([config.topics.prices], listener=_Revoker(self))
        await self._until_connected("starting the consumer", self.consumer.start)
        try:
            await self._loop()
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await poller
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            with contextlib.suppress(Exception):
                await self.producer.stop()
            log.info("scorer stopped after %d batches", self.batches)

    async def _start_model(self) -> asyncio.Task | None:
        store = self.model_store
        if store is None:
            return None
        first = asyncio.Event()
        task = asyncio.create_task(store.run_poller(first))
        try:  # forecasts at the first tick need the model; MLflow being slow must not block forever
            await asyncio.wait_for(first.wait(), timeout=self.config.model_startup_s)
        except TimeoutError:
            log.warning(
                "no model after %.0f s; scoring with null forecasts meanwhile", self.config.model_startup_s
            )
        self.metrics.set_model(store.current.version if store.current else None)
        return task

    async def _until_connected(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run a start-up step until the broker answers: a scorer started while the broker is down or
        restarting waits for it (with backoff) instead of exiting."""
        attempt = 0
        while True:
            try:
                return await step()
            except (KafkaError, OSError, TimeoutError) as exc:
                if self.stopping.is_set():
                    raise
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.warning(
                    "%s failed (%s: %s); retry %d in %.1f s", what, type(exc).__name__, exc, attempt, delay
                )
                await asyncio.sleep(delay)

    async def _started_producer(self) -> AIOKafkaProducer:
        producer = self._new_producer()
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    def _new_producer(self) -> AIOKafkaProducer:
        config = self.config
        return AIOKafkaProducer(
            bootstrap_servers=config.bootstrap_servers,
            client_id=f"{config.client_id}-{config.instance_id}",
            enable_idempotence=True,  # acks=all; the broker drops the producer's own retried duplicates
            transactional_id=config.transactional_id if config.exactly_once else None,
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=30_000,
        )

    # -- the loop ----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        consumer = self.consumer
        self.ready.set()
        while not self.stopping.is_set():
            batch = await consumer.getmany(
                timeout_ms=self.config.fetch_timeout_ms, max_records=self.config.batch_size
            )
            if not batch:
                continue
            async with self.batch_lock:
                assigned = consumer.assignment()
                records = [m for tp, messages in batch.items() if tp in assigned for m in messages]
                if records:
                    await self._process(records)

    async def _process(self, records: list) -> None:
        started = time.perf_counter()
        state = self.state
        work = state.ingest(records)
        if work.refresh_symbols:
            await asyncio.to_thread(state.refresh, work)
        out, alerts = state.emit(work)
        await self._deliver(out, work)
        self.batches += 1
        m = self.metrics
        m.consumed.inc(len(records))
        for message in out:
            m.produced.labels(topic=message.topic).inc()
        for message in work.dlq:
            m.dlq.labels(reason=dict(message.headers)["reason"].decode().split(":", 1)[0]).inc()
        for alert in alerts:
            m.alerts.labels(type=alert.type).inc()
        for (topic, partition), next_offset in work.offsets.items():
            high = self.consumer.highwater(TopicPartition(topic, partition))
            if high is not None:
                m.lag.labels(partition=str(partition)).set(max(high - next_offset, 0))
        m.batch_seconds.observe(time.perf_counter() - started)

    async def _deliver(self, out: list[OutMessage], work: BatchWork) -> None:
        """Produce `out` and commit the batch's offsets; retried on the same outputs until it succeeds."""
        offsets = {TopicPartition(t, p): o for (t, p), o in work.offsets.items()}
        attempt = 0
        sent = False
        while True:
            try:
                if self.config.exactly_once:
                    # Any failure aborts the transaction (outputs and offsets together) and retries it
                    # whole: nothing of this batch is visible to read_committed readers until it commits.
                    await self._deliver_transaction(out, offsets)
                    self._transaction_offsets.update(offsets)
                    return
                if not sent:
                    await self._send_all(out)
                    sent = True
                try:
                    await self._commit(offsets)
                except (CommitFailedError, IllegalStateError) as exc:
                    # The group rebalanced under us: this member may no longer commit these partitions.
                    # Waiting here would deadlock with the rebalance listener (it waits for this batch);
                    # the outputs stand and the next owner re-reads from the last commit (at-least-once).
                    log.warning("offsets of a batch not committed (%s): the group rebalanced", exc)
                return
            except KafkaError as exc:
                attempt += 1
                if self.stopping.is_set() and attempt > STOP_ATTEMPTS:
                    raise  # shutting down with the broker gone: the batch is re-read after a restart
                delay = RETRY_BACKOFF_S[min(attempt - 1, len(RETRY_BACKOFF_S) - 1)]
                log.warning(
                    "delivery of a batch failed (%s: %s); retry %d in %.1f s",
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                await self._recover_producer()

    async def _send_all(self, out: list[OutMessage]) -> None:
        """Produce `out` and wait for every acknowledgement.

        Messages are packed into one record batch per partition (`create_batch` / `send_batch`) instead
        of `send` per message: one coroutine and one accumulator call per ~1 MB instead of per message,
        which is most of the scorer's per-tick cost. The partition is the producer's default partitioner
        applied to the key (murmur2, as `send` and the Java client do), so each symbol keeps one
        partition of the output topics and its order.
        """
        producer = self.producer
        groups: dict[tuple[str, int], list[OutMessage]] = {}
        for message in out:
            partitions = self._partitions.get(message.topic)
            if partitions is None:
                partitions = self._partitions[message.topic] = sorted(
                    await producer.partitions_for(message.topic)
                )
            partition = _PARTITIONER(message.key, partitions, partitions)
            groups.setdefault((message.topic, partition), []).append(message)
        futures = []
        for (topic, partition), messages in groups.items():
            batch = producer.create_batch()
            for message in messages:
                if (
                    batch.append(
                        key=message.key, value=message.value, timestamp=None, headers=list(message.headers)
                    )
                    is None
                ):
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(
                        key=message.key, value=message.value, timestamp=None, headers=list(message.headers)
                    )
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        if futures:
            await asyncio.gather(*futures)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assigned = self.consumer.assignment()
        mine = {tp: o for tp, o in offsets.items() if tp in assigned}
        if mine:
            await self.consumer.commit(mine)

    async def _deliver_transaction(self, out: list[OutMessage], offsets: dict[TopicPartition, int]) -> None:
        producer = self.producer
        await producer.begin_transaction()
        try:
            await self._send_all(out)
            await producer.send_offsets_to_transaction(offsets, self.config.group_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise
        await producer.commit_transaction()

    async def await_visible_offsets(self, revoked) -> None:
        """Exactly-once, before partitions go to another member: wait until the group coordinator returns
        the offsets this member's last committed transaction carried for them.

        `commit_transaction` returns once the transaction coordinator has logged the commit; the offsets
        become visible to OffsetFetch only when its marker reaches `__consumer_offsets`, a moment later.
        aiokafka's OffsetFetch (≤ v3) cannot ask for stable offsets (KIP-447's `require_stable`), so a
        new owner fetching in that moment gets the previous offsets and scores the last batch again: a
        duplicate for read_committed readers (seen on a 3-broker cluster). The rebalance completes only
        after this member rejoins, so waiting here, in the revocation, closes the window.
        """
        pending = {tp: self._transaction_offsets.pop(tp) for tp in revoked if tp in self._transaction_offsets}
        deadline = time.monotonic() + VISIBLE_OFFSETS_WAIT_S
        while pending and time.monotonic() < deadline:
            for tp, offset in list(pending.items()):
                try:
                    committed = await self.consumer.committed(tp)
                except KafkaError as exc:
                    log.warning("reading the committed offset of %s failed (%s); retrying", tp, exc)
                    continue
                if committed is not None and committed >= offset:
                    del pending[tp]
            if pending:
                await asyncio.sleep(0.05)
        if pending:
            log.warning(
                "committed offsets of %s not visible after %.0f s: the next owner may score their last "
                "batch again",
                sorted((tp.topic, tp.partition) for tp in pending),
                VISIBLE_OFFSETS_WAIT_S,
            )

    async def _recover_producer(self) -> None:
        """After a failed delivery the producer may be unusable (a transaction it could not abort while
        the broker was away, sequence numbers out of step after expired batches): replace it. The
        transactional id is the same, so the new producer fences the old one and aborts what it left open."""
        old = self.producer
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), timeout=10)
        self.producer = await self._until_connected("restarting the producer", self._started_producer)
