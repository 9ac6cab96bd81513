"""The model lifecycle end to end on a real `mlflow server` and a test Dagster instance:
market assets → trained_model → model_promotion → feature_drift, then the promotion gate driven with
synthetic challengers through the same `promotion.promote` the asset calls."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
from dagster import instance_for_test
from mlflow import MlflowClient

from crypto_platform.defs.ml.assets import load_feature_window
from crypto_platform.lib.features import MODEL_FEATURES
from crypto_platform.lib.model import registry
from crypto_platform.lib.model.baseline_serving import SERVABLE_BASELINES
from crypto_platform.lib.model.holdout import load_holdout
from crypto_platform.lib.model.packaging import OUTPUT_COLUMN, volatility_signature
from crypto_platform.lib.model.promotion import promote
from crypto_platform.lib.model.tags import FAMILY_TAG, FEATURES_TAG
from crypto_platform.lib.model.tracking import window_fingerprint
from crypto_platform.lib.model.training import select_columns
from crypto_platform.lib.model.windows import latest_window
from crypto_platform.lib.storage import LocalStore, day_start_ms, read_partitioned
from crypto_platform_tests.integration.market_runs import run_range
from crypto_platform_tests.integration.ml_defs import asset_metadata, ml_definitions, ml_settings, run_retrain
from serving.core.history import History, history_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = registry.MODEL_NAME
FIRST_DAY, LAST_DAY, DAYS = "2024-01-01", "2024-03-20", 80  # 30 days of warm-up, ~50 days of windows


@pytest.fixture(scope="module")
def lifecycle_run(mlflow_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("ml-data")
    settings = ml_settings(data, mlflow_server.url)
    defs = ml_definitions(settings, MODEL)
    with instance_for_test() as instance:
        for symbol_id in ("BTCUSDT", "ETHUSDT"):
            assert run_range(defs, instance, FIRST_DAY, LAST_DAY, symbol_id).success
        result = run_retrain(defs, instance, LAST_DAY, DAYS)
        _serve_signals(history_url(settings), LAST_DAY, 42)
        report = defs.resolve_job_def("daily_report_job").execute_in_process(
            instance=instance, run_config={"ops": {"daily_report": {"config": {"date": LAST_DAY}}}}
        )
        checks = {
            e.event_specific_data.check_name: e.event_specific_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        }
        yield {
            "result": result,
            "report": report,
            "data": data,
            "checks": checks,
            "client": MlflowClient(mlflow_server.url),
        }


def _serve_signals(url: str, day: str, n: int) -> None:
    """Signals in the history DB as the API records them: n during `day`, one the day before."""
    history = History(url)
    noon = day_start_ms(day) / 1000 + 12 * 3600
    for created_at in [noon + i for i in range(n)] + [noon - 86_400]:
        history.record_signal(
            {
                "created_at": created_at,
                "symbol": "BTC/USDT",
                "exchange": "binance",
                "timeframe": "1h",
                "horizon_min": 60,
                "risk_score": 0.2,
                "nowcast_ret": 0.0,
                "vol_regime": "normal",
                "bar_ts": None,
                "source": "simulated",
            },
            {"symbol": "BTC/USDT"},
        )
    history.close()


def _version(client: MlflowClient, version: str):
    return client.get_model_version(MODEL, version)


def test_retrain_registers_a_challenger_and_bootstraps_the_best_baseline(lifecycle_run):
    result, client = lifecycle_run["result"], lifecycle_run["client"]
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    trained = asset_metadata(result, "trained_model")
    lstm = _version(client, trained["model_version"])
    assert lstm.tags[FAMILY_TAG] == "lstm"
    assert json.loads(lstm.tags[FEATURES_TAG]) == list(MODEL_FEATURES)
    assert (
        lstm.tags["data_window"] == f"{FIRST_DAY}..{LAST_DAY}" and lstm.tags["symbols"] == "BTC/USDT,ETH/USDT"
    )
    assert lstm.run_id == trained["mlflow_run_id"]
    # the content fingerprint of the training window, on the run and the version; the same stored data
    # read again gives the same fingerprint
    features, _ = load_feature_window(
        LocalStore(lifecycle_run["data"]),
        ["BTC/USDT", "ETH/USDT"],
        date.fromisoformat(FIRST_DAY),
        date.fromisoformat(LAST_DAY),
    )
    assert lstm.tags["data_fingerprint"] == trained["data_fingerprint"] == window_fingerprint(features)
    assert (
        client.get_run(trained["mlflow_run_id"]).data.tags["data_fingerprint"] == trained["data_fingerprint"]
    )

    # the evaluation table covers the LSTM and every baseline, logged as a table/JSON and as metrics
    rows = trained["evaluation_records"]
    assert {r["name"] for r in rows} == {"lstm", "naive", "expanding_mean", "ewma", "har", "garch"}
    run = client.get_run(trained["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert {f"holdout_qlike_{r['name']}" for r in rows} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "lstm_epoch_val_loss")) == trained["epochs_run"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/forecast_vs_realized.png", "plots/loss_curves.png"}
    assert run.data.tags["code_version"] and run.data.tags["data_window"] == f"{FIRST_DAY}..{LAST_DAY}"
    assert "data:image/png;base64," in trained["evaluation"]

    # no champion existed: the best servable baseline on the holdout became the first champion
    promotion = asset_metadata(result, "model_promotion")
    servable = [r for r in rows if r["name"] in SERVABLE_BASELINES]
    best = min(servable, key=lambda r: r["qlike"])["name"]
    first = _version(client, promotion["bootstrapped_version"])
    assert first.tags[FAMILY_TAG] == f"baseline:{best}"
    assert (
        first.tags["promotion.decision"] == "promoted" and "first champion" in first.tags["promotion.reason"]
    )
    champion = registry.alias_version(client, registry.CHAMPION, MODEL)
    assert champion is not None and str(champion.version) == promotion["champion_version"]

    # the LSTM either challenged that champion through the gate or lost to the refitted baseline
    assert lstm.tags["promotion.decision"] in ("promoted", "rejected")
    challenger = _version(client, promotion["challenger_version"])
    for key in ("promotion.decision", "promotion.reason", "promotion.challenger_qlike", "promotion.margin"):
        assert key in challenger.tags, key
    assert challenger.tags["promotion.decision"] == ("promoted" if promotion["promoted"] else "rejected")
    expected_champion = (
        promotion["challenger_version"] if promotion["promoted"] else promotion["bootstrapped_version"]
    )
    assert promotion["champion_version"] == expected_champion

    # checks of the ML group ran with their assets
    checks = lifecycle_run["checks"]
    assert checks["champion_beats_baselines"].passed == promotion["champion_beats_baselines"]
    assert checks["champion_beats_baselines"].severity.value == "WARN"
    # the first champion is a baseline: it is never reported as not beating itself
    own = promotion["champion_family"].removeprefix("baseline:")
    assert own not in promotion["baselines_not_beaten"]
    assert own not in (checks["champion_beats_baselines"].description or "")
    drift = asset_metadata(result, "feature_drift")
    assert checks["no_feature_drift"].passed == (not drift["feature_drift_detected"])
    assert drift["champion_version"] == promotion["champion_version"] and drift["n_current"] == 7 * 24 * 2


def test_daily_report_reads_what_the_pipeline_wrote(lifecycle_run):
    meta = asset_metadata(lifecycle_run["report"], "daily_report")
    promotion = asset_metadata(lifecycle_run["result"], "model_promotion")
    path = Path(lifecycle_run["data"]) / "reports" / "daily" / f"{LAST_DAY}.md"
    assert meta["path"] == str(path)
    text = path.read_text()
    assert text == meta["report"]
    assert f"version **{promotion['champion_version']}** ({promotion['champion_family']})" in text
    for symbol in ("BTC/USDT", "ETH/USDT"):
        # the simulated history ends on LAST_DAY, long before the report runs: stale, and said so
        assert f"| {symbol} | {LAST_DAY}T23:00+00:00 |" in text and "STALE" in text
        assert f"| {symbol} | {LAST_DAY} | OK |" in text
    assert "Feature drift:" in text and f"champion v{promotion['champion_version']}" in text
    # counted from the history DB: the 42 signals of that day, not the one served the day before
    assert "Signals served: 42." in text and "ML predictions served: 0." in text
    assert "## Forecast track record" in text


def test_registry_models_reproduce_the_in_memory_forecasts(lifecycle_run):
    """Loaded from the server by alias, the champion (and the LSTM version) predict the holdout exactly as
    the in-memory models did when they were evaluated."""
    result, client = lifecycle_run["result"], lifecycle_run["client"]
    trained = asset_metadata(result, "trained_model")
    mlflow.set_tracking_uri(client.tracking_uri)
    holdout = load_holdout(trained["mlflow_run_id"])
    windows = holdout.windows(holdout.feature_columns)
    forecasts = pl.DataFrame({"ts": windows.ts, "symbol": windows.symbol.astype(str)}).join(
        holdout.forecasts, on=["ts", "symbol"], how="left"
    )
    champion = registry.alias_version(client, registry.CHAMPION, MODEL)
    family = champion.tags[FAMILY_TAG]
    in_memory_name = "lstm" if family == "lstm" else family.removeprefix("baseline:")
    served = (
        mlflow.pyfunc.load_model(registry.champion_uri(MODEL)).predict(windows.X)[OUTPUT_COLUMN].to_numpy()
    )
    np.testing.assert_allclose(served, forecasts[f"forecast_{in_memory_name}"].to_numpy(), rtol=1e-5)
    lstm = mlflow.pyfunc.load_model(f"models:/{MODEL}/{trained['model_version']}")
    np.testing.assert_allclose(
        lstm.predict(windows.X)[OUTPUT_COLUMN].to_numpy(), forecasts["forecast_lstm"].to_numpy(), rtol=1e-5
    )

    # raw stored features in, volatility out: the latest window of each symbol as serving would build it
    store = LocalStore(lifecycle_run["data"])
    frames = [
        read_partitioned(store, "features", s, day_start_ms("2024-03-15"), day_start_ms("2024-03-21"))[0]
        for s in ("BTC/USDT", "ETH/USDT")
    ]
    latest = latest_window(pl.concat(frames), MODEL_FEATURES)
    out = mlflow.pyfunc.load_model(registry.champion_uri(MODEL)).predict(latest.X)
    assert list(out.columns) == [OUTPUT_COLUMN] and len(out) == 2
    assert np.all(np.isfinite(out[OUTPUT_COLUMN])) and np.all(out[OUTPUT_COLUMN] > 0)


class _Synthetic(mlflow.pyfunc.PythonModel):
    """A challenger whose forecasts are chosen by the test: a constant, or the holdout's own targets
    (looked up by window content) times a factor — an oracle, or a slightly biased one."""

    def __init__(self, table: dict[str, float], factor: float = 1.0, constant: float | None = None) -> None:
        self.table, self.factor, self.constant = table, factor, constant

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        x = np.ascontiguousarray(model_input, dtype=np.float32)
        if self.constant is not None:
            values = np.full(x.shape[0], self.constant)
        else:
            values = np.array([self.table[hashlib.sha1(w.tobytes()).hexdigest()] for w in x]) * self.factor
        return pd.DataFrame({OUTPUT_COLUMN: values})


def _register(client: MlflowClient, model: mlflow.pyfunc.PythonModel, windows, label: str) -> str:
    with mlflow.start_run(run_name=f"synthetic-{label}") as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=volatility_signature(windows.X.shape[1], windows.X.shape[2]),
            pip_requirements=["mlflow", "pandas", "numpy"],
        )
    tags = {
        FAMILY_TAG: f"synthetic:{label}",
        FEATURES_TAG: json.dumps(list(MODEL_FEATURES)),
    }
    version = registry.register_version(client, info.model_uri, run.info.run_id, tags, model_name=MODEL)
    registry.move_alias(client, registry.CHALLENGER, version.version, MODEL)
    return str(version.version)


def test_promotion_gate_with_synthetic_challengers(lifecycle_run):
    result, client = lifecycle_run["result"], lifecycle_run["client"]
    run_id = asset_metadata(result, "trained_model")["mlflow_run_id"]
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_experiment("ml-lifecycle-synthetic")
    holdout = load_holdout(run_id)
    windows = select_columns(holdout.windows(holdout.feature_columns), MODEL_FEATURES)
    table = {
        hashlib.sha1(w.tobytes()).hexdigest(): float(y) for w, y in zip(windows.X, windows.y, strict=True)
    }
    champion_before = str(registry.alias_version(client, registry.CHAMPION, MODEL).version)

    constant = _register(client, _Synthetic({}, constant=float(np.mean(windows.y))), windows, "constant")
    outcome = promote(client, run_id, margin=0.02, model_name=MODEL, consider_baseline=False)
    assert not outcome.promoted and "sanity probes failed" in outcome.decision.reason
    assert outcome.champion_after == champion_before
    tags = _version(client, constant).tags
    assert (
        tags["promotion.decision"] == "rejected" and tags["promotion.probe.rises_with_recent_vol"] == "False"
    )
    assert tags["promotion.champion_version"] == champion_before

    oracle = _register(client, _Synthetic(table), windows, "oracle")
    outcome = promote(client, run_id, margin=0.02, model_name=MODEL, consider_baseline=False)
    assert outcome.promoted and outcome.champion_after == oracle
    assert outcome.holdout_qlike["challenger"] == pytest.approx(0.0, abs=1e-9)
    assert outcome.champion_beats_baselines
    assert str(registry.alias_version(client, registry.CHAMPION, MODEL).version) == oracle
    tags = _version(client, oracle).tags
    assert tags["promotion.decision"] == "promoted" and float(tags["promotion.relative_improvement"]) > 0.02

    # better than every baseline yet 10 % biased: it does not beat the oracle champion, so it is not promoted
    biased = _register(client, _Synthetic(table, factor=1.1), windows, "biased")
    outcome = promote(client, run_id, margin=0.02, model_name=MODEL, consider_baseline=False)
    assert not outcome.promoted and "does not beat champion" in outcome.decision.reason
    assert (
        outcome.champion_after == oracle and _version(client, biased).tags["promotion.decision"] == "rejected"
    )
