"""History DB on a SQLite file: indexed tails, newest first, payload round-trip, no NaN stored."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import inspect

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
