"""The API against a real `mlflow server`: champion loading, ML contract, parity, reload, swap, MLflow down.

The champion is a tiny LSTM trained in the session (fixtures/api.py) and registered on the server; a
second version (a servable naive baseline) is the swap target. Tests that move the alias put it back.
"""

from __future__ import annotations

import math
import threading
import time

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from crypto_platform.lib.features import MODEL_FEATURES
from crypto_platform.lib.model import registry
from crypto_platform.lib.model.windows import latest_window
from crypto_platform.lib.storage import FEATURES_ASSET, open_store, read_partitioned
from serving.api.settings import ApiKeySpec

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
KEYS = (ApiKeySpec("ops", "admin", ADMIN_KEY), ApiKeySpec("dash", "reader", READER_KEY))


@pytest.fixture
def ml_client(make_api_client, api_settings, api_champion):
    settings = api_settings(mlflow_uri=api_champion.tracking_uri, api_keys=KEYS)
    return make_api_client(settings, start_model_poller=True)


@pytest.fixture
def mlflow_client(api_champion):
    client = MlflowClient(tracking_uri=api_champion.tracking_uri)
    yield client
    registry.move_alias(client, registry.CHAMPION, api_champion.lstm_version, MODEL_NAME)


MODEL_NAME = "crypto-volatility-api-test"  # fixtures/api.py registers the champion under this name


def _stored_features(data_dir, symbol: str, last_closed_ms: int):
    """The pipeline's `features` rows for the last 900 stored bars of `symbol`."""
    bars = 900
    end = last_closed_ms + 3_600_000
    frame, _ = read_partitioned(
        open_store(str(data_dir)), FEATURES_ASSET, symbol, end - bars * 3_600_000, end
    )
    return frame


