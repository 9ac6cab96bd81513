"""The prediction sink: the scorer's `predictions` topic → the history DB's `stream_forecasts` table.

A small consumer apart from the scorer, so the scorer's hot path (produce, await acks, commit) stays as
it is and a slow or unreachable database never holds up scoring. Per batch (`getmany`):

    records ─► forecasts_of (parse; keep the first message per (symbol, bar, model version))
            ─► History.store_stream_forecasts (one transaction, in a worker thread)
            ─► commit {tp: last offset + 1}

Delivery: offsets are committed only after the rows are in the database, and the insert is idempotent
on (symbol, bar_ts, model_version), so a crash between the two re-reads the batch and adds nothing: the
table holds each forecast exactly once. A database error is retried with backoff on the same batch
(nothing committed meanwhile); the consumer keeps its partitions, as `getmany` is not called.

Only forecasts are stored, each with the predictive intervals it carried (the track record checks how
often what happened fell inside them): a prediction without one (no model loaded yet, too little history) or
without a bar has nothing the track record could score. A message that is not a prediction (not
JSON, a field of the wrong type) is counted and skipped — the scorer wrote it, so it is a bug there,
and blocking the partition on it would stop the whole record.

The scorer sends one prediction per tick, and every tick of a bar carries that bar's forecast: one row
per bar keeps the table at 24 rows per symbol and day instead of one per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry, Counter, start_http_server

from crypto_platform.lib.stream.ticks import InvalidTick, parse_timestamp_ms
from serving.core.history import History, StreamForecast, intervals_column

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
DEFAULT_GROUP = "crypto-prediction-sink"


class _Interval(msgspec.Struct):
    level: float
    lower: float
    upper: float


class _Prediction(msgspec.Struct):
    """The fields of a `predictions` message the sink reads (the scorer writes more)."""

    symbol: str
    timestamp: str
    bar_timestamp: str | None = None
    predicted_volatility: float | None = None
    model_version: str | None = None
    intervals: list[_Interval] | None = None


_DECODER = msgspec.json.Decoder(_Prediction)


class SinkMetrics:
    """Prometheus metrics of one sink (own registry, as the scorer's)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("crypto_sink_consumed_total", "Prediction messages read.", registry=r)
        self.stored = Counter(
            "crypto_sink_stored_total", "Per-bar forecasts newly written to the history DB.", registry=r
        )
        self.skipped = Counter(
            "crypto_sink_skipped_total",
            "Prediction messages not stored, per reason (no_forecast, duplicate, malformed).",
            ["reason"],
            registry=r,
        )
        self.db_errors = Counter(
            "crypto_sink_db_errors_total", "Batches the history DB refused (retried).", registry=r
        )
        for reason in ("no_forecast", "duplicate", "malformed"):
            self.skipped.labels(reason=reason)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


@dataclass
class ParsedBatch:
    forecasts: list[StreamForecast]
    no_forecast: int = 0
    duplicates: int = 0
    malformed: int = 0


def forecasts_of(records: Iterable, timeframe: str) -> ParsedBatch:
    """The per-bar forecasts in a batch of `predictions` records (aiokafka ConsumerRecords or anything
    with topic, partition, offset and value), the first message of each (symbol, bar, version) kept."""
    batch = ParsedBatch([])
    seen: set[tuple[str, int, str]] = set()
    for record in records:
        try:
            message = _DECODER.decode(record.value)
            tick_ms = parse_timestamp_ms(message.timestamp)
            bar_ms = parse_timestamp_ms(message.bar_timestamp) if message.bar_timestamp else None
        except (msgspec.DecodeError, msgspec.ValidationError, InvalidTick):
            batch.malformed += 1
            continue
        value = message.predicted_volatility
        if bar_ms is None or value is None or not message.model_version:
            batch.no_forecast += 1
            continue
        if not (math.isfinite(value) and value > 0):
            batch.malformed += 1  # the scorer never sends one: a forecast ≤ 0 is a broken model
            continue
        key = (message.symbol, bar_ms, message.model_version)
        if key in seen:
            batch.duplicates += 1
            continue
        seen.add(key)
        batch.forecasts.append(
            StreamForecast(
                symbol=message.symbol,
                timeframe=timeframe,
                model_version=message.model_version,
                bar_ts=bar_ms,
                predicted_volatility=float(value),
                intervals=intervals_column(message.intervals),
                first_tick_ts=tick_ms,
                source_topic=record.topic,
                source_partition=record.partition,
                source_offset=record.offset,
            )
        )
    return batch


@dataclass
class SinkConfig:
    bootstrap_servers: str
    topic: str
    history_url: str
    timeframe: str = "1h"
    group_id: str = DEFAULT_GROUP
    batch_size: int = 5000
    fetch_timeout_ms: int = 500
    metrics_port: int | None = None
    client_id: str = "crypto-prediction-sink"
    # read_committed: with an exactly-once scorer, aborted outputs are never stored
    isolation_level: str = "read_committed"


class PredictionSink:
    def __init__(self, config: SinkConfig, metrics: SinkMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or SinkMetrics()
        self.history: History | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.batches = 0
        self.stored = 0

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        config = self.config
        if config.metrics_port:
            self.metrics.serve(config.metrics_port)
        self.history = History(config.history_url)
        self.consumer = AIOKafkaConsumer(
            config.topic,
            bootstrap_servers=config.bootstrap_servers,
            group_id=config.group_id,
            client_id=config.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=config.isolation_level,
            max_poll_records=config.batch_size,
        )
        await self._until_connected(self.consumer.start)
        try:
            self.ready.set()
            while not self.stopping.is_set():
                batch = await self.consumer.getmany(
                    timeout_ms=config.fetch_timeout_ms, max_records=config.batch_size
                )
                records = [m for messages in batch.values() for m in messages]
                if records:
                    await self._process(records)
        finally:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            self.history.close()
            log.info("prediction sink stopped: %d batches, %d forecasts stored", self.batches, self.stored)

    async def _until_connected(self, step) -> None:
        attempt = 0
        while True:
            try:
                await step()
                return
            except (KafkaError, OSError) as exc:
                if self.stopping.is_set():
                    raise
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("starting the consumer failed (%s); retry %d in %.1f s", exc, attempt, delay)
                await asyncio.sleep(delay)

    async def _process(self, records: list) -> None:
        parsed = forecasts_of(records, self.config.timeframe)
        m = self.metrics
        m.consumed.inc(len(records))
        m.skipped.labels(reason="no_forecast").inc(parsed.no_forecast)
        m.skipped.labels(reason="malformed").inc(parsed.malformed)
        if parsed.malformed:
            log.warning("%d prediction message(s) could not be read; skipped", parsed.malformed)
        new = await self._store(parsed.forecasts)
        # Within the batch and against what the table already held (a replay after a crash).
        m.skipped.labels(reason="duplicate").inc(parsed.duplicates + len(parsed.forecasts) - new)
        m.stored.inc(new)
        self.stored += new
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance moved the partitions: the new owner re-reads from the last commit, and the
            # idempotent insert makes that harmless.
            log.warning("offsets of a batch not committed (%s): the group rebalanced", exc)
        self.batches += 1

    async def _store(self, forecasts: list[StreamForecast]) -> int:
        """Write the batch, retrying with backoff until the database takes it (or a stop is requested)."""
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(self.history.store_stream_forecasts, forecasts)
            except Exception as exc:  # the driver's errors vary (sqlite3, psycopg, SQLAlchemy): retry all
                self.metrics.db_errors.inc()
                if self.stopping.is_set():
                    raise  # not committed: the batch is re-read after a restart
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("history DB refused %d forecast(s) (%s); retry %d in %.1f s",
                            len(forecasts), exc, attempt, delay)  # fmt: skip
                await asyncio.sleep(delay)
