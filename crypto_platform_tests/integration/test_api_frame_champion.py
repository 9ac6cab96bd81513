"""A feature-frame champion (HAR+ with intervals) served by a real MLflow server over REST, GraphQL and gRPC.

The champion is registered under its own model name (fixtures/api.py `api_frame_champion`), so the
LSTM registry of test_api_ml.py is untouched. Every face returns the forecast of the contract (rows of
`har_plus_features(compute_features(bars))` over BTC and ETH at once, from the stored bars) with its
predictive intervals and 99 % VaR / ES; bad input is still a 4xx naming the field.
"""

from __future__ import annotations

import json
from dataclasses import replace

import polars as pl
import pytest
from sqlalchemy import select

from crypto_platform.lib.model.intervals import expected_shortfall, value_at_risk, volatility_interval
from crypto_platform.lib.model.windows import FEATURE_BARS
from crypto_platform_tests.fixtures.api import API_SYMBOLS, FRAME_MODEL_NAME, HOUR_MS, api_now
from crypto_platform_tests.fixtures.frame_models import frame_rows, simulated_bars
from crypto_platform_tests.integration.test_grpc import ServerThread, as_dict, call
from serving.api.services import build_services
from serving.core.history import ml_predictions
from serving.grpc.server import pb2

pytestmark = pytest.mark.integration

ML_FIELDS = (
    "predictedVolatility horizonHours volatilityRegime riskLevel currentVolatility confidence barTimestamp "
    "valueAtRisk expectedShortfall varLevel intervals { level lower upper }"
)


@pytest.fixture
def frame_settings(api_settings, api_frame_champion):
    return api_settings(mlflow_uri=api_frame_champion.tracking_uri, model_name=FRAME_MODEL_NAME)


@pytest.fixture
def frame_client(make_api_client, frame_settings):
    return make_api_client(frame_settings, start_model_poller=True)


def expected_forecasts(forecaster, last_closed_ms: int) -> dict[str, float]:
    """What the contract answers at the newest closed bar, from the simulated bars the store holds
    (fixtures/api.py writes `simulate_ohlcv(..., seed=7)`; a bar is the same whatever the window)."""
    end = last_closed_ms + HOUR_MS
    bars = simulated_bars(API_SYMBOLS, end - 2 * FEATURE_BARS * HOUR_MS, end, seed=7)
    out = forecaster.predict_frame(frame_rows(bars))
    at = out[out["ts"] == last_closed_ms]
    return dict(zip(at["symbol"], at["predicted_volatility"], strict=True))


def test_rest_serves_the_frame_champion_with_intervals_var_and_es(
    frame_client, api_frame_champion, api_last_closed_ms
):
    info = frame_client.get("/v1/ml/model/info").json()
    assert info["model_version"] == api_frame_champion.version
    assert (info["input_contract"], info["interval_levels"], info["symbols"]) == (
        "feature-frame/v1",
        [0.8, 0.95],
        list(API_SYMBOLS),
    )
    assert info["model_family"] == "har_plus" and info["sequence_length"] == 1
    expected = expected_forecasts(api_frame_champion.forecaster, api_last_closed_ms)
    dispersion = api_frame_champion.forecaster.dispersion
    served = {}
    for symbol in API_SYMBOLS:
        response = frame_client.post("/v1/crypto/ml-signal", json={"symbol": symbol})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == api_frame_champion.version
        ml = served[symbol] = body["ml_prediction"]
        predicted = ml["predicted_volatility"]
        assert predicted == pytest.approx(expected[symbol], rel=1e-6)
        assert [i["level"] for i in ml["intervals"]] == [0.8, 0.95]
        for interval in ml["intervals"]:
            lower, upper = volatility_interval(predicted, dispersion, interval["level"])
            assert (interval["lower"], interval["upper"]) == pytest.approx((float(lower), float(upper)))
        assert ml["var_level"] == 0.99
        assert ml["value_at_risk"] == pytest.approx(float(value_at_risk(predicted, 0.99)))
        assert ml["expected_shortfall"] == pytest.approx(float(expected_shortfall(predicted, 0.99)))
    # The history keeps what was served, intervals included.
    tail = frame_client.get("/v1/crypto/ml-predictions/tail").json()
    assert {row["symbol"]: row["ml_prediction"] for row in tail} == served
    # … and in its own column, which the track record and the UI read without decoding the answer
    with frame_client.app.state.services.history.engine.connect() as conn:
        columns = dict(conn.execute(select(ml_predictions.c.symbol, ml_predictions.c.intervals)).all())
    assert {symbol: json.loads(text) for symbol, text in columns.items()} == {
        symbol: ml["intervals"] for symbol, ml in served.items()
    }
    compare = frame_client.get("/v1/crypto/signals/compare", params={"symbol": "ETH/USDT"})
    assert compare.status_code == 200, compare.text
    assert compare.json()["ml"]["predicted_volatility"] == pytest.approx(expected["ETH/USDT"], rel=1e-6)


def test_bad_input_is_still_a_4xx(frame_client):
    for path in ("/v1/crypto/ml-signal", "/v1/crypto/ml-explain"):
        for body, field in (({"symbol": "BTC/USDT", "timeframe": "banana"}, "timeframe"), ({}, "symbol")):
            response = frame_client.post(path, json=body)
            assert response.status_code == 400 and field in response.text, (path, response.text)


