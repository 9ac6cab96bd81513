"""Every served signal and forecast, in a real database (SQLite file by default, Postgres in the stack).

SQLAlchemy Core. Three tables, each indexed on `created_at` (epoch seconds, float):
- `signals` and `ml_predictions`: what the API (REST, GraphQL, gRPC) served, written behind the request
  by one writer thread (`History`); tails are read newest first through the index, paged by a row-id
  cursor, and the full response body is kept as JSON so a tail returns exactly what was served
  (`ml_predictions` also keeps the answer's predictive intervals in a column of their own);
- `stream_forecasts`: the Kafka scorer's forecasts, one row per (symbol, bar, model version) — the
  scorer sends one prediction per tick, but every tick of a bar carries that bar's forecast — written
  by the prediction sink (`serving.stream.prediction_sink`) with `store_stream_forecasts`, which is
  idempotent, so a batch re-read after a crash adds nothing.
`HistoryReader` is the read side the pipeline uses (the track record and the daily report).

SQLite runs in WAL mode with synchronous=NORMAL: a commit then costs no fsync (a crash can lose the last
few rows, never corrupt the file).
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    create_engine,
    event,
    func,
    insert,
    inspect,
    null,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from crypto_platform.settings import Settings

log = logging.getLogger(__name__)
metadata = MetaData()
MAX_BATCH = 512  # rows per transaction of the writer thread
# Rows waiting for the writer at most (CRYPTO_API_HISTORY_QUEUE_MAX): about 2 s of a saturated API on
# this machine, a few MB of memory. A database slower than that for longer is an outage, not a burst.
DEFAULT_QUEUE_MAX = 10_000
# How long a request waits for room in a full queue before its row is dropped (and counted) instead
# (CRYPTO_API_HISTORY_ENQUEUE_WAIT_S): long enough to ride out one slow commit, short enough that a
# stuck database does not stall serving.
DEFAULT_ENQUEUE_WAIT_S = 0.05
# How long the writer lets rows gather after the first one before it commits: at a few hundred
# requests a second a commit per row cost more CPU (SQLAlchemy's begin/insert/commit, with the GIL)
# than the requests themselves; 10 ms turns them into a few commits. A read (`flush`) and `close`
# cut the wait short.
DEFAULT_LINGER_S = 0.01


class UnknownCursorError(LookupError):
    """A tail's `before` cursor names no row (rows are never deleted, so it was never one)."""


signals = Table(
    "signals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("exchange", String(32), nullable=False),
    Column("timeframe", String(8), nullable=False),
    Column("horizon_min", Integer, nullable=False),
    Column("risk_score", Float, nullable=False),
    Column("nowcast_ret", Float, nullable=False),
    Column("vol_regime", String(16), nullable=False),
    Column("bar_ts", BigInteger, nullable=True),  # epoch ms: > 2^31
    Column("source", String(16), nullable=True),
    Column("payload", Text, nullable=False),
    Index("ix_signals_created_at", "created_at"),
)