def test_champion_is_loaded_and_ml_signal_matches_the_registered_model(
    ml_client, api_champion, api_data_dir, api_last_closed_ms
):
    # Anonymous probes learn ready or not; the served version is for callers with a key.
    assert ml_client.get("/ready").json() == {"status": "ready", "model_loaded": True}
    assert ml_client.get("/ready", headers={"X-API-Key": READER_KEY}).json() == {
        "status": "ready",
        "model_loaded": True,
        "model_version": api_champion.lstm_version,
    }
    assert ml_client.get("/health").json()["ml_available"] is True  # the seed's liveness field
    response = ml_client.post("/v1/crypto/ml-signal", json={"symbol": "BTC/USDT"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["symbol"], body["method"], body["model_version"]) == (
        "BTC/USDT",
        "ml",
        api_champion.lstm_version,
    )
    ml = body["ml_prediction"]
    for key in ("predicted_volatility", "horizon_hours", "confidence"):
        assert isinstance(ml[key], float) and math.isfinite(ml[key])
    assert ml["horizon_hours"] == 24.0 and 0.0 < ml["confidence"] <= 1.0
    assert ml["volatility_regime"] in ("calm", "normal", "turbulent") and ml["risk_level"] in (
        "low",
        "medium",
        "high",
    )
    assert body["heuristic_comparison"]["method"] == "heuristic"
    assert body["source"] == "simulated"

    # The same version loaded the standard MLflow way, fed the stored `features` asset's last window.
    mlflow.set_tracking_uri(api_champion.tracking_uri)
    reference = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{api_champion.lstm_version}")
    window = latest_window(_stored_features(api_data_dir, "BTC/USDT", api_last_closed_ms), MODEL_FEATURES).X
    expected = float(reference.predict(window)["predicted_volatility"][0])
    assert ml["predicted_volatility"] == pytest.approx(expected, rel=1e-5)

    tail = ml_client.get("/v1/crypto/ml-predictions/tail", params={"n": 5}).json()
    assert len(tail) == 1 and tail[0]["ml_prediction"]["predicted_volatility"] == ml["predicted_volatility"]
    summary = ml_client.get("/v1/metrics/summary").json()
    assert summary["ml_available"] is True and summary["ml_predictions_total"] == 1
    metrics = ml_client.get("/metrics").text
    assert "crypto_api_model_loaded 1.0" in metrics
    assert f'version="{api_champion.lstm_version}"' in metrics
    assert "crypto_api_prediction_latency_seconds_count" in metrics


def test_api_features_equal_the_stored_features_asset(ml_client, api_data_dir, api_last_closed_ms):
    """Parity: the API recomputes features from the last 768 stored bars; the pipeline's `features`
    asset computed them over the whole stored history. The model window's values must agree."""
    for symbol in ("BTC/USDT", "ETH/USDT"):
        api = ml_client.get("/v1/crypto/features", params={"symbol": symbol, "n": 48}).json()
        stored = _stored_features(api_data_dir, symbol, api_last_closed_ms).tail(48)
        assert [row["ts"] for row in api["rows"]] == stored["ts"].to_list()
        for column in api["columns"]:
            np.testing.assert_allclose(
                [row[column] for row in api["rows"]],
                stored[column].to_numpy(),
                rtol=1e-9,
                atol=1e-12,
                err_msg=f"{symbol} {column}",
            )


def test_model_info_explain_and_compare(ml_client, api_champion):
    info = ml_client.get("/v1/ml/model/info").json()
    assert info["model_loaded"] is True and info["model_version"] == api_champion.lstm_version
    assert info["model_family"] == "lstm" and info["alias"] == "champion" and info["run_id"]
    assert info["sequence_length"] == 48 and info["feature_columns"] == list(MODEL_FEATURES)
    assert info["metrics"]["holdout_qlike"] == pytest.approx(0.123)

    explain = ml_client.post("/v1/crypto/ml-explain", json={"symbol": "ETH/USDT"}).json()
    assert explain["method"] == "occlusion" and explain["reference"] == "training_mean"
    assert sorted(a["feature"] for a in explain["attributions"]) == sorted(MODEL_FEATURES)
    magnitudes = [abs(a["attribution"]) for a in explain["attributions"]]
    assert magnitudes == sorted(magnitudes, reverse=True) and magnitudes[0] > 0
    for a in explain["attributions"]:
        assert a["attribution"] == pytest.approx(explain["predicted_volatility"] - a["occluded_prediction"])

    compare = ml_client.get("/v1/crypto/signals/compare", params={"symbol": "ETH/USDT"}).json()
    assert compare["ml_available"] is True and compare["model_version"] == api_champion.lstm_version
    assert compare["ml"]["predicted_volatility"] == pytest.approx(explain["predicted_volatility"], rel=1e-6)
    assert isinstance(compare["regimes_agree"], bool)


def test_reload_needs_admin_and_swaps_to_the_new_champion(ml_client, api_champion, mlflow_client):
    assert ml_client.post("/v1/ml/model/reload").status_code == 401
    assert (
        ml_client.post("/v1/ml/model/reload", headers={"X-API-Key": "wrong-key-0123456789"}).status_code
        == 401
    )
    assert ml_client.post("/v1/ml/model/reload", headers={"X-API-Key": READER_KEY}).status_code == 403
    same = ml_client.post("/v1/ml/model/reload", headers={"X-API-Key": ADMIN_KEY}).json()
    assert same["success"] and same["old_version"] == same["new_version"] == api_champion.lstm_version

    registry.move_alias(mlflow_client, registry.CHAMPION, api_champion.baseline_version, MODEL_NAME)
    moved = ml_client.post("/v1/ml/model/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert moved.status_code == 200
    assert moved.json() == {
        "success": True,
        "old_version": api_champion.lstm_version,
        "new_version": api_champion.baseline_version,
        "message": f"loaded version {api_champion.baseline_version}",
    }
    info = ml_client.get("/v1/ml/model/info").json()
    assert info["model_family"] == "baseline:naive"
    body = ml_client.post(
        "/v1/crypto/ml-signal", json={"symbol": "BTC/USDT", "include_heuristic": False}
    ).json()
    assert body["model_version"] == api_champion.baseline_version and "heuristic_comparison" not in body
    # The naive baseline forecasts the current 24-bar realized volatility.
    assert body["ml_prediction"]["predicted_volatility"] == pytest.approx(
        body["ml_prediction"]["current_volatility"], rel=1e-6
    )


@pytest.mark.filterwarnings("ignore:.*Add type hints:UserWarning")
def test_a_version_that_fails_to_load_leaves_the_old_model_serving(ml_client, api_champion, mlflow_client):
    class NotAForecaster(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.set_tracking_uri(api_champion.tracking_uri)
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(
            name="broken", python_model=NotAForecaster(), pip_requirements=["mlflow"]
        )
    broken = registry.register_version(
        mlflow_client, info.model_uri, run.info.run_id, {}, model_name=MODEL_NAME
    )
    registry.move_alias(mlflow_client, registry.CHAMPION, broken.version, MODEL_NAME)
    outcome = ml_client.post("/v1/ml/model/reload", headers={"X-API-Key": ADMIN_KEY}).json()
    assert outcome["success"] is False and outcome["new_version"] == api_champion.lstm_version
    assert "still serving" in outcome["message"]
    response = ml_client.post("/v1/crypto/ml-signal", json={"symbol": "BTC/USDT"})
    assert response.status_code == 200 and response.json()["model_version"] == api_champion.lstm_version
    assert ml_client.get("/ready").status_code == 200


def test_swap_under_concurrent_requests_fails_no_request(
    make_api_client, api_settings, api_champion, mlflow_client
):
    # No rate limit here: the hammering threads would hit it long before the swaps are done.
    settings = api_settings(mlflow_uri=api_champion.tracking_uri, api_keys=KEYS, rate_limit_per_minute=0)
    ml_client = make_api_client(settings, start_model_poller=True)
    versions = (api_champion.lstm_version, api_champion.baseline_version)
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer(symbol: str) -> None:
        while not stop.is_set():
            response = ml_client.post(
                "/v1/crypto/ml-signal", json={"symbol": symbol, "include_heuristic": False}
            )
            seen.append((response.status_code, response.json().get("model_version")))

    threads = [threading.Thread(target=hammer, args=(s,)) for s in ("BTC/USDT", "ETH/USDT", "BTC/USDT")]
    for thread in threads:
        thread.start()
    try:
        for i in range(4):
            registry.move_alias(mlflow_client, registry.CHAMPION, versions[(i + 1) % 2], MODEL_NAME)
            reload = ml_client.post("/v1/ml/model/reload", headers={"X-API-Key": ADMIN_KEY}).json()
            assert reload["success"], reload
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    statuses = {status for status, _ in seen}
    assert statuses == {200}, f"failed requests during the swap: {statuses}"
    assert {version for _, version in seen} == set(versions)


def test_mlflow_down_serves_heuristics_and_is_not_ready(
    make_api_client, api_settings, closed_port_url, monkeypatch
):
    # The MLflow client otherwise retries for minutes; the poller keeps retrying on its own schedule.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    client = make_api_client(
        api_settings(mlflow_uri=closed_port_url, model_poll_s=1.0, api_keys=KEYS), start_model_poller=True
    )
    anonymous = client.get("/ready")
    assert anonymous.status_code == 503 and "connect" not in anonymous.json()["reason"].lower()
    ready = client.get("/ready", headers={"X-API-Key": READER_KEY})
    assert ready.status_code == 503
    assert "connect" in ready.json()["reason"].lower(), ready.json()
    assert client.post("/v1/crypto/signal", json={"symbol": "BTC/USDT"}).status_code == 200
    assert client.post("/v1/crypto/ml-signal", json={"symbol": "BTC/USDT"}).status_code == 503
    assert client.get("/v1/metrics/summary").json()["ml_available"] is False
    # The poller keeps trying in the background (every second here, while nothing is loaded).
    models = client.app.state.services.models
    first_check = models.last_check
    deadline = time.monotonic() + 20
    while models.last_check == first_check:
        assert time.monotonic() < deadline, "the model poller stopped retrying"
        time.sleep(0.2)


def test_poller_follows_the_alias_without_a_reload_call(
    make_api_client, api_settings, api_champion, mlflow_client
):
    client = make_api_client(
        api_settings(mlflow_uri=api_champion.tracking_uri, model_poll_s=0.5), start_model_poller=True
    )
    assert client.get("/v1/ml/model/info").json()["model_version"] == api_champion.lstm_version
    registry.move_alias(mlflow_client, registry.CHAMPION, api_champion.baseline_version, MODEL_NAME)
    deadline = time.monotonic() + 30
    while client.get("/v1/ml/model/info").json()["model_version"] != api_champion.baseline_version:
        assert time.monotonic() < deadline, "the poller did not pick up the new champion in 30 s"
        time.sleep(0.2)
    assert client.get("/v1/ml/model/info").json()["model_version"] == api_champion.baseline_version


def test_every_ml_signal_served_is_recorded_with_the_body_the_client_got(ml_client, api_champion):
    """k requests (two symbols, with and without the heuristic, served from the pre-encoded answers) →
    k history rows, each holding exactly the JSON its client received and the matching columns."""
    from sqlalchemy import select

    from serving.core.history import ml_predictions

    requests_made = [
        {"symbol": "BTC/USDT"},
        {"symbol": "ETH/USDT"},
        {"symbol": "BTCUSDT", "include_heuristic": False},
        {"symbol": "ETH/USDT", "include_heuristic": False},
    ] * 3
    served = []
    for body in requests_made:
        response = ml_client.post("/v1/crypto/ml-signal", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        served.append(response.json())
    assert {s["symbol"] for s in served} == {"BTC/USDT", "ETH/USDT"}
    assert all(
        ("heuristic_comparison" in s) == ("include_heuristic" not in r)
        for s, r in zip(served, requests_made, strict=True)
    )
    # Each answer carries its own request time, in both "now" fields.
    assert all(s["timestamp"] == s["ml_prediction"]["prediction_timestamp"] for s in served)
    assert len({s["timestamp"] for s in served}) > 1

    tail = ml_client.get("/v1/crypto/ml-predictions/tail", params={"n": 100}).json()  # newest last
    assert len(tail) == len(requests_made)
    assert [{k: v for k, v in row.items() if k not in ("id", "created_at")} for row in tail] == served
    services = ml_client.app.state.services
    with services.history.engine.connect() as conn:
        rows = conn.execute(select(ml_predictions).order_by(ml_predictions.c.id)).all()
    assert [(r.symbol, r.model_version, r.predicted_volatility, r.volatility_regime) for r in rows] == [
        (
            s["symbol"],
            s["model_version"],
            s["ml_prediction"]["predicted_volatility"],
            s["ml_prediction"]["volatility_regime"],
        )
        for s in served
    ]
    assert services.counters.ml_predictions_total == len(requests_made)