def test_explain_occludes_each_feature_of_the_asked_symbol(
    frame_client, api_frame_champion, api_last_closed_ms
):
    """Each attribution is the served forecast minus the champion's forecast with that one feature of
    BTC at the scored bar set to the reference the answer names (HAR+ reads one row per symbol), ETH's
    row left as it is: recomputed here from the stored bars with the registered forecaster."""
    explain = frame_client.post("/v1/crypto/ml-explain", json={"symbol": "BTC/USDT"})
    assert explain.status_code == 200, explain.text
    body = explain.json()
    assert (body["method"], body["reference"]) == ("occlusion", "history_mean")
    served = frame_client.post("/v1/crypto/ml-signal", json={"symbol": "BTC/USDT"}).json()["ml_prediction"]
    assert body["predicted_volatility"] == pytest.approx(served["predicted_volatility"], rel=1e-12)
    features = frame_client.get("/v1/ml/model/info").json()["feature_columns"]
    assert sorted(a["feature"] for a in body["attributions"]) == sorted(features)

    forecaster = api_frame_champion.forecaster
    end = api_last_closed_ms + HOUR_MS
    bars = simulated_bars(API_SYMBOLS, end - 2 * FEATURE_BARS * HOUR_MS, end, seed=7)
    rows = frame_rows(bars).filter(pl.col("ts") == api_last_closed_ms)
    btc = pl.col("symbol") == "BTC/USDT"
    # the history the API loads: the last FEATURE_BARS bars of each symbol, their features computed alone
    loaded = frame_rows(simulated_bars(API_SYMBOLS, end - FEATURE_BARS * HOUR_MS, end, seed=7)).filter(btc)
    for attribution in body["attributions"]:
        name = attribution["feature"]
        history = loaded[name].cast(pl.Float64)
        assert attribution["reference_value"] == pytest.approx(history.filter(history.is_finite()).mean())
        assert attribution["last_value"] == pytest.approx(rows.filter(btc)[name][0], rel=1e-9)
        occluded_rows = rows.with_columns(
            pl.when(btc).then(pl.lit(attribution["reference_value"])).otherwise(pl.col(name)).alias(name)
        )
        out = forecaster.predict_frame(occluded_rows)
        occluded = float(out[out["symbol"] == "BTC/USDT"]["predicted_volatility"].iloc[0])
        assert attribution["occluded_prediction"] == pytest.approx(occluded, rel=1e-9), name
        assert attribution["attribution"] == pytest.approx(body["predicted_volatility"] - occluded, abs=1e-12)
    # sorted by size, and the model does read its features: most of them move the forecast
    sizes = [abs(a["attribution"]) for a in body["attributions"]]
    assert sizes == sorted(sizes, reverse=True)
    assert sum(size > 0 for size in sizes) >= len(sizes) // 2


def test_graphql_and_grpc_answer_what_rest_answers(frame_client, frame_settings, tmp_path):
    rest = frame_client.post("/v1/crypto/ml-signal", json={"symbol": "BTC/USDT"}).json()["ml_prediction"]
    query = (
        f'mutation {{ generateMlSignal(input: {{symbol: "BTC/USDT"}}) {{ mlPrediction {{ {ML_FIELDS} }} }} }}'
    )
    response = frame_client.post("/graphql", json={"query": query})
    assert response.status_code == 200, response.text
    graphql = response.json()["data"]["generateMlSignal"]["mlPrediction"]
    assert graphql["intervals"] == rest["intervals"]
    for field in ("predicted_volatility", "value_at_risk", "expected_shortfall", "var_level"):
        camel = field.split("_")[0] + "".join(p.title() for p in field.split("_")[1:])
        assert graphql[camel] == rest[field], field

    settings = replace(frame_settings, history_url=f"sqlite:///{tmp_path / 'grpc-history.db'}")
    server = ServerThread(build_services(settings, now_ms=api_now), start_model_poller=True).start()
    try:
        answer = as_dict(
            call(server.port, "GenerateMLPrediction", pb2.MLPredictionRequest(symbol="BTC/USDT"))
        )
    finally:
        server.stop()
    ml = answer["ml_prediction"]
    assert ml["intervals"] == rest["intervals"]
    for field in ("predicted_volatility", "value_at_risk", "expected_shortfall", "var_level"):
        assert ml[field] == rest[field], field


def test_frame_rows_for_the_check_above_are_the_stored_bars(api_data_dir, api_last_closed_ms):
    """The expected forecasts are computed from re-simulated bars: they are the bars the store holds."""
    from crypto_platform.lib.storage import open_store, read_ohlcv

    end = api_last_closed_ms + HOUR_MS
    stored = read_ohlcv(open_store(str(api_data_dir)), "BTC/USDT", end - 100 * HOUR_MS, end)
    again = simulated_bars(("BTC/USDT",), end - 100 * HOUR_MS, end, seed=7)
    columns = ["ts", "open", "high", "low", "close", "volume"]
    assert stored.select(columns).equals(again.select(columns).cast(stored.select(columns).schema))
    assert isinstance(stored, pl.DataFrame)
