"""Every served signal and ML prediction, in a real database (SQLite file by default, Postgres in the stack).

SQLAlchemy Core, two tables indexed on `created_at` (epoch seconds, float). Tails are read newest
first through that index, paged by a row-id cursor; the full response body is kept as JSON so a tail
returns exactly what was served. SQLite runs in WAL mode with synchronous=NORMAL: a commit then costs
no fsync (a crash can lose the last few rows, never corrupt the file). Rows are written behind the
request by one writer thread (see `History`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import Engine

from serving.api.metrics import HISTORY_WRITE_ERRORS

log = logging.getLogger(__name__)
metadata = MetaData()
MAX_BATCH = 512  # rows per transaction of the writer thread


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
    Index("ix_ml_predictions_created_at", "created_at"),
)


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

    `record_*` serialises the row (so a NaN fails the request that produced it) and queues it; one writer
    thread inserts whatever has queued up in a single transaction. A request therefore never waits for
    the database, concurrent requests never contend for SQLite's write lock, and a burst costs one
    commit. Reads (`tail_*`, `counts`) first wait until everything queued before them is written, so a
    client always reads its own writes. `close()` drains the queue.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(url)
        metadata.create_all(self.engine)
        self.write_errors = 0
        self._queue: queue.SimpleQueue[tuple[Table, dict[str, Any]] | None] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._writer = threading.Thread(target=self._write_loop, name="history-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
        self.engine.dispose()

    def record_signal(self, row: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        self._enqueue(signals, row, payload)

    def record_prediction(self, row: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        self._enqueue(ml_predictions, row, payload)

    def _enqueue(self, table: Table, row: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        values = {**row, "payload": json.dumps(payload, separators=(",", ":"), allow_nan=False)}
        values.setdefault("created_at", time.time())
        with self._idle:
            self._pending += 1
        self._queue.put((table, values))

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
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
            by_table.setdefault(table.name, (table, []))[1].append(values)
        try:
            with self.engine.begin() as conn:
                for table, values in by_table.values():
                    conn.execute(insert(table), values)
        except Exception:  # a lost history row must not take serving down; it is logged and counted
            self.write_errors += len(rows)
            HISTORY_WRITE_ERRORS.inc(len(rows))
            log.exception("history: %d row(s) could not be written to %s", len(rows), self.engine.url)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row queued so far is written (or failed); False on timeout."""
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
