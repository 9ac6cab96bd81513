"""The prediction sink's parsing and the history DB's stream_forecasts table (SQLite file; no Kafka)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from crypto_platform.lib.stream.ticks import format_timestamp
from serving.core.history import History, HistoryReader, StreamForecast
from serving.stream.prediction_sink import forecasts_of

HOUR_MS = 3_600_000
BAR = 1_718_000_000_000 // HOUR_MS * HOUR_MS


@dataclass
class _Record:
    value: bytes
    topic: str = "predictions"
    partition: int = 0
    offset: int = 0


def _prediction(symbol: str, bar_ms: int | None, value: float | None, version: str | None = "3", tick_s=10):
    payload = {
        "symbol": symbol,
        "timestamp": format_timestamp((bar_ms or BAR) + HOUR_MS + tick_s * 1000),
        "price": 100.0,
        "risk_score": 0.3,
        "vol_regime": "normal",
        "nowcast_ret": 0.0,
        "predicted_volatility": value,
        "model_version": version,
        "bar_timestamp": format_timestamp(bar_ms) if bar_ms is not None else None,
        "late": False,
        "source": {"topic": "crypto-prices", "partition": 0, "offset": 1},
        "latency_ms": 3,
    }
    return json.dumps(payload).encode()


def test_one_forecast_per_bar_and_version_is_kept_and_the_rest_counted():
    records = [
        _Record(_prediction("BTC/USDT", BAR, 0.05, tick_s=1), offset=0),
        _Record(_prediction("BTC/USDT", BAR, 0.05, tick_s=2), offset=1),  # same bar: a later tick
        _Record(_prediction("BTC/USDT", BAR, 0.06, version="4"), offset=2),  # new champion, same bar
        _Record(_prediction("ETH/USDT", BAR + HOUR_MS, 0.07), offset=3),
        _Record(_prediction("ETH/USDT", BAR, None, version=None), offset=4),  # no model yet
        _Record(_prediction("ETH/USDT", None, None), offset=5),  # no bar yet
        _Record(b"not json", offset=6),
        _Record(_prediction("ETH/USDT", BAR, -1.0), offset=7),  # a broken forecast is not stored
    ]
    parsed = forecasts_of(records, "1h")
    assert [(f.symbol, f.bar_ts, f.model_version, f.predicted_volatility) for f in parsed.forecasts] == [
        ("BTC/USDT", BAR, "3", 0.05),
        ("BTC/USDT", BAR, "4", 0.06),
        ("ETH/USDT", BAR + HOUR_MS, "3", 0.07),
    ]
    first = parsed.forecasts[0]
    assert (first.source_offset, first.first_tick_ts) == (0, BAR + HOUR_MS + 1000)
    assert (parsed.duplicates, parsed.no_forecast, parsed.malformed) == (1, 2, 2)


def test_stream_forecasts_are_stored_once_and_read_back_with_the_api_predictions(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    history = History(url)
    rows = [StreamForecast("BTC/USDT", "1h", "3", BAR + i * HOUR_MS, 0.05 + i / 100) for i in range(3)]
    assert history.store_stream_forecasts(rows) == 3
    # a batch read again after a crash (offsets not committed) adds nothing
    assert (
        history.store_stream_forecasts([*rows, StreamForecast("BTC/USDT", "1h", "3", BAR + 3 * HOUR_MS, 0.1)])
        == 1
    )
    history.record_prediction(
        {
            "symbol": "ETH/USDT",
            "exchange": "binance",
            "timeframe": "1h",
            "model_version": "3",
            "predicted_volatility": 0.04,
            "current_volatility": 0.03,
            "volatility_regime": "normal",
            "bar_ts": BAR + HOUR_MS,
            "source": "exchange",
        },
        {"symbol": "ETH/USDT"},
    )
    history.record_signal(
        {
            "symbol": "ETH/USDT",
            "exchange": "binance",
            "timeframe": "1h",
            "horizon_min": 60,
            "risk_score": 0.1,
            "nowcast_ret": 0.0,
            "vol_regime": "calm",
            "bar_ts": BAR,
            "source": "exchange",
        },
        {"symbol": "ETH/USDT"},
    )
    history.flush()
    history.close()

    with HistoryReader(url) as reader:
        served = reader.served_forecasts(BAR + HOUR_MS, BAR + 3 * HOUR_MS)
        counts = reader.counts_between(0, 2**40)
        assert reader.counts_between(0, 1).stream_forecasts == 0
    assert sorted((r["source"], r["symbol"], r["bar_ts"]) for r in served) == [
        ("api", "ETH/USDT", BAR + HOUR_MS),
        ("scorer", "BTC/USDT", BAR + HOUR_MS),
        ("scorer", "BTC/USDT", BAR + 2 * HOUR_MS),
    ]
    assert (counts.signals, counts.ml_predictions, counts.stream_forecasts) == (1, 1, 4)


def test_a_missing_history_file_is_reported_not_created(tmp_path):
    path = tmp_path / "absent.db"
    with HistoryReader(f"sqlite:///{path}") as reader:
        assert not reader.exists and reader.served_forecasts(0, 2**62) == []
    assert not path.exists()


def _with_intervals(record: bytes, intervals) -> bytes:
    return json.dumps({**json.loads(record), "intervals": intervals}).encode()


def test_the_intervals_a_prediction_carries_are_stored_with_its_forecast(tmp_path):
    intervals = [{"level": 0.8, "lower": 0.04, "upper": 0.06}, {"level": 0.95, "lower": 0.03, "upper": 0.08}]
    records = [
        _Record(_with_intervals(_prediction("BTC/USDT", BAR, 0.05), intervals), offset=0),
        _Record(_with_intervals(_prediction("ETH/USDT", BAR, 0.07), None), offset=1),  # a model without
    ]
    parsed = forecasts_of(records, "1h")
    assert [json.loads(f.intervals) if f.intervals else None for f in parsed.forecasts] == [intervals, None]
    url = f"sqlite:///{tmp_path / 'history.db'}"
    history = History(url)
    history.store_stream_forecasts(parsed.forecasts)
    history.close()
    with HistoryReader(url) as reader:
        served = {r["symbol"]: r["intervals"] for r in reader.served_forecasts(0, 2**62)}
    assert json.loads(served["BTC/USDT"]) == intervals and served["ETH/USDT"] is None


def test_a_history_db_from_before_the_intervals_column_gets_it_and_keeps_its_rows(tmp_path):
    """A database the previous release created (stream_forecasts without `intervals`) is upgraded when
    the API or the sink opens it: the column is added, the old rows read back with no intervals."""
    import sqlite3

    path = tmp_path / "history.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE stream_forecasts (id INTEGER PRIMARY KEY, created_at FLOAT NOT NULL, "
            "symbol VARCHAR(32) NOT NULL, timeframe VARCHAR(8) NOT NULL, model_version VARCHAR(32) NOT NULL, "
            "bar_ts BIGINT NOT NULL, predicted_volatility FLOAT NOT NULL, first_tick_ts BIGINT, "
            "source_topic VARCHAR(255), source_partition INTEGER, source_offset BIGINT, "
            "CONSTRAINT uq_stream_forecasts_bar UNIQUE (symbol, bar_ts, model_version))"
        )
        conn.execute(
            "INSERT INTO stream_forecasts (created_at, symbol, timeframe, model_version, bar_ts, "
            f"predicted_volatility) VALUES (1.0, 'BTC/USDT', '1h', '3', {BAR}, 0.05)"
        )
    url = f"sqlite:///{path}"
    history = History(url)
    stored = '[{"level":0.8,"lower":1,"upper":2}]'
    history.store_stream_forecasts([StreamForecast("ETH/USDT", "1h", "3", BAR, 0.07, intervals=stored)])
    history.close()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(stream_forecasts)")]
    assert "intervals" in columns
    with HistoryReader(url) as reader:
        rows = {r["symbol"]: r for r in reader.served_forecasts(0, 2**62)}
    assert rows["BTC/USDT"]["predicted_volatility"] == 0.05 and rows["BTC/USDT"]["intervals"] is None
    assert json.loads(rows["ETH/USDT"]["intervals"]) == [{"level": 0.8, "lower": 1, "upper": 2}]