ml_predictions = Table(
    "ml_predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("exchange", String(32), nullable=False),
    Column("timeframe", String(8), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("predicted_volatility", Float, nullable=False),
    Column("current_volatility", Float, nullable=True),
    Column("volatility_regime", String(16), nullable=False),
    Column("bar_ts", BigInteger, nullable=True),  # epoch ms: > 2^31
    Column("source", String(16), nullable=True),
    Column("payload", Text, nullable=False),
    # JSON [{level, lower, upper}, ...] (`intervals_column`), also inside the payload: the track record
    # reads them here without decoding the whole answer. Null: none, or a row stored before the column.
    Column("intervals", Text, nullable=True),
    Index("ix_ml_predictions_created_at", "created_at"),
)

stream_forecasts = Table(
    "stream_forecasts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),  # when the sink stored it (epoch s)
    Column("symbol", String(32), nullable=False),
    Column("timeframe", String(8), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("bar_ts", BigInteger, nullable=False),  # open time (epoch ms) of the bar the forecast is made at
    Column("predicted_volatility", Float, nullable=False),
    # JSON [{level, lower, upper}, ...]: the predictive intervals that came with it (null: none)
    Column("intervals", Text, nullable=True),
    Column("first_tick_ts", BigInteger, nullable=True),  # epoch ms of the first tick that carried it
    Column("source_topic", String(255), nullable=True),  # where that first prediction was read
    Column("source_partition", Integer, nullable=True),
    Column("source_offset", BigInteger, nullable=True),
    UniqueConstraint("symbol", "bar_ts", "model_version", name="uq_stream_forecasts_bar"),
    Index("ix_stream_forecasts_created_at", "created_at"),
    Index("ix_stream_forecasts_bar_ts", "bar_ts"),
)

# Nullable columns added after a table was first released: a database created by an older version gets
# them on start-up (its rows read as null); create_all never alters a table that exists.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "stream_forecasts": ("intervals",),
    "ml_predictions": ("intervals",),
}


class IntervalBounds(Protocol):
    """One predictive interval, whichever struct carries it (the API's answer, a `predictions` message)."""

    level: float
    lower: float
    upper: float


def intervals_column(intervals: Iterable[IntervalBounds] | None) -> str | None:
    """A forecast's intervals as both tables' `intervals` column stores them: JSON
    [{level, lower, upper}, ...]; None without any, or with a non-finite bound (an interval that cannot
    be checked against what happened)."""
    rows = [{"level": i.level, "lower": i.lower, "upper": i.upper} for i in intervals or ()]
    if not rows or not all(math.isfinite(v) for row in rows for v in row.values()):
        return None
    return json.dumps(rows, separators=(",", ":"))


def ensure_schema(engine: Engine) -> None:
    """Create the missing tables, then add the missing ADDED_COLUMNS to the tables that exist."""
    metadata.create_all(engine)
    inspector = inspect(engine)
    for table_name, columns in ADDED_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table_name)}
        for name in columns:
            if name in present:
                continue
            column = metadata.tables[table_name].c[name]
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f'ALTER TABLE {table_name} ADD COLUMN "{name}" {kind}'))
            log.info("history: added column %s.%s", table_name, name)


HISTORY_URL_ENV = "CRYPTO_API_HISTORY_URL"


def default_history_url(platform: Settings) -> str:
    """A SQLite file beside the local data, or under the working directory when data lives on S3."""
    base = Path("data") if platform.data_is_s3 else platform.local_data_path()
    return f"sqlite:///{(base / 'serving_history.db').resolve()}"


def history_url(platform: Settings, env: Mapping[str, str] | None = None) -> str:
    """The history DB of this environment: CRYPTO_API_HISTORY_URL, else `default_history_url`. The API,
    the prediction sink and the pipeline all resolve it here, so they read and write one database."""
    env = os.environ if env is None else env
    return env.get(HISTORY_URL_ENV, "").strip() or default_history_url(platform)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A small pool: requests hold a connection only for one insert or one indexed read.
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


