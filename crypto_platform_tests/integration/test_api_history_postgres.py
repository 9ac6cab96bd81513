"""The history DB on a real PostgreSQL cluster (the full stack's configuration)."""

from __future__ import annotations

import pytest

from serving.core.history import History

pytestmark = pytest.mark.integration


def test_history_on_postgres(postgres_server):
    db = postgres_server.create_database("serving_history")
    history = History(db.url)
    try:
        for i in range(3):
            history.record_prediction(
                {
                    "created_at": 10.0 + i,
                    "symbol": "BTC/USDT",
                    "exchange": "binance",
                    "timeframe": "1h",
                    "model_version": "7",
                    "predicted_volatility": 0.02 + i,
                    "current_volatility": None,
                    "volatility_regime": "normal",
                    # epoch ms overflow Postgres `integer`: the column must be bigint
                    "bar_ts": 1_700_000_000_000 + i * 3_600_000,
                },
                {"i": i, "model_version": "7"},
            )
        assert [item["i"] for item in history.tail_predictions(2)] == [2, 1]
        assert history.counts() == {"signals": 0, "ml_predictions": 3}
    finally:
        history.close()


def _previous_release_table(db, create: str, insert: str, params: list | None = None) -> None:
    """A table as the previous release created it, with one row, written with plain psycopg2 (not
    through today's schema)."""
    import psycopg2

    conn = psycopg2.connect(
        host=db.host, port=db.port, user=db.user, password=db.password, dbname=db.database
    )
    try:
        with conn, conn.cursor() as cur:
            cur.execute(create)
            cur.execute(insert, params)
    finally:
        conn.close()


def test_a_stream_forecasts_table_from_before_the_intervals_column_is_upgraded(postgres_server):
    """The previous release's table (no `intervals`) on PostgreSQL gets the column when opened, and
    its rows stay."""
    import json

    from serving.core.history import HistoryReader, StreamForecast

    db = postgres_server.create_database("serving_history_upgrade")
    _previous_release_table(
        db,
        "CREATE TABLE stream_forecasts (id SERIAL PRIMARY KEY, created_at FLOAT NOT NULL, "
        "symbol VARCHAR(32) NOT NULL, timeframe VARCHAR(8) NOT NULL, "
        "model_version VARCHAR(32) NOT NULL, bar_ts BIGINT NOT NULL, "
        "predicted_volatility FLOAT NOT NULL, first_tick_ts BIGINT, source_topic VARCHAR(255), "
        "source_partition INTEGER, source_offset BIGINT, "
        "CONSTRAINT uq_stream_forecasts_bar UNIQUE (symbol, bar_ts, model_version))",
        "INSERT INTO stream_forecasts (created_at, symbol, timeframe, model_version, bar_ts, "
        "predicted_volatility) VALUES (1.0, 'BTC/USDT', '1h', '3', 1700000000000, 0.05)",
    )
    history = History(db.url)
    stored = json.dumps([{"level": 0.8, "lower": 0.04, "upper": 0.06}])
    history.store_stream_forecasts(
        [StreamForecast("ETH/USDT", "1h", "3", 1_700_000_000_000, 0.07, intervals=stored)]
    )
    history.close()
    with HistoryReader(db.url) as reader:
        rows = {r["symbol"]: r for r in reader.served_forecasts(0, 2**62)}
    assert rows["BTC/USDT"]["intervals"] is None and rows["BTC/USDT"]["predicted_volatility"] == 0.05
    assert json.loads(rows["ETH/USDT"]["intervals"]) == json.loads(stored)


def test_ml_predictions_from_before_the_intervals_column_keep_their_intervals(postgres_server):
    """The previous release's ml_predictions (no `intervals`) on PostgreSQL gets the column when opened;
    its rows read their intervals from the stored answer, new rows from the column, for the track
    record's reader and the UI's alike."""
    import json

    import msgspec

    from crypto_platform_tests.unit.test_history_intervals import INTERVALS, _answer
    from serving.api import evidence, operations
    from serving.api import evidence_schemas as es
    from serving.core.history import HistoryReader

    bar = 1_700_000_000_000
    db = postgres_server.create_database("serving_history_ml_upgrade")
    old = _answer("BTC/USDT", 0.05, INTERVALS)
    row = {k: v for k, v in operations.prediction_row(old, bar).items() if k != "intervals"}
    row |= {"created_at": 1.0, "payload": msgspec.json.encode(old).decode()}
    _previous_release_table(
        db,
        "CREATE TABLE ml_predictions (id SERIAL PRIMARY KEY, created_at FLOAT NOT NULL, "
        "symbol VARCHAR(32) NOT NULL, exchange VARCHAR(32) NOT NULL, timeframe VARCHAR(8) NOT NULL, "
        "model_version VARCHAR(32) NOT NULL, predicted_volatility FLOAT NOT NULL, "
        "current_volatility FLOAT, volatility_regime VARCHAR(16) NOT NULL, bar_ts BIGINT, "
        "source VARCHAR(16), payload TEXT NOT NULL)",
        f"INSERT INTO ml_predictions ({', '.join(row)}) VALUES ({', '.join('%s' for _ in row)})",
        list(row.values()),
    )
    history = History(db.url)
    try:
        new = _answer("ETH/USDT", 0.07, INTERVALS[1:])
        history.record_prediction(operations.prediction_row(new, bar), msgspec.json.encode(new))
        history.flush()
        with HistoryReader(db.url) as reader:
            served = {r["symbol"]: json.loads(r["intervals"]) for r in reader.served_forecasts(0, 2**62)}
        ui = {
            s: evidence.intervals_of(evidence.served_forecasts(history, s, "1h", bar, bar)[0].prediction)
            for s in ("BTC/USDT", "ETH/USDT")
        }
    finally:
        history.close()
    assert served == {"BTC/USDT": INTERVALS, "ETH/USDT": INTERVALS[1:]}
    assert ui == {s: [es.Interval(**i) for i in served[s]] for s in served}
