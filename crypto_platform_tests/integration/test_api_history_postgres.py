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


def test_a_stream_forecasts_table_from_before_the_intervals_column_is_upgraded(postgres_server):
    """The previous release's table (no `intervals`) on PostgreSQL gets the column when opened, and
    its rows stay."""
    import json

    import psycopg2

    from serving.core.history import HistoryReader, StreamForecast

    db = postgres_server.create_database("serving_history_upgrade")
    conn = psycopg2.connect(
        host=db.host, port=db.port, user=db.user, password=db.password, dbname=db.database
    )
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE stream_forecasts (id SERIAL PRIMARY KEY, created_at FLOAT NOT NULL, "
                "symbol VARCHAR(32) NOT NULL, timeframe VARCHAR(8) NOT NULL, "
                "model_version VARCHAR(32) NOT NULL, bar_ts BIGINT NOT NULL, "
                "predicted_volatility FLOAT NOT NULL, first_tick_ts BIGINT, source_topic VARCHAR(255), "
                "source_partition INTEGER, source_offset BIGINT, "
                "CONSTRAINT uq_stream_forecasts_bar UNIQUE (symbol, bar_ts, model_version))"
            )
            cur.execute(
                "INSERT INTO stream_forecasts (created_at, symbol, timeframe, model_version, bar_ts, "
                "predicted_volatility) VALUES (1.0, 'BTC/USDT', '1h', '3', 1700000000000, 0.05)"
            )
    finally:
        conn.close()
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