class History:
    """Append-only history of served signals and predictions, written behind the request.

    `record_*` queues the row; one writer thread inserts whatever has queued up within `linger_s` of
    the first row (at most MAX_BATCH rows) in a single transaction. A request therefore never waits
    for the database, concurrent requests never contend for SQLite's write lock, and a burst costs
    one commit. A payload is either a mapping
    (serialised with `json.dumps` at once, so a NaN fails the request that produced it) or the JSON
    bytes already sent to the client (the ml-signal hot path: no second serialisation, the writer
    decodes them).

    The queue is bounded (`queue_max` rows). When it is full, `record_*` waits up to `enqueue_wait_s`
    for the writer to make room, then drops the row: it is logged, counted in `dropped` and reported
    to `on_drop` (the API's `crypto_api_history_dropped_total`, which an alert watches). Serving never
    blocks longer than that on a slow or stuck database, and memory stays bounded. (The wait runs on
    the caller's thread, for REST the event loop: while the queue is full the whole process slows to
    the database's pace for up to `enqueue_wait_s` per row, which is the back-pressure intended.)

    Reads (`tail_*`, `counts`) first wait until everything queued before them is written, so a client
    always reads its own writes. `close()` drains the queue: every row queued before it is written
    (the API closes the history in its shutdown, after uvicorn has finished the requests in flight, so
    a SIGTERM loses nothing); a row recorded after `close()` is dropped and counted.
    """

    def __init__(
        self,
        url: str,
        on_write_error: Callable[[int], None] | None = None,
        *,
        queue_max: int = DEFAULT_QUEUE_MAX,
        enqueue_wait_s: float = DEFAULT_ENQUEUE_WAIT_S,
        on_drop: Callable[[int], None] | None = None,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        if queue_max < 1:
            raise ValueError(f"history queue_max must be >= 1, got {queue_max}")
        self.url = url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(url)
        ensure_schema(self.engine)
        self.queue_max, self.enqueue_wait_s, self.linger_s = queue_max, enqueue_wait_s, linger_s
        self.write_errors = 0
        self.dropped = 0
        # Called with the number of rows lost (the API counts them in Prometheus counters).
        self.on_write_error = on_write_error
        self.on_drop = on_drop
        # The transport is unbounded (a C queue: the cheapest put); the bound is `_pending`, the rows
        # queued or being written, checked under `_idle` as each row is queued.
        self._queue: queue.SimpleQueue[tuple[Table, dict[str, Any]] | None] = queue.SimpleQueue()
        self._pending = 0
        self._closed = False
        self._idle = threading.Condition()
        self._write_now = threading.Event()  # set by flush() and close(): no lingering
        self._writer = threading.Thread(target=self._write_loop, name="history-writer", daemon=True)
        self._writer.start()

    @property
    def queue_depth(self) -> int:
        """Rows recorded and not yet written (queued, or in the transaction being committed)."""
        return self._pending

    def close(self) -> None:
        """Write everything queued so far, stop the writer, release the database."""
        with self._idle:
            self._closed = True
        self._write_now.set()
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
            if self._writer.is_alive():
                log.error("history: writer still busy after 30 s; %d row(s) not written", self._pending)
        self.engine.dispose()

    def record_signal(self, row: Mapping[str, Any], payload: Mapping[str, Any] | bytes) -> bool:
        return self._enqueue(signals, row, payload)

    def record_prediction(self, row: Mapping[str, Any], payload: Mapping[str, Any] | bytes) -> bool:
        return self._enqueue(ml_predictions, row, payload)

    def _enqueue(self, table: Table, row: Mapping[str, Any], payload: Mapping[str, Any] | bytes) -> bool:
        """Queue one row; False when it was dropped (queue full past the wait, or history closed)."""
        if isinstance(payload, bytes):
            encoded: str | bytes = payload  # already JSON (what the client got); decoded by the writer
        else:
            encoded = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        values = {**row, "payload": encoded}
        values.setdefault("created_at", time.time())
        with self._idle:
            if self._pending >= self.queue_max and not self._closed:
                # Back-pressure first: the writer frees a whole batch per commit.
                self._idle.wait_for(lambda: self._pending < self.queue_max, timeout=self.enqueue_wait_s)
            if self._closed or self._pending >= self.queue_max:
                self._drop(table, closed=self._closed)
                return False
            self._pending += 1
        self._queue.put((table, values))
        return True

    def _drop(self, table: Table, closed: bool) -> None:
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop(1)
        why = "the history is closed" if closed else f"the queue is full ({self.queue_max} rows)"
        # One line per power of two: a long outage must not flood the log at request rate.
        if self.dropped & (self.dropped - 1) == 0:
            log.error("history: %s row dropped: %s (%d dropped so far)", table.name, why, self.dropped)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is not None and self.linger_s > 0:
                self._write_now.wait(self.linger_s)  # let the rows of a burst join this transaction
            if not self._closed:
                self._write_now.clear()
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [b for b in batch if b is not None]
            if rows:
                self._write(rows)
            with self._idle:
                self._pending -= len(rows)
                self._idle.notify_all()
            if len(rows) != len(batch):  # the close() sentinel
                return

    def _write(self, rows: list[tuple[Table, dict[str, Any]]]) -> None:
        by_table: dict[str, tuple[Table, list[dict[str, Any]]]] = {}
        for table, values in rows:
            payload = values["payload"]
            if isinstance(payload, bytes):
                values["payload"] = payload.decode()
            by_table.setdefault(table.name, (table, []))[1].append(values)
        try:
            with self.engine.begin() as conn:
                for table, values in by_table.values():
                    conn.execute(insert(table), values)
        except Exception:  # a lost history row must not take serving down; it is logged and counted
            self.write_errors += len(rows)
            if self.on_write_error is not None:
                self.on_write_error(len(rows))
            log.exception("history: %d row(s) could not be written to %s", len(rows), self.engine.url)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row queued so far is written (or failed); False on timeout."""
        self._write_now.set()
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def tail_signals(self, n: int, before: int | None = None) -> list[dict[str, Any]]:
        return self._tail(signals, n, before)

    def tail_predictions(self, n: int, before: int | None = None) -> list[dict[str, Any]]:
        return self._tail(ml_predictions, n, before)

    def _tail(self, table: Table, n: int, before: int | None = None) -> list[dict[str, Any]]:
        """The last n rows, newest first, each the served payload plus `id` and `created_at`; with
        `before` (a row id), the n rows served just before that row (keyset paging on the same
        (created_at, id) order, so pages neither skip nor repeat rows while new ones arrive).
        UnknownCursorError when `before` names no row."""
        self.flush()
        query = select(table.c.id, table.c.created_at, table.c.payload).order_by(
            table.c.created_at.desc(), table.c.id.desc()
        )
        with self.engine.connect() as conn:
            if before is not None:
                cursor_at = conn.execute(select(table.c.created_at).where(table.c.id == before)).scalar()
                if cursor_at is None:
                    raise UnknownCursorError(f"no {table.name} row has id {before}")
                query = query.where(
                    or_(
                        table.c.created_at < cursor_at,
                        and_(table.c.created_at == cursor_at, table.c.id < before),
                    )
                )
            rows = conn.execute(query.limit(n)).all()
        return [{"id": r.id, "created_at": r.created_at, **json.loads(r.payload)} for r in rows]

    def counts(self) -> dict[str, int]:
        self.flush()
        with self.engine.connect() as conn:
            count = select(func.count())
            return {
                "signals": int(conn.execute(count.select_from(signals)).scalar_one()),
                "ml_predictions": int(conn.execute(count.select_from(ml_predictions)).scalar_one()),
            }

    def store_stream_forecasts(self, rows: Iterable[StreamForecast]) -> int:
        """Insert the scorer's per-bar forecasts in ONE transaction, synchronously (the sink commits its
        Kafka offsets only after this returns); a (symbol, bar, version) already stored is left as it is.
        Returns the number of new rows. Raises on a database error: nothing of the batch is stored."""
        return insert_stream_forecasts(self.engine, rows)


@dataclass(frozen=True)
class StreamForecast:
    """One forecast of the Kafka scorer: the champion `model_version`'s forecast at the bar `bar_ts`."""

    symbol: str
    timeframe: str
    model_version: str
    bar_ts: int
    predicted_volatility: float
    intervals: str | None = None  # JSON [{level, lower, upper}, ...] as the prediction carried them
    first_tick_ts: int | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None


