"""Contract of every endpoint that needs no model: status, fields, types; validation and error cases.

The app is the real one (`create_app`) over a data dir written the way the pipeline writes it
(fixtures/api.py), with a fresh SQLite history per test and no MLflow (so no model is loaded).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

# Until conftest registers fixtures/api.py (the lead's file), the plugin is required here.


@pytest.fixture
def client(make_api_client):
    return make_api_client()


def _assert_types(body: dict, types: dict) -> None:
    for key, kind in types.items():
        assert key in body, f"missing {key} in {sorted(body)}"
        assert isinstance(body[key], kind), f"{key}={body[key]!r} is not {kind}"


def _assert_bad_field(response, field: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert any(item.get("key") == field for item in body.get("extra") or []), body
    assert field in body["detail"] or any(item.get("key") == field for item in body["extra"])


def test_health_and_not_ready_without_a_model(client):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    # The seed's fields (status, ml_available, timestamp) beside today's (time, uptime_s).
    _assert_types(
        body, {"status": str, "ml_available": bool, "timestamp": str, "time": str, "uptime_s": float}
    )
    assert body["status"] == "ok" and body["ml_available"] is False
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0) and body["timestamp"].endswith("Z")
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready" and ready.json()["reason"]


def test_ohlcv_returns_closed_stored_bars(client, api_last_closed_ms):
    response = client.get("/v1/crypto/ohlcv", params={"symbol": "btcusdt", "limit": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    _assert_types(
        body, {"symbol": str, "exchange": str, "timeframe": str, "limit": int, "rows": int, "data": list}
    )
    assert (body["symbol"], body["rows"], body["source"], body["origin"]) == (
        "BTC/USDT",
        5,
        "simulated",
        "store",
    )
    rows = body["data"]
    assert [r["ts"] for r in rows] == [api_last_closed_ms - (4 - i) * 3_600_000 for i in range(5)]
    for row in rows:
        _assert_types(
            row, {"ts": int, "open": float, "high": float, "low": float, "close": float, "volume": float}
        )
        assert row["low"] <= min(row["open"], row["close"]) <= max(row["open"], row["close"]) <= row["high"]
        assert row["time"].endswith("Z")


def test_signal_contract_and_explain(client):
    response = client.post(
        "/v1/crypto/signal", json={"symbol": "BTC/USDT", "horizon_min": 240, "explain": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    _assert_types(
        body,
        {"symbol": str, "horizon_min": int, "risk_score": float, "nowcast_ret": float, "vol_regime": str},
    )
    assert body["method"] == "heuristic" and body["horizon_min"] == 240
    assert 0.0 <= body["risk_score"] <= 1.0
    assert body["vol_regime"] in ("calm", "normal", "turbulent")
    assert body["source"] == "simulated"
    assert len(body["explain"]["features_tail"]) == 5
    plain = client.post("/v1/crypto/signal", json={"symbol": "BTC/USDT"}).json()
    assert "explain" not in plain


def test_signal_for_a_symbol_not_in_the_store_comes_from_the_live_source(client, api_last_closed_ms):
    body = client.post("/v1/crypto/signal", json={"symbol": "SOL/USDT"}).json()
    assert body["symbol"] == "SOL/USDT" and body["source"] == "simulated"
    ohlcv = client.get("/v1/crypto/ohlcv", params={"symbol": "SOL/USDT", "limit": 3}).json()
    assert ohlcv["origin"] == "live" and ohlcv["data"][-1]["ts"] == api_last_closed_ms


def test_batch_reports_per_symbol_errors(client):
    response = client.post("/v1/crypto/signal/batch", json={"symbols": ["BTC/USDT", "ETHUSDT", "XRP/USDT"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2 and [r["symbol"] for r in body["results"]] == ["BTC/USDT", "ETH/USDT"]
    assert body["errors"][0]["symbol"] == "XRP/USDT" and body["errors"][0]["status_code"] == 400


def test_batch_size_is_bounded(make_api_client, api_settings):
    client = make_api_client(api_settings(max_batch=2))
    response = client.post("/v1/crypto/signal/batch", json={"symbols": ["BTC/USDT"] * 3})
    _assert_bad_field(response, "symbols")


def test_tails_are_bare_lists_newest_last_as_the_seed_served_them(client):
    for horizon in (15, 30, 45):
        assert (
            client.post("/v1/crypto/signal", json={"symbol": "ETH/USDT", "horizon_min": horizon}).status_code
            == 200
        )
    response = client.get("/v1/crypto/signals/tail", params={"n": 2})
    body = response.json()
    assert isinstance(body, list) and [item["horizon_min"] for item in body] == [30, 45]
    assert all(item["method"] == "heuristic" and isinstance(item["id"], int) for item in body)
    assert client.get("/v1/crypto/ml-predictions/tail").json() == []
    assert "link" not in client.get("/v1/crypto/ml-predictions/tail").headers


def test_tail_pages_follow_the_link_header_to_older_rows(client):
    for horizon in (10, 20, 30, 40, 50):
        client.post("/v1/crypto/signal", json={"symbol": "BTC/USDT", "horizon_min": horizon})
    seen, url, pages = [], "/v1/crypto/signals/tail?n=2", 0
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        seen = [item["horizon_min"] for item in response.json()] + seen  # each page is older
        pages += 1
        link = response.headers.get("link")
        url = link.split(">", 1)[0].lstrip("<") if link else None
        if link:
            assert link.endswith('; rel="next"') and "before=" in url and "n=2" in url
    assert pages == 3 and seen == [10, 20, 30, 40, 50]  # no row skipped or repeated
    newest = client.get("/v1/crypto/signals/tail", params={"n": 5}).json()
    assert "link" not in client.get("/v1/crypto/signals/tail", params={"n": 5}).headers
    older = client.get("/v1/crypto/signals/tail", params={"n": 5, "before": newest[-1]["id"]}).json()
    assert [item["horizon_min"] for item in older] == [10, 20, 30, 40]


def test_compare_without_model_gives_heuristic_and_reason(client):
    body = client.get("/v1/crypto/signals/compare", params={"symbol": "BTC/USDT"}).json()
    assert body["ml_available"] is False and "ml" not in body and body["ml_error"]
    assert body["heuristic"]["method"] == "heuristic"


def test_ml_endpoints_answer_503_without_a_model(client):
    for path in ("/v1/crypto/ml-signal", "/v1/crypto/ml-explain"):
        response = client.post(path, json={"symbol": "BTC/USDT"})
        assert response.status_code == 503, response.text
        assert "no " in response.json()["detail"]
    info = client.get("/v1/ml/model/info").json()
    assert info["model_loaded"] is False and info["last_error"]


def test_metrics_summary_counts_requests_and_signals(client):
    client.post("/v1/crypto/signal", json={"symbol": "BTC/USDT"})
    body = client.get("/v1/metrics/summary").json()
    _assert_types(
        body, {"start_time": str, "requests_total": int, "signals_total": int, "ml_available": bool}
    )
    assert body["signals_total"] == 1 and body["requests_total"] >= 2 and body["last_signal_at"]
    assert body["ml_predictions_total"] == 0 and body["last_ml_prediction_at"] is None


def test_prometheus_exposition_has_grouped_paths_and_model_gauge(client):
    client.get("/v1/crypto/ohlcv", params={"symbol": "BTC/USDT", "limit": 2})
    text = client.get("/metrics").text
    assert 'path="/v1/crypto/ohlcv"' in text
    assert "crypto_api_model_loaded 0.0" in text


def test_features_endpoint_has_no_nan(client):
    body = client.get("/v1/crypto/features", params={"symbol": "BTC/USDT", "n": 768}).json()
    assert len(body["rows"]) == 768
    # The oldest rows are within the 720-bar warm-up: undefined features are null, never NaN.
    assert body["rows"][0]["realized_vol_720"] is None
    last = body["rows"][-1]
    assert all(last[c] is not None and math.isfinite(last[c]) for c in body["columns"])


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        ("post", "/v1/crypto/signal", {"symbol": "DOGE/USDT"}, "symbol"),
        ("post", "/v1/crypto/signal", {"symbol": "not a symbol!"}, "symbol"),
        ("post", "/v1/crypto/signal", {"symbol": "BTC/USDT", "timeframe": "7m"}, "timeframe"),
        ("post", "/v1/crypto/signal", {"symbol": "BTC/USDT", "exchange": "kraken"}, "exchange"),
        ("post", "/v1/crypto/signal", {"symbol": "BTC/USDT", "limit": 5}, "limit"),
        ("post", "/v1/crypto/signal", {"symbol": "BTC/USDT", "horizon_min": 0}, "horizon_min"),
        ("post", "/v1/crypto/signal", {"horizon_min": 60}, "symbol"),
        ("post", "/v1/crypto/ml-signal", {"symbol": "BTC/USDT", "timeframe": "banana"}, "timeframe"),
        ("get", "/v1/crypto/ohlcv", {"symbol": "BTC/USDT", "limit": 0}, "limit"),
        ("get", "/v1/crypto/ohlcv", {"symbol": "BTC/USDT", "limit": 1001}, "limit"),
        ("get", "/v1/crypto/ohlcv", {"symbol": "BTC/USDT", "timeframe": "3h"}, "timeframe"),
        ("get", "/v1/crypto/ohlcv", {"symbol": "__import__"}, "symbol"),
        ("get", "/v1/crypto/signals/tail", {"n": 0}, "n"),
        ("get", "/v1/crypto/signals/tail", {"n": 1001}, "n"),
        ("get", "/v1/crypto/ml-predictions/tail", {"n": "many"}, "n"),
        ("get", "/v1/crypto/signals/tail", {"before": 0}, "before"),
        ("get", "/v1/crypto/signals/tail", {"before": "newest"}, "before"),
        ("get", "/v1/crypto/ml-predictions/tail", {"before": 424242}, "before"),
    ],
)
def test_bad_input_is_400_naming_the_field(client, method, path, payload, field):
    response = client.post(path, json=payload) if method == "post" else client.get(path, params=payload)
    _assert_bad_field(response, field)


def test_malformed_json_is_400_not_500(client):
    response = client.post(
        "/v1/crypto/signal", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_exchange_failure_is_502(make_api_client, api_settings, closed_port_url):
    settings = api_settings(
        platform={
            "market_source": "exchange",
            "exchange_api_url": closed_port_url,
            "exchange_retry_budget_s": 0.2,
        }
    )
    client = make_api_client(settings)
    response = client.get("/v1/crypto/ohlcv", params={"symbol": "SOL/USDT", "limit": 3})
    assert response.status_code == 502, response.text
    assert "SOL/USDT" in response.json()["detail"]
    # Symbols the store covers are still served from it.
    assert client.get("/v1/crypto/ohlcv", params={"symbol": "BTC/USDT", "limit": 3}).status_code == 200


def test_openapi_schema_and_ui_are_served(client):
    schema = client.get("/schema/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/v1/crypto/signal", "/v1/crypto/ml-signal", "/v1/crypto/ohlcv", "/v1/ml/model/reload"):
        assert path in paths
