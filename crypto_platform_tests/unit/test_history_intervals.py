"""The served forecasts' predictive intervals in the history DB (SQLite file): the API's answers store them
in `ml_predictions.intervals`, the track record and the UI read that column, and a row stored before the
column existed (null there, the intervals only inside its stored answer) still reads back with them."""

from __future__ import annotations

import json
import math
import sqlite3

import msgspec
import pytest

from serving.api import evidence, operations, schemas
from serving.api import evidence_schemas as es
from serving.core.history import History, HistoryReader, intervals_column

HOUR_MS = 3_600_000
BAR = 1_718_000_000_000 // HOUR_MS * HOUR_MS
INTERVALS = [{"level": 0.8, "lower": 0.03, "upper": 0.06}, {"level": 0.95, "lower": 0.02, "upper": 0.08}]
# ml_predictions as the release before the `intervals` column created it
OLD_ML_PREDICTIONS = (
    "CREATE TABLE ml_predictions (id INTEGER PRIMARY KEY, created_at FLOAT NOT NULL, "
    "symbol VARCHAR(32) NOT NULL, exchange VARCHAR(32) NOT NULL, timeframe VARCHAR(8) NOT NULL, "
    "model_version VARCHAR(32) NOT NULL, predicted_volatility FLOAT NOT NULL, current_volatility FLOAT, "
    "volatility_regime VARCHAR(16) NOT NULL, bar_ts BIGINT, source VARCHAR(16), payload TEXT NOT NULL)"
)


def _answer(symbol: str, value: float, intervals: list[dict] | None) -> schemas.MLSignalResponse:
    """An ml-signal answer as the API sends it (what `operations.ml_signal_body` encodes and stores)."""
    served = [schemas.PredictionInterval(**i) for i in intervals] if intervals is not None else None
    prediction = schemas.MLPrediction(
        predicted_volatility=value, horizon_hours=24.0, volatility_regime="normal", risk_level="medium",
        current_volatility=0.04, confidence=0.7, prediction_timestamp="2024-06-10T07:01:00Z",
        bar_timestamp="2024-06-10T06:00:00Z", intervals=served, value_at_risk=0.1,
        expected_shortfall=0.12, var_level=0.99,
    )  # fmt: skip
    return schemas.MLSignalResponse(
        symbol=symbol, method="ml", timestamp="2024-06-10T07:01:00Z", model_version="4",
        ml_prediction=prediction, exchange="binance", timeframe="1h", source="exchange",
    )  # fmt: skip


def _serve(history: History, answer: schemas.MLSignalResponse, bar_ts: int) -> None:
    history.record_prediction(operations.prediction_row(answer, bar_ts), msgspec.json.encode(answer))


def test_intervals_column_is_the_json_list_or_none():
    served = [schemas.PredictionInterval(**i) for i in INTERVALS]
    assert json.loads(intervals_column(served)) == INTERVALS
    assert intervals_column(None) is None and intervals_column([]) is None
    # an interval with a non-finite bound cannot be checked against what happened
    broken = [schemas.PredictionInterval(level=0.8, lower=0.01, upper=math.inf)]
    assert intervals_column(broken) is None


def test_an_answer_with_intervals_stores_them_in_the_column(tmp_path):
    url = f"sqlite:///{tmp_path / 'history.db'}"
    history = History(url)
    _serve(history, _answer("BTC/USDT", 0.05, INTERVALS), BAR)
    _serve(history, _answer("ETH/USDT", 0.07, None), BAR)  # a model without dispersion
    history.close()
    with sqlite3.connect(tmp_path / "history.db") as conn:
        stored = dict(conn.execute("SELECT symbol, intervals FROM ml_predictions").fetchall())
    assert json.loads(stored["BTC/USDT"]) == INTERVALS and stored["ETH/USDT"] is None


def test_the_column_is_what_the_track_record_and_the_ui_read(tmp_path):
    """A row whose column holds intervals and whose stored answer holds none: both readers report the
    column's (the answer is not decoded for them)."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    history = History(url)
    row = operations.prediction_row(_answer("BTC/USDT", 0.05, INTERVALS), BAR)
    history.record_prediction(row, {"ml_prediction": {"predicted_volatility": 0.05}})
    history.flush()
    with HistoryReader(url) as reader:
        (served,) = reader.served_forecasts(0, 2**62)
    (ui_row,) = evidence.served_forecasts(history, "BTC/USDT", "1h", BAR, BAR)
    history.close()
    assert json.loads(served["intervals"]) == INTERVALS
    assert evidence.interval_of(ui_row.prediction) == es.Interval(lower=0.03, upper=0.06, level=0.8)


@pytest.fixture
def upgraded_history(tmp_path) -> tuple[str, History]:
    """A database of the previous release (ml_predictions without `intervals`) holding one answer with
    intervals (BTC) and one without (ETH), opened by this release, which then serves SOL with intervals."""
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as conn:
        conn.execute(OLD_ML_PREDICTIONS)
        for symbol, intervals in (("BTC/USDT", INTERVALS), ("ETH/USDT", None)):
            answer = _answer(symbol, 0.05, intervals)
            row = {k: v for k, v in operations.prediction_row(answer, BAR).items() if k != "intervals"}
            row |= {"created_at": 1.0, "payload": msgspec.json.encode(answer).decode()}
            conn.execute(
                f"INSERT INTO ml_predictions ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                list(row.values()),
            )
    url = f"sqlite:///{path}"
    history = History(url)
    sol = [{"level": 0.8, "lower": 0.01, "upper": 0.02}]
    _serve(history, _answer("SOL/USDT", 0.015, sol), BAR)
    history.flush()
    yield url, history
    history.close()


def test_rows_from_before_the_column_read_their_intervals_from_the_stored_answer(upgraded_history, tmp_path):
    url, history = upgraded_history
    with sqlite3.connect(tmp_path / "history.db") as conn:
        columns = {row[1]: row for row in conn.execute("PRAGMA table_info(ml_predictions)")}
        stored = dict(conn.execute("SELECT symbol, intervals FROM ml_predictions").fetchall())
    assert "intervals" in columns and stored["BTC/USDT"] is None  # added; old rows left as they were
    with HistoryReader(url) as reader:
        served = {r["symbol"]: r["intervals"] for r in reader.served_forecasts(0, 2**62)}
    assert json.loads(served["BTC/USDT"]) == INTERVALS  # from the stored answer
    assert served["ETH/USDT"] is None  # an old answer without intervals
    assert json.loads(served["SOL/USDT"]) == [{"level": 0.8, "lower": 0.01, "upper": 0.02}]  # the column
    ui = {
        symbol: evidence.interval_of(evidence.served_forecasts(history, symbol, "1h", BAR, BAR)[0].prediction)
        for symbol in ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    }
    assert ui == {
        "BTC/USDT": es.Interval(lower=0.03, upper=0.06, level=0.8),
        "ETH/USDT": None,
        "SOL/USDT": es.Interval(lower=0.01, upper=0.02, level=0.8),
    }