def insert_stream_forecasts(engine: Engine, rows: Iterable[StreamForecast]) -> int:
    """Idempotent insert (ON CONFLICT DO NOTHING on the (symbol, bar_ts, model_version) key)."""
    now = time.time()
    values = [{**vars(r), "created_at": now} for r in rows]
    if not values:
        return 0
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise NotImplementedError(f"history: no idempotent insert for the {engine.dialect.name} dialect")
    statement = dialect_insert(stream_forecasts).on_conflict_do_nothing(
        index_elements=["symbol", "bar_ts", "model_version"]
    )
    with engine.begin() as conn:
        result = conn.execute(statement, values)
    # executemany reports the summed rowcount on SQLite and psycopg; -1 where a driver does not know
    return max(int(result.rowcount), 0)


# --------------------------------------------------------------------------------------------------
# The read side: what the pipeline (track record, daily report) reads back
# --------------------------------------------------------------------------------------------------

SERVED_FORECAST_COLUMNS = (
    "source",
    "symbol",
    "bar_ts",
    "model_version",
    "predicted_volatility",
    "created_at",
    "intervals",  # JSON [{level, lower, upper}, ...] or None
)
API_SOURCE = "api"
STREAM_SOURCE = "scorer"


class _PayloadInterval(msgspec.Struct):
    level: float
    lower: float
    upper: float


