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
