"""ML automation against a real Dagster instance and a real MLflow server: the retrain sensor (drift,
due, cooldown), the reload-after-promotion sensor (a real HTTP endpoint), and the cross-run gate that
stops `trained_model` when the training window's bars failed a blocking check."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterRunStatus,
    MetadataValue,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from mlflow import MlflowClient

from crypto_platform.defs.ml.config import DRIFT_JOB, RELOAD_PATH, RETRAIN_COOLDOWN_S, RETRAIN_JOB
from crypto_platform.defs.ml.sensors import (
    REASONS_TAG,
    REQUESTED_AT_TAG,
    TRIGGER_TAG,
    RetrainInputs,
    decide_retrain,
)
from crypto_platform.defs.resources import MarketDataResource
from crypto_platform.devtools.ports import free_port
from crypto_platform.lib.market.source import MarketData
from crypto_platform.lib.model import registry
from crypto_platform_tests.integration.market_runs import check_results, run_range
from crypto_platform_tests.integration.ml_defs import ml_definitions, ml_resource, ml_settings

pytestmark = pytest.mark.integration
SENSOR_MODEL = "crypto-volatility-sensor-test"


class _Const(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        return pd.DataFrame({"predicted_volatility": np.full(len(model_input), 0.02)})


@pytest.fixture(scope="module")
def fresh_champion(mlflow_server) -> str:
    """A just-registered champion in its own registered model: the champion is neither missing nor old."""
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("ml-sensor-test")
    client = MlflowClient(mlflow_server.url)
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Const(), pip_requirements=["mlflow"])
    version = registry.register_version(client, info.model_uri, run.info.run_id, {}, model_name=SENSOR_MODEL)
    registry.move_alias(client, registry.CHAMPION, version.version, SENSOR_MODEL)
    return str(version.version)


def _tick(defs, name: str, instance, resource, cursor: str | None = None):
    sensor = defs.resolve_sensor_def(name)
    # closing the context releases the instance it opened from the ref; left open, Dagster's
    # current defs-state storage keeps pointing at that instance after it is collected
    with build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"ml": resource},
        repository_def=defs.get_repository_def(),  # an asset sensor resolves its assets in it
    ) as context:
        return sensor.evaluate_tick(context)


def _report(instance, asset: str, **metadata) -> None:
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=AssetKey(asset), metadata={k: _meta(v) for k, v in metadata.items()})
    )


def _meta(value):
    return MetadataValue.json(value) if isinstance(value, list) else value


def _retrain_run(defs, instance, requested_at: float) -> None:
    """A finished ml_retrain_job run as the sensor's request leaves it (the cooldown's clock)."""
    instance.create_run_for_job(
        defs.resolve_job_def(RETRAIN_JOB),
        status=DagsterRunStatus.SUCCESS,
        tags={REQUESTED_AT_TAG: f"{requested_at:.3f}"},
    )


def test_drift_requests_a_retrain_and_the_cooldown_holds(tmp_path, mlflow_server, fresh_champion):
    settings = ml_settings(tmp_path / "data", mlflow_server.url)
    defs = ml_definitions(settings, SENSOR_MODEL)
    resource = ml_resource(settings, SENSOR_MODEL)
    sensor = defs.resolve_sensor_def("ml_retrain_sensor")
    assert sensor.job_name == RETRAIN_JOB
    # an asset sensor on the drift and track-record assets
    assert {k.to_user_string() for k in sensor._monitored_assets} == {
        "feature_drift",
        "forecast_track_record",
    }
    with instance_for_test() as instance:
        quiet = _tick(defs, "ml_retrain_sensor", instance, resource)
        assert not quiet.run_requests and "no retrain due" in quiet.skip_message

        _report(instance, "feature_drift", feature_drift_detected=False, drifted_features=[])
        calm = _tick(defs, "ml_retrain_sensor", instance, resource, cursor=quiet.cursor)
        assert not calm.run_requests

        _report(instance, "feature_drift", feature_drift_detected=True, drifted_features=["log_volume"])
        first = _tick(defs, "ml_retrain_sensor", instance, resource, cursor=calm.cursor)
        assert len(first.run_requests) == 1
        request = first.run_requests[0]
        assert request.tags[TRIGGER_TAG] == "drift" and "log_volume" in request.tags[REASONS_TAG]
        assert float(request.tags[REQUESTED_AT_TAG]) == pytest.approx(time.time(), abs=60)
        _retrain_run(defs, instance, float(request.tags[REQUESTED_AT_TAG]))  # the daemon launched it

        # the verdict that triggered the request does not trigger again
        answered = _tick(defs, "ml_retrain_sensor", instance, resource, cursor=first.cursor)
        assert not answered.run_requests and "no retrain due" in answered.skip_message
        # the retrain re-evaluated drift and still finds it (the market really moved): inside the
        # cooldown that asks for nothing, so drift the retrain cannot cure does not loop
        _report(instance, "feature_drift", feature_drift_detected=True, drifted_features=["log_volume"])
        second = _tick(defs, "ml_retrain_sensor", instance, resource, cursor=answered.cursor)
        assert not second.run_requests and second.skip_message.startswith("cooldown")

        # the cooldown has passed (the last retrain is older than it): the held-back verdict is answered
        _retrain_run(defs, instance, time.time() - RETRAIN_COOLDOWN_S - 60)
        assert (
            len(_tick(defs, "ml_retrain_sensor", instance, resource, cursor=second.cursor).run_requests) == 1
        )


def test_a_champion_worse_than_a_baseline_on_live_data_requests_a_retrain(
    tmp_path, mlflow_server, fresh_champion
):
    settings = ml_settings(tmp_path / "data", mlflow_server.url)
    defs = ml_definitions(settings, SENSOR_MODEL)
    resource = ml_resource(settings, SENSOR_MODEL)
    live = {"champion": 0.61, "har": 0.55}
    with instance_for_test() as instance:
        better_live = MetadataValue.json({"champion": 0.5, "har": 0.55})
        _report(
            instance,
            "forecast_track_record",
            champion_worse_than_best_baseline=False,
            live_qlike=better_live,
            best_baseline="har",
        )
        better = _tick(defs, "ml_retrain_sensor", instance, resource)
        assert not better.run_requests and "no retrain due" in better.skip_message
        _report(
            instance,
            "forecast_track_record",
            champion_worse_than_best_baseline=True,
            live_qlike=MetadataValue.json(live),
            best_baseline="har",
            window="2026-04-01..2026-04-07",
        )
        worse = _tick(defs, "ml_retrain_sensor", instance, resource, cursor=better.cursor)
    (request,) = worse.run_requests
    assert request.tags[TRIGGER_TAG] == "track_record"
    assert "0.61 vs har 0.55 over 2026-04-01..2026-04-07" in request.tags[REASONS_TAG]


def test_missing_champion_is_a_due_retrain_and_fast_config_is_passed(tmp_path, mlflow_server):
    settings = ml_settings(tmp_path / "data", mlflow_server.url)
    defs = ml_definitions(settings, "crypto-volatility-never-trained")
    resource = ml_resource(settings, "crypto-volatility-never-trained", fast_training=True)
    with instance_for_test() as instance:
        data = _tick(defs, "ml_retrain_sensor", instance, resource)
    (request,) = data.run_requests
    assert request.tags[TRIGGER_TAG] == "due" and "no champion" in request.tags[REASONS_TAG]
    assert request.run_config == {"ops": {"trained_model": {"config": {"fast": True}}}}


def test_retrain_decision_rules():
    now = 1_000_000.0
    base = RetrainInputs(now, None, True, now - 10, ("rsi_14",), 3600.0, None, 0)
    assert isinstance(decide_retrain(base), RunRequest)
    in_flight = decide_retrain(RetrainInputs(now, None, True, now - 10, (), 3600.0, None, 1))
    assert isinstance(in_flight, SkipReason) and "in flight" in in_flight.skip_message
    old = decide_retrain(RetrainInputs(now, None, False, now - 10, (), 30 * 86400.0, None, 0))
    assert isinstance(old, RunRequest) and "days old" in old.tags[REASONS_TAG]
    # an unreachable registry is not taken for a missing champion
    unknown = decide_retrain(RetrainInputs(now, None, False, now - 10, (), None, "connection refused", 0))
    assert isinstance(unknown, SkipReason) and "registry unknown" in unknown.skip_message
    # the live track record is a reason of its own, unless it predates the last retrain
    live = RetrainInputs(now, now - 100, False, None, (), 3600.0, None, 0, True, now - 10, "0.6 vs har 0.5")
    request = decide_retrain(live, cooldown_s=50)
    assert isinstance(request, RunRequest) and request.tags[TRIGGER_TAG] == "track_record"
    stale = RetrainInputs(now, now - 100, False, None, (), 3600.0, None, 0, True, now - 200, "")
    assert isinstance(decide_retrain(stale, cooldown_s=50), SkipReason)


class _ReloadHandler(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        type(self).calls.append({"path": self.path, "key": self.headers.get("X-API-Key", "")})
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serving_stub() -> Iterator[str]:
    """A real HTTP endpoint standing in for the serving API (not the subject of the test)."""
    _ReloadHandler.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _ReloadHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_reload_is_posted_after_a_promotion_only(tmp_path, mlflow_server, serving_stub):
    settings = ml_settings(tmp_path / "data", mlflow_server.url)
    defs = ml_definitions(settings, SENSOR_MODEL)
    resource = ml_resource(settings, SENSOR_MODEL, serving_url=serving_stub, admin_api_key="s3cret")
    with instance_for_test() as instance:
        assert "no new" in _tick(defs, "ml_model_reload_sensor", instance, resource).skip_message
        _report(instance, "model_promotion", promoted=False)
        rejected = _tick(defs, "ml_model_reload_sensor", instance, resource)
        assert "none promoted" in rejected.skip_message and _ReloadHandler.calls == []

        _report(instance, "model_promotion", promoted=True)
        promoted = _tick(defs, "ml_model_reload_sensor", instance, resource, cursor=rejected.cursor)
        assert "HTTP 202" in promoted.skip_message
        assert _ReloadHandler.calls == [{"path": RELOAD_PATH, "key": "s3cret"}]
        again = _tick(defs, "ml_model_reload_sensor", instance, resource, cursor=promoted.cursor)
        assert "no new" in again.skip_message and len(_ReloadHandler.calls) == 1

        unset = ml_resource(settings, SENSOR_MODEL)
        skipped = _tick(defs, "ml_model_reload_sensor", instance, unset, cursor=rejected.cursor)
        assert "unset" in skipped.skip_message and len(_ReloadHandler.calls) == 1


class _InconsistentBars(MarketDataResource):
    """Simulated bars with one bar whose high is below its low: the blocking ohlc_consistency check fails."""

    def load(self, symbol: str, since_ms: int, until_ms: int) -> MarketData:
        data = super().load(symbol, since_ms, until_ms)
        frame = data.frame.with_row_index("i").with_columns(
            pl.when(pl.col("i") == 3).then(pl.col("low") * 0.99).otherwise(pl.col("high")).alias("high")
        )
        return MarketData(frame.drop("i"), data.source, data.requests, data.gaps, data.warnings)


def _train(defs, instance):
    return defs.resolve_job_def(RETRAIN_JOB).execute_in_process(
        instance=instance,
        asset_selection=[AssetKey("trained_model")],
        run_config={
            "ops": {
                "trained_model": {
                    "config": {
                        "fast": True,
                        "symbols": ["BTC/USDT"],
                        "training_days": 7,
                        "end_date": "2024-01-10",
                    }
                }
            }
        },
        raise_on_error=False,
    )


def _failure_text(result) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "the run did not fail"
    error = failures[0].event_specific_data.error
    texts = []
    while error is not None:
        texts.append(error.message)
        error = error.cause
    return "\n".join(texts)


def test_failed_blocking_check_stops_training_until_the_data_is_fixed(tmp_path, mlflow_server):
    settings = ml_settings(tmp_path / "data", mlflow_server.url, symbols="BTC/USDT")
    good = ml_definitions(settings, "crypto-volatility-gate-test")
    bad = ml_definitions(
        settings, "crypto-volatility-gate-test", market_data=_InconsistentBars(source="simulated")
    )
    with instance_for_test() as instance:
        assert run_range(good, instance, "2024-01-01", "2024-01-07", "BTCUSDT").success
        broken = run_range(bad, instance, "2024-01-08", "2024-01-10", "BTCUSDT")
        assert check_results(broken)["ohlc_consistency"] == (False, "ERROR")

        refused = _train(good, instance)
        assert not refused.success
        text = _failure_text(refused)
        assert "refusing to train" in text and "ohlc_consistency" in text
        for day in ("2024-01-08", "2024-01-09", "2024-01-10"):
            assert f"{day}|BTCUSDT" in text
        assert "2024-01-07|BTCUSDT" not in text  # days whose latest run passed are not blamed

        # good bars re-materialised over the bad days: the latest verdict passes and the gate opens
        # (training then stops for another reason: 10 days of history hold too few windows)
        assert run_range(good, instance, "2024-01-08", "2024-01-10", "BTCUSDT").success
        text = _failure_text(_train(good, instance))
        assert "refusing to train" not in text and "materialize more history" in text


def test_schedules_request_the_weekly_retrain_and_the_daily_report(tmp_path, mlflow_server):
    settings = ml_settings(tmp_path / "data", mlflow_server.url)
    defs = ml_definitions(settings, SENSOR_MODEL)
    monday = datetime(2026, 4, 13, 3, 0, tzinfo=UTC)
    weekly = defs.resolve_schedule_def("ml_weekly_retrain")
    assert weekly.job_name == RETRAIN_JOB and weekly.cron_schedule == "0 3 * * 1"
    report = defs.resolve_schedule_def("daily_report_schedule")
    with instance_for_test() as instance:
        resource = ml_resource(settings, SENSOR_MODEL, fast_training=True)
        with build_schedule_context(
            instance, scheduled_execution_time=monday, resources={"ml": resource}
        ) as context:
            (retrain,) = weekly.evaluate_tick(context).run_requests
        with build_schedule_context(instance, scheduled_execution_time=monday) as context:
            (daily,) = report.evaluate_tick(context).run_requests
    assert retrain.run_config == {"ops": {"trained_model": {"config": {"fast": True}}}}
    assert retrain.tags[TRIGGER_TAG] == "weekly" and retrain.run_key == "weekly-2026-04-13"
    assert daily.run_config == {"ops": {"daily_report": {"config": {"date": "2026-04-13"}}}}


def test_daily_drift_verdict_runs_alone_and_no_drift_launches_no_retrain(
    tmp_path, mlflow_server, fresh_champion
):
    settings = ml_settings(tmp_path / "data", mlflow_server.url)
    defs = ml_definitions(settings, SENSOR_MODEL)
    daily = defs.resolve_schedule_def("ml_daily_drift")
    assert daily.job_name == DRIFT_JOB and daily.cron_schedule == "20 0 * * *"
    # the verdict's own job: feature_drift alone, nothing trained
    job = defs.resolve_job_def(DRIFT_JOB)
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {"feature_drift"}
    tuesday = datetime(2026, 4, 14, 0, 20, tzinfo=UTC)
    with instance_for_test() as instance:
        resource = ml_resource(settings, SENSOR_MODEL)
        with build_schedule_context(
            instance, scheduled_execution_time=tuesday, resources={"ml": resource}
        ) as context:
            (request,) = daily.evaluate_tick(context).run_requests
        # the window ends with the day that just closed (whole days, as the benchmark judges them)
        assert request.run_config == {"ops": {"feature_drift": {"config": {"end_date": "2026-04-13"}}}}
        assert request.run_key == "drift-2026-04-13" and request.tags[TRIGGER_TAG] == "daily-drift"

        # a day's verdict without drift: the retrain asset sensor sees it and launches nothing
        quiet = _tick(defs, "ml_retrain_sensor", instance, resource)
        _report(instance, "feature_drift", feature_drift_detected=False, drifted_features=[])
        calm = _tick(defs, "ml_retrain_sensor", instance, resource, cursor=quiet.cursor)
        assert not calm.run_requests and "no retrain due" in calm.skip_message
        # the next day's verdict says drift: that one asks for the retrain
        _report(instance, "feature_drift", feature_drift_detected=True, drifted_features=["hl_range"])
        drift = _tick(defs, "ml_retrain_sensor", instance, resource, cursor=calm.cursor)
        assert len(drift.run_requests) == 1 and drift.run_requests[0].job_name in (None, RETRAIN_JOB)

    # no champion yet: nothing to judge against, so no run (the retrain sensor trains the first one)
    with instance_for_test() as instance:
        resource = ml_resource(settings, "crypto-volatility-no-champion-yet")
        with build_schedule_context(
            instance, scheduled_execution_time=tuesday, resources={"ml": resource}
        ) as context:
            result = daily.evaluate_tick(context)
    assert not result.run_requests and "no champion" in result.skip_message