class _PayloadPrediction(msgspec.Struct):
    intervals: list[_PayloadInterval] | None = None


class _PayloadAnswer(msgspec.Struct):
    """The one field of a stored ml-signal answer the track record reads (the rest is skipped unread)."""

    ml_prediction: _PayloadPrediction | None = None


_PAYLOAD_DECODER = msgspec.json.Decoder(_PayloadAnswer)


def payload_intervals(payload: str | bytes | None) -> str | None:
    """`intervals_column` of a stored ml-signal answer's `ml_prediction.intervals`: what a row stored
    before ml_predictions had its `intervals` column carries only in its payload. None without any."""
    if not payload:
        return None
    try:
        prediction = _PAYLOAD_DECODER.decode(payload).ml_prediction
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return intervals_column(prediction.intervals) if prediction is not None else None


def stored_intervals(column: str | None, payload: str | bytes | None) -> str | None:
    """A stored forecast's intervals as `intervals_column` writes them: the row's `intervals` column,
    else (an API row stored before that column; `payload_unless_column` ships its payload) what its
    stored answer carries. The one reading of both, for the track record and the UI alike."""
    return column if column is not None else payload_intervals(payload)


def payload_unless_column(table: Table) -> Any:
    """A select column: `table.payload` where the row's `intervals` column is null, else SQL null, so
    only a row that may carry its intervals in the payload alone ships (and decodes) the payload."""
    return case((table.c.intervals.is_(None), table.c.payload), else_=null()).label("payload")


@dataclass(frozen=True)
class ServedCounts:
    """Rows stored with `created_at` in [start, end): API signals, API ML predictions, scorer forecasts."""

    signals: int
    ml_predictions: int
    stream_forecasts: int


class HistoryReader:
    """Reads the history DB without the writer thread. A SQLite file that does not exist is not created:
    `exists` is False and the caller reports 'no history' instead of an empty one."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.exists = True
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            self.exists = Path(url.removeprefix("sqlite:///")).exists()
        self.engine = make_engine(url) if self.exists else None
        if self.engine is not None:
            ensure_schema(self.engine)  # an API older than stream_forecasts: the table is added empty

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def counts_between(self, start_s: float, end_s: float) -> ServedCounts:
        if self.engine is None:
            return ServedCounts(0, 0, 0)

        def count(table: Table) -> int:
            query = select(func.count()).select_from(table)
            query = query.where(table.c.created_at >= start_s, table.c.created_at < end_s)
            return int(conn.execute(query).scalar_one())

        with self.engine.connect() as conn:
            return ServedCounts(count(signals), count(ml_predictions), count(stream_forecasts))

    def served_forecasts(self, first_bar_ms: int, end_bar_ms: int) -> list[dict[str, Any]]:
        """Every stored forecast made at a bar with open time in [first_bar_ms, end_bar_ms): the API's ML
        predictions (source `api`, one row per request) and the scorer's (source `scorer`, one per bar),
        as dicts with SERVED_FORECAST_COLUMNS. Rows without a bar are left out (nothing to score)."""
        if self.engine is None:
            return []
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for source, table in ((API_SOURCE, ml_predictions), (STREAM_SOURCE, stream_forecasts)):
                # Both tables keep the intervals in their `intervals` column; the API's rows stored
                # before it had that column carry them in the answer they stored (the payload) alone.
                api = table is ml_predictions
                query = select(
                    table.c.symbol,
                    table.c.bar_ts,
                    table.c.model_version,
                    table.c.predicted_volatility,
                    table.c.created_at,
                    table.c.intervals,
                    *((payload_unless_column(table),) if api else ()),
                ).where(table.c.bar_ts >= first_bar_ms, table.c.bar_ts < end_bar_ms)
                for row in conn.execute(query):
                    served = {"source": source, **row._mapping}
                    served["intervals"] = stored_intervals(served["intervals"], served.pop("payload", None))
                    out.append(served)
        return out
