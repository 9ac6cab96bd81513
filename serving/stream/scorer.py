"""The streaming scorer: ticks from `crypto-prices` → `predictions`, `alerts`, `crypto-prices.dlq`.

One asyncio process on aiokafka. The loop, per batch (`getmany`):

    records ─► ScorerState.ingest (validate, aggregate bars)            event loop, µs per record
            ─► ScorerState.refresh (features, signal, forecast)          worker thread, only when bars closed
            ─► ScorerState.emit (one prediction per valid tick, alerts)   event loop
            ─► produce all outputs, await every acknowledgement, then commit the batch's offsets

The delivery of a batch (produce, acknowledgements, commit) runs while the next batch is computed; the
next delivery starts only once it is complete, so outputs keep their order and offsets commit in order.

Delivery:
- at-least-once (default): idempotent producer (acks=all), `enable_auto_commit=False`; offsets are
  committed only after every output of the batch is acknowledged, at most every `commit_interval_ms`
  (the offsets of acknowledged batches add up meanwhile), and at once when the poll comes back empty,
  when partitions are revoked and on stop. A crash replays what was acknowledged but not committed yet
  (at most `commit_interval_ms` of input): duplicates are possible, losses are not.
- exactly-once (`exactly_once=True`): a transactional producer (`transactional_id` = group + instance,
  stable across restarts so a restarted instance fences its zombie and aborts its open transaction);
  per batch `begin_transaction`, the sends, `send_offsets_to_transaction`, `commit_transaction`. The
  consumer reads `read_committed` (it may itself consume transactional input). A read_committed reader of
  the outputs sees each input's prediction exactly once.
- Failures while producing or committing (a broker restart) are retried with backoff on the SAME
  outputs (computed once; the state is not rolled back), in a new transaction in exactly-once mode,
  until they succeed: recovery needs no manual action.
- No record stalls a partition: a record that fails to parse or to score is a dead letter (reason,
  exception class, original bytes); a dead letter the broker refuses (not retriable, or failing
  `DLQ_MAX_ATTEMPTS` times) is logged with its source offset, counted (`crypto_scorer_dlq_unwritable_total`)
  and left out, and the batch commits without it.
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
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import polars as pl
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import DefaultPartitioner

from crypto_platform.lib.model.windows import FEATURE_BARS
from crypto_platform.lib.stream.alerts import AlertConfig
from crypto_platform.lib.stream.ticks import DEFAULT_MAX_FUTURE_MS
from crypto_platform.settings import Settings
from serving.core.gc_pauses import freeze_startup_heap
from serving.core.model_store import ModelStore
from serving.stream.config import Topics, ensure_topics
from serving.stream.metrics import ScorerMetrics
from serving.stream.scorer_state import BatchWork, OutMessage, ScorerState
from serving.stream.tick_batch import TickBatchParser

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
VISIBLE_OFFSETS_WAIT_S = 10.0  # exactly-once: how long a revoked member waits for its offsets to show
STOP_ATTEMPTS = 3  # delivery retries left once a stop is requested
# A dead letter the broker keeps refusing is given up after this many failed attempts (at once when the
# error is not retriable), logged with its source offset and counted: a dead letter never blocks a batch.
DLQ_MAX_ATTEMPTS = 5
_PARTITIONER = DefaultPartitioner()
# (topic, key) → (topic, partition) cached: murmur2 in pure Python is microseconds per message, and the
# keys are symbols. Cleared past this size (dead letters keep whatever key their record had).
MAX_ROUTES = 10_000
_NO_HEADERS: list = []  # shared by messages without headers; the batch builder only reads it
_NO_WORK = BatchWork()  # a delivery of nothing: only the acknowledged offsets are committed
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
    # The broker answers a fetch once it holds `fetch_min_bytes` for us or after `fetch_max_wait_ms`. At a
    # few ticks per millisecond a fetch of "anything" returns a tick or two: hundreds of fetches, produce
    # requests and commits a second, whose socket writes were half the scorer's CPU at 1k ticks/s (and
    # load on the broker). Waiting up to 10 ms gathers ~10 ticks per batch at that rate, and a busy topic
    # fills 64 KB at once, so throughput does not wait at all.
    fetch_min_bytes: int = 64 * 1024
    fetch_max_wait_ms: int = 10
    commit_interval_ms: int = 200  # at-least-once: the most acknowledged input a crash can replay
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
    from serving.core.market import MarketService

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


class Undelivered(KafkaError):
    """Some outputs of a batch were not acknowledged: `failed` pairs each with the broker's error."""

    def __init__(self, failed: list[tuple[OutMessage, BaseException]]) -> None:
        first = failed[0][1]
        super().__init__(f"{len(failed)} messages not acknowledged, first: {type(first).__name__}: {first}")
        self.failed = failed


