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
