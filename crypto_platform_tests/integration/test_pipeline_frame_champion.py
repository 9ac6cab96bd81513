"""A champion the pipeline itself trained on the feature-frame contract, served end to end.

`ml_retrain_job` (fast preset, `candidates: ["har_plus"]`, so the gate chooses between HAR+ and plain
HAR only) trains on simulated BTC and ETH features stored as the pipeline stores them, on a real
`mlflow server`; `model_promotion` makes the gate's winner the first champion and `feature_drift`
judges the latest week against that champion's reference. Then the API (the in-process Litestar app
of fixtures/api.py, polling the same registry) answers ml-signal from it: the forecast of the
registered model on the stored bars, with its predictive intervals and 99 % VaR / ES.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import mlflow
import polars as pl
import pytest
from dagster import instance_for_test
from mlflow import MlflowClient

from crypto_platform.lib.features import MODEL_FEATURES
from crypto_platform.lib.model import registry
from crypto_platform.lib.model.frame_serving import FRAME_CONTRACT, INPUT_CONTRACT_TAG
from crypto_platform.lib.model.har_features import HAR_PLUS_FEATURES
from crypto_platform.lib.model.intervals import expected_shortfall, value_at_risk
from crypto_platform.lib.model.packaging import OUTPUT_COLUMN
from crypto_platform.lib.model.tags import CANDIDATE_TAG, FEATURES_TAG
from crypto_platform.lib.model.training import LABEL_COLUMN
from crypto_platform.lib.model.windows import FEATURE_BARS
from crypto_platform.lib.storage import drift_report_key, open_store
from crypto_platform_tests.fixtures.api import API_NOW_MS, API_SYMBOLS, HOUR_MS, write_pipeline_store
from crypto_platform_tests.fixtures.frame_models import frame_rows, simulated_bars
from crypto_platform_tests.integration.ml_defs import asset_metadata, ml_definitions, ml_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "crypto-volatility-pipeline-frame-test"
STORED_DAYS, TRAINING_DAYS, DRIFT_DAYS = 90, 80, 7
LAST_CLOSED_END_MS = API_NOW_MS // HOUR_MS * HOUR_MS  # the store ends with the newest closed bar
LAST_DAY = datetime.fromtimestamp(LAST_CLOSED_END_MS / 1000 - 1, tz=UTC).date().isoformat()
SEED = 7  # write_pipeline_store's default: the API test helpers re-simulate the same bars


@pytest.fixture(scope="module")
def pipeline_run(mlflow_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("frame-champion-data")
    write_pipeline_store(data, API_SYMBOLS, LAST_CLOSED_END_MS, STORED_DAYS, seed=SEED)
    defs = ml_definitions(ml_settings(data, mlflow_server.url), MODEL)
    run_config = {
        "ops": {
            "trained_model": {
                "config": {
                    "fast": True,
                    "training_days": TRAINING_DAYS,
                    "end_date": LAST_DAY,
                    "candidates": ["har_plus"],
                }
            },
            "feature_drift": {"config": {"end_date": LAST_DAY, "current_days": DRIFT_DAYS}},
        }
    }
    with instance_for_test() as instance:
        result = defs.resolve_job_def("ml_retrain_job").execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False
        )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    yield {"result": result, "data": data, "client": MlflowClient(mlflow_server.url)}


def test_the_gate_chose_among_the_named_candidates_and_the_frame_champion_was_promoted(pipeline_run):
    result, client = pipeline_run["result"], pipeline_run["client"]
    trained = asset_metadata(result, "trained_model")
    # only the named challenger, what it builds on (nothing) and the reference were walked forward
    assert set(trained["walk_forward"]["candidates"]) == {"har", "har_plus"}, trained["walk_forward"]
    assert list(trained["gate"]["verdicts"]) == ["har_plus"]
    # on simulated bars HAR+'s range-based regressors beat plain HAR clearly: the gate promotes it
    assert trained["gate_winner"] == "har_plus", trained["gate"]
    assert trained["input_contract"] == FRAME_CONTRACT
    assert "challengers considered" in trained["model_card"] and "har_plus" in trained["model_card"]
    promotion = asset_metadata(result, "model_promotion")
    assert promotion["promoted"] and promotion["champion_version"] == trained["model_version"]
    champion = registry.alias_version(client, registry.CHAMPION, MODEL)
    assert str(champion.version) == trained["model_version"]
    assert champion.tags[INPUT_CONTRACT_TAG] == FRAME_CONTRACT and champion.tags[CANDIDATE_TAG] == "har_plus"


def test_feature_drift_judges_a_frame_champion_on_the_stored_features_it_was_computed_from(pipeline_run):
    result, client = pipeline_run["result"], pipeline_run["client"]
    champion = registry.alias_version(client, registry.CHAMPION, MODEL)
    model_columns = json.loads(champion.tags[FEATURES_TAG])
    # the frame champion reads HAR+ columns that the stored features (and so the reference) do not hold
    assert set(HAR_PLUS_FEATURES) & set(model_columns)
    drift = asset_metadata(result, "feature_drift")
    assert drift["champion_version"] == str(champion.version)
    assert drift["n_current"] == DRIFT_DAYS * 24 * len(API_SYMBOLS) and drift["n_reference"] > 0
    report = json.loads(open_store(str(pipeline_run["data"])).read_bytes(drift_report_key(LAST_DAY)))
    judged = {f["feature"] for f in report["features"]}
    # The reference holds the stored model features only: the champion's columns among them are judged,
    # and when it reads none of them directly, every stored model feature (the label apart).
    stored = set(MODEL_FEATURES) - {LABEL_COLUMN}
    assert judged == (set(model_columns) & stored or stored), (judged, model_columns)
    assert not judged & set(HAR_PLUS_FEATURES)


def _registered_forecasts(tracking_uri: str) -> dict[str, float]:
    """The registered champion's forecast at the newest closed bar, fed the contract's rows from the
    bars the store holds (re-simulated: a simulated bar is the same whatever the window)."""
    mlflow.set_tracking_uri(tracking_uri)
    served = mlflow.pyfunc.load_model(registry.champion_uri(MODEL))
    bars = simulated_bars(
        API_SYMBOLS, LAST_CLOSED_END_MS - 2 * FEATURE_BARS * HOUR_MS, LAST_CLOSED_END_MS, seed=SEED
    )
    out = pl.from_pandas(served.predict(frame_rows(bars).to_pandas()))
    at = out.filter(pl.col("ts") == LAST_CLOSED_END_MS - HOUR_MS)
    return dict(zip(at["symbol"], at[OUTPUT_COLUMN], strict=True))


def test_the_api_serves_the_pipeline_champion_with_intervals_and_var(
    pipeline_run, mlflow_server, api_settings, make_api_client
):
    trained = asset_metadata(pipeline_run["result"], "trained_model")
    settings = api_settings(
        mlflow_uri=mlflow_server.url,
        model_name=MODEL,
        platform={"data_location": str(pipeline_run["data"])},
    )
    client = make_api_client(settings, start_model_poller=True)
    info = client.get("/v1/ml/model/info").json()
    assert info["model_version"] == trained["model_version"]
    assert (info["input_contract"], info["model_family"]) == ("feature-frame/v1", "har_plus")
    expected = _registered_forecasts(mlflow_server.url)
    for symbol in API_SYMBOLS:
        response = client.post("/v1/crypto/ml-signal", json={"symbol": symbol})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == trained["model_version"]
        ml = body["ml_prediction"]
        predicted = ml["predicted_volatility"]
        assert predicted == pytest.approx(expected[symbol], rel=1e-6)
        assert [i["level"] for i in ml["intervals"]] == list(info["interval_levels"]) and ml["intervals"]
        for interval in ml["intervals"]:
            assert 0 < interval["lower"] < predicted < interval["upper"]
        assert ml["var_level"] == 0.99
        assert ml["value_at_risk"] == pytest.approx(float(value_at_risk(predicted, 0.99)))
        assert ml["expected_shortfall"] == pytest.approx(float(expected_shortfall(predicted, 0.99)))
