"""History DB on a SQLite file: indexed tails, newest first, payload round-trip, no NaN stored; the bounded
write-behind queue (wait, then drop and count; close drains)."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time

import pytest
from sqlalchemy import event, inspect

from serving.core.history import History, UnknownCursorError


def _row(symbol: str, created_at: float, risk: float = 0.5) -> dict:
    return {
        "created_at": created_at, "symbol": symbol, "exchange": "binance", "timeframe": "1h",
        "horizon_min": 60, "risk_score": risk, "nowcast_ret": 0.0, "vol_regime": "calm",
    }  # fmt: skip


def test_tail_is_newest_first_and_returns_the_payload(tmp_path):
    history = History(f"sqlite:///{tmp_path / 'h.db'}")
    for i in range(5):
        history.record_signal(_row("BTC/USDT", 1000.0 + i, risk=i / 10), {"symbol": "BTC/USDT", "i": i})
    tail = history.tail_signals(3)
    assert [item["i"] for item in tail] == [4, 3, 2]
    assert tail[0]["created_at"] == 1004.0 and tail[0]["symbol"] == "BTC/USDT"
    assert history.counts() == {"signals": 5, "ml_predictions": 0}
    indexes = {ix["name"] for ix in inspect(history.engine).get_indexes("signals")}
    assert "ix_signals_created_at" in indexes
    history.close()


def test_history_survives_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    first = History(url)
    first.record_signal(_row("ETH/USDT", 1.0), {"n": 1})
    first.close()
    assert History(url).tail_signals(10)[0]["n"] == 1


def test_nan_never_reaches_the_db(tmp_path):
    history = History(f"sqlite:///{tmp_path / 'h.db'}")
    with pytest.raises(ValueError):
        history.record_signal(_row("BTC/USDT", 1.0), {"risk": math.nan})
    assert history.tail_signals(5) == []


def test_tail_pages_by_row_id_without_skipping_rows_served_at_the_same_time(tmp_path):
    history = History(f"sqlite:///{tmp_path / 'h.db'}")
    # Rows 2-4 share one created_at: the cursor must order them by id, not drop or repeat them.
    for i, at in enumerate((1.0, 2.0, 2.0, 2.0, 3.0)):
        history.record_signal(_row("BTC/USDT", at), {"i": i})
    first = history.tail_signals(2)
    second = history.tail_signals(2, before=first[-1]["id"])
    third = history.tail_signals(2, before=second[-1]["id"])
    assert [[r["i"] for r in page] for page in (first, second, third)] == [[4, 3], [2, 1], [0]]
    assert history.tail_signals(2, before=third[-1]["id"]) == []
    with pytest.raises(UnknownCursorError, match="id 99"):
        history.tail_signals(2, before=99)
    history.close()


# --- the bounded write-behind queue -------------------------------------------------------------------


@contextlib.contextmanager
def _database_locked(path):
    """Another connection holds SQLite's write lock: the writer thread blocks in its insert (up to the
    engine's busy_timeout), so rows stay queued for as long as the test needs."""
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield blocker
    finally:
        blocker.execute("COMMIT")
        blocker.close()


def test_a_full_queue_waits_then_drops_and_counts_the_row(tmp_path):
    path = tmp_path / "h.db"
    drops: list[int] = []
    history = History(f"sqlite:///{path}", queue_max=3, enqueue_wait_s=0.05, on_drop=drops.append)
    with _database_locked(path):
        assert all(history.record_signal(_row("BTC/USDT", float(i)), {"i": i}) for i in range(3))
        assert history.queue_depth == 3
        started = time.monotonic()
        assert history.record_signal(_row("BTC/USDT", 9.0), {"i": 9}) is False
        assert time.monotonic() - started >= 0.04  # it waited for room before giving up
    assert (history.dropped, drops) == (1, [1])
    assert [r["i"] for r in history.tail_signals(10)] == [2, 1, 0]
    assert history.queue_depth == 0
    history.close()


def test_a_full_queue_takes_the_row_when_the_writer_frees_room_within_the_wait(tmp_path):
    path = tmp_path / "h.db"
    history = History(f"sqlite:///{path}", queue_max=2, enqueue_wait_s=10.0)
    with _database_locked(path) as blocker:
        for i in range(2):
            history.record_signal(_row("BTC/USDT", float(i)), {"i": i})
        threading.Timer(0.2, lambda: blocker.execute("COMMIT")).start()
        assert history.record_signal(_row("BTC/USDT", 2.0), {"i": 2}) is True
        blocker.execute("BEGIN IMMEDIATE")  # what the context manager commits on the way out
    assert history.dropped == 0
    assert history.counts()["signals"] == 3
    history.close()


def test_close_writes_every_queued_row_and_drops_later_ones(tmp_path):
    path = tmp_path / "h.db"
    url = f"sqlite:///{path}"
    history = History(url)
    with _database_locked(path):
        for i in range(50):
            history.record_prediction(_prediction(float(i)), {"i": i})
        assert history.queue_depth == 50
        closing = threading.Thread(target=history.close)
        closing.start()
        time.sleep(0.1)
        assert closing.is_alive()  # close() waits for the writer, which waits for the database
    closing.join(timeout=30)
    assert not closing.is_alive()
    assert history.record_prediction(_prediction(99.0), {"i": 99}) is False
    assert history.dropped == 1
    reopened = History(url)
    assert reopened.counts() == {"signals": 0, "ml_predictions": 50}
    assert sorted(r["i"] for r in reopened.tail_predictions(100)) == list(range(50))
    reopened.close()


def test_a_pre_encoded_payload_is_stored_as_served(tmp_path):
    history = History(f"sqlite:///{tmp_path / 'h.db'}")
    body = b'{"symbol":"BTC/USDT","ml_prediction":{"predicted_volatility":0.0123}}'
    history.record_prediction(_prediction(5.0), body)
    (row,) = history.tail_predictions(5)
    assert row["ml_prediction"] == {"predicted_volatility": 0.0123} and row["created_at"] == 5.0
    history.close()


def test_queue_max_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="queue_max"):
        History(f"sqlite:///{tmp_path / 'h.db'}", queue_max=0)


def _prediction(created_at: float) -> dict:
    return {
        "created_at": created_at, "symbol": "BTC/USDT", "exchange": "binance", "timeframe": "1h",
        "model_version": "3", "predicted_volatility": 0.01, "current_volatility": 0.012,
        "volatility_regime": "calm",
    }  # fmt: skip


def test_rows_of_a_burst_share_one_transaction_and_a_read_does_not_wait_for_the_linger(tmp_path):
    history = History(f"sqlite:///{tmp_path / 'h.db'}", linger_s=5.0)
    commits: list[int] = []
    event.listen(history.engine, "commit", lambda _conn: commits.append(1))
    for i in range(20):
        history.record_signal(_row("BTC/USDT", float(i)), {"i": i})
    started = time.monotonic()
    assert history.counts()["signals"] == 20  # the read cuts the writer's 5 s linger short
    assert time.monotonic() - started < 2.5
    assert len(commits) == 1
    history.close()