class _Revoker(ConsumerRebalanceListener):
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    async def on_partitions_revoked(self, revoked) -> None:
        # Waiting for the lock and then for the delivery in flight means every batch read has produced,
        # been acknowledged and committed before the partitions go to another member.
        async with self.scorer.batch_lock:
            await self.scorer.delivered()
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
        # The batch's values validated together (numpy), in front of the state's record-by-record parse.
        self.tick_parser = TickBatchParser(self.state.symbols, config.max_future_ms)
        self.batch_lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once the consumer has joined and the loop runs
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.batches = 0
        self._in_flight: asyncio.Task | None = None  # the delivery of the last batch computed
        self._partitions: dict[str, list[int]] = {}
        # Exactly-once: the offsets each partition's last committed transaction carried.
        self._transaction_offsets: dict[TopicPartition, int] = {}
        self._routes: dict[tuple[str, bytes | None], tuple[str, int]] = {}
        # At-least-once: offsets of acknowledged outputs not committed yet (`_commit_acknowledged`).
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = float("-inf")  # time.monotonic() of the last commit

    # -- lifecycle ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stopping.set()

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
            fetch_min_bytes=config.fetch_min_bytes,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
        )
        self.consumer.subscribe([config.topics.prices], listener=_Revoker(self))
        await self._until_connected("starting the consumer", self.consumer.start)
        # Everything alive now (modules, polars, the model, the warm-start history) lives as long as the
        # process: moved out of the collector's generations, a full collection no longer walks it, so a
        # gen-2 collection in the loop costs what the loop allocated, not what start-up did.
        freeze_startup_heap()
        self.metrics.watch_gc()
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
            self.metrics.unwatch_gc()
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
        try:
            while not self.stopping.is_set():
                batch = await consumer.getmany(
                    timeout_ms=self.config.fetch_timeout_ms, max_records=self.config.batch_size
                )
                if not batch:
                    if self._uncommitted:  # the stream paused: what was acknowledged commits now
                        async with self.batch_lock:
                            await self._settle()
                            await self._deliver([], _NO_WORK, force_commit=True)
                    continue
                async with self.batch_lock:
                    assigned = consumer.assignment()
                    records = [m for tp, messages in batch.items() if tp in assigned for m in messages]
                    if records:
                        await self._process(records)
        finally:
            await self._settle()  # the last batch is delivered (or its failure raised) ...
            if self._uncommitted:  # ... and every acknowledged offset committed (at-least-once)
                await self._deliver([], _NO_WORK, force_commit=True)

    async def delivered(self) -> None:
        """Wait until the batch in flight is delivered and every acknowledged offset is committed (a
        delivery's failure is left to the loop)."""
        task = self._in_flight
        if task is not None and not task.done():
            await asyncio.wait({task})
        if self._uncommitted:
            try:
                await self._commit_acknowledged({}, force=True)
            except KafkaError as exc:  # the next owner re-reads them: duplicates, never a loss
                log.warning("acknowledged offsets not committed before the rebalance (%s)", exc)

    async def _settle(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await task

    async def _process(self, records: list) -> None:
        """Compute a batch's outputs while the previous batch's acknowledgements are on their way, then
        deliver it once that one is complete. One delivery at a time: outputs keep their order per key,
        offsets are committed in order, and in exactly-once mode transactions never overlap."""
        started = time.perf_counter()
        state = self.state
        parsed = self.tick_parser.parse_columns([r.value for r in records], state.clock_ms())
        work = state.ingest(records, parsed)
        if work.refresh_symbols:
            await asyncio.to_thread(state.refresh, work)
        out, alerts = state.emit(work)
        await self._settle()
        self._in_flight = asyncio.create_task(self._deliver_counted(records, out, alerts, work, started))

    async def _deliver_counted(
        self, records: list, out: list[OutMessage], alerts: list, work: BatchWork, started: float
    ) -> None:
        await self._deliver(out, work)
        self.batches += 1
        m = self.metrics
        m.consumed.inc(len(records))
        # One counter update per label value and batch, not per message: `labels()` takes a lock and
        # looks the child up, a cost per tick as large as parsing it. `out` is the batch's dead letters,
        # then its predictions, then its alerts (`ScorerState.emit`): counted without a pass over it.
        topics = self.config.topics
        dead, raised = len(work.dlq), len(alerts)
        for topic, count in (
            (topics.dlq, dead),
            (topics.alerts, raised),
            (topics.predictions, len(out) - dead - raised),
        ):
            if count:
                m.produced.labels(topic=topic).inc(count)
        reasons = Counter(dict(message.headers)["reason"].decode().split(":", 1)[0] for message in work.dlq)
        for reason, count in reasons.items():
            m.dlq.labels(reason=reason).inc(count)
        for kind, count in Counter(alert.type for alert in alerts).items():
            m.alerts.labels(type=kind).inc(count)
        for reason, count in work.missing_forecasts.items():
            m.forecasts_missing.labels(reason=reason).inc(count)
        for (topic, partition), next_offset in work.offsets.items():
            high = self.consumer.highwater(TopicPartition(topic, partition))
            if high is not None:
                m.lag.labels(partition=str(partition)).set(max(high - next_offset, 0))
        m.batch_seconds.observe(time.perf_counter() - started)

    async def _deliver(self, out: list[OutMessage], work: BatchWork, force_commit: bool = False) -> None:
        """Produce `out` and commit the batch's offsets (at-least-once: when due, or now with
        `force_commit`); retried until it succeeds.

        Retries send the same outputs (computed once), except dead letters the broker will not take
        (`_give_up_unwritable`): those are logged and counted, and the batch commits without them.
        """
        offsets = {TopicPartition(t, p): o for (t, p), o in work.offsets.items()}
        attempt = 0
        pending = list(out)  # exactly-once: the transaction's content; at-least-once: not yet acknowledged
        dlq_failures: dict[int, int] = {}  # id(dead letter) → failed attempts
        while True:
            try:
                if self.config.exactly_once:
                    # Any failure aborts the transaction (outputs and offsets together) and retries it
                    # whole: nothing of this batch is visible to read_committed readers until it commits.
                    await self._deliver_transaction(pending, offsets)
                    self._transaction_offsets.update(offsets)
                    return
                if pending:
                    failed = await self._send_all(pending)
                    if failed:
                        pending = [message for message, _ in failed]  # the acknowledged ones stand
                        raise Undelivered(failed)
                    pending = []
                await self._commit_acknowledged(offsets, force_commit)
                return
            except KafkaError as exc:
                if isinstance(exc, Undelivered):
                    pending = self._give_up_unwritable(pending, exc.failed, dlq_failures)
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

    def _give_up_unwritable(
        self,
        pending: list[OutMessage],
        failed: list[tuple[OutMessage, BaseException]],
        dlq_failures: dict[int, int],
    ) -> list[OutMessage]:
        """`pending` without the dead letters to give up: refused with a non-retriable error (too large,
        invalid record) or failed `DLQ_MAX_ATTEMPTS` times. Each is logged with its source and counted;
        the source topic still holds the original at that offset."""
        dropped: set[int] = set()
        for message, error in failed:
            if message.topic != self.config.topics.dlq:
                continue  # predictions and alerts are retried until the broker takes them
            key = id(message)
            dlq_failures[key] = dlq_failures.get(key, 0) + 1
            retriable = isinstance(error, KafkaError) and error.retriable
            if retriable and dlq_failures[key] < DLQ_MAX_ATTEMPTS:
                continue
            dropped.add(key)
            headers = {name: value.decode(errors="replace") for name, value in message.headers}
            log.error(
                "dead letter of %s:%s@%s (%s) could not be written after %d attempts (%s: %s); dropped",
                headers.get("source_topic"),
                headers.get("source_partition"),
                headers.get("source_offset"),
                headers.get("reason", "")[:200],
                dlq_failures[key],
                type(error).__name__,
                error,
            )
            self.metrics.dlq_unwritable.inc()
        return [message for message in pending if id(message) not in dropped]

    async def _send_all(self, out: list[OutMessage]) -> list[tuple[OutMessage, BaseException]]:
        """Produce `out`, wait for every acknowledgement, and return the messages the broker did not take
        with its error (empty: all acknowledged).

        Messages are packed into one record batch per partition (`create_batch` / `send_batch`) instead
        of `send` per message: one coroutine and one accumulator call per ~1 MB instead of per message,
        which is most of the scorer's per-tick cost. The partition is the producer's default partitioner
        applied to the key (murmur2, as `send` and the Java client do), so each symbol keeps one
        partition of the output topics and its order. Dead letters (rare, and possibly refused one by
        one: too large) travel in batches of their own, so a refusal names the one that caused it.
        """
        producer = self.producer
        dlq_topic = self.config.topics.dlq
        groups: dict[tuple[str, int], list[OutMessage]] = {}
        routes = self._routes
        if len(routes) > MAX_ROUTES:  # keys of dead letters are anything: keep the cache bounded
            routes.clear()
        for message in out:
            route = (message.topic, message.key)
            group = routes.get(route)
            if group is None:
                partitions = self._partitions.get(message.topic)
                if partitions is None:
                    partitions = self._partitions[message.topic] = sorted(
                        await producer.partitions_for(message.topic)
                    )
                routes[route] = group = (message.topic, _PARTITIONER(message.key, partitions, partitions))
            messages = groups.get(group)
            if messages is None:
                messages = groups[group] = []
            messages.append(message)
        sent: list[tuple[list[OutMessage], asyncio.Future]] = []
        for (topic, partition), messages in groups.items():
            if topic == dlq_topic:  # one dead letter per batch
                for message in messages:
                    batch = producer.create_batch()
                    # the first message of a batch always fits; the broker may refuse it
                    _append(batch, message)
                    sent.append(([message], await _send_closed(producer, batch, topic, partition)))
                continue
            # Predictions and alerts: as many per batch as fit (the append inlined: this loop runs once
            # per output), each batch's messages a slice of the partition's list.
            batch, first = producer.create_batch(), 0
            for index, message in enumerate(messages):
                headers = message.headers
                appended = batch.append(
                    key=message.key,
                    value=message.value,
                    timestamp=None,
                    headers=list(headers) if headers else _NO_HEADERS,
                )
                if appended is not None or index == first:
                    continue
                # Full: send it, and start the next with this message (it always fits an empty batch).
                sent.append((messages[first:index], await _send_closed(producer, batch, topic, partition)))
                batch, first = producer.create_batch(), index
                _append(batch, message)
            sent.append((messages[first:], await _send_closed(producer, batch, topic, partition)))
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        return [
            (message, result)
            for (messages, _), result in zip(sent, results, strict=True)
            if isinstance(result, BaseException)
            for message in messages
        ]

    async def _commit_acknowledged(self, offsets: dict[TopicPartition, int], force: bool = False) -> None:
        """At-least-once: add `offsets` (their outputs acknowledged) to those not committed yet, and commit
        them all if `commit_interval_ms` has passed since the last commit (or `force`). A broker error
        leaves them for the next attempt; a rebalance error drops them (no longer ours to commit)."""
        self._uncommitted.update(offsets)
        due = time.monotonic() - self._committed_at >= self.config.commit_interval_ms / 1000
        if not self._uncommitted or not (due or force):
            return
        committing = dict(self._uncommitted)
        try:
            await self._commit(committing)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: this member may no longer commit these partitions.
            # Waiting here would deadlock with the rebalance listener (it waits for this batch);
            # the outputs stand and the next owner re-reads from the last commit (at-least-once).
            log.warning("offsets of a batch not committed (%s): the group rebalanced", exc)
        self._committed_at = time.monotonic()
        for tp, offset in committing.items():
            if self._uncommitted.get(tp) == offset:
                del self._uncommitted[tp]

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assigned = self.consumer.assignment()
        mine = {tp: o for tp, o in offsets.items() if tp in assigned}
        if mine:
            await self.consumer.commit(mine)

    async def _deliver_transaction(self, out: list[OutMessage], offsets: dict[TopicPartition, int]) -> None:
        producer = self.producer
        await producer.begin_transaction()
        try:
            failed = await self._send_all(out)
            if failed:
                raise Undelivered(failed)
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


def _append(batch, message: OutMessage) -> bool:
    """Add `message` to an aiokafka record batch; False when the batch is full."""
    headers = list(message.headers) if message.headers else _NO_HEADERS  # the builder wants a list
    return batch.append(key=message.key, value=message.value, timestamp=None, headers=headers) is not None


async def _send_closed(producer: AIOKafkaProducer, batch, topic: str, partition: int) -> asyncio.Future:
    """Hand a complete batch to the producer, closed first: an open batch lingers `linger_ms` waiting for
    `send()` calls that never come (every output goes through these batches), and the next batch for
    the same partition waits for it to drain, so each batch would add a linger to every tick's latency."""
    batch.close()
    return await producer.send_batch(batch, topic, partition=partition)
