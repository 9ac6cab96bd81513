"""The model lifecycle end to end on a real `mlflow server` and a test Dagster instance:
market assets → trained_model (HAR+ tuning as nested runs, walk-forward of every candidate, the gate's
winner registered with its model card) → model_promotion → feature_drift, then the promotion gate driven
with synthetic challengers whose walk-forward evidence the test writes, through the same
`promotion.promote` the asset calls."""

from __future__ import annotations

import json
import tempfile
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
from crypto_platform.lib.model.baselines import BASELINES
from crypto_platform.lib.model.frame_serving import FRAME_CONTRACT, INPUT_CONTRACT_TAG, WINDOW_CONTRACT
from crypto_platform.lib.model.har_features import har_plus_features
from crypto_platform.lib.model.model_card import CARD_ARTIFACT, MZ_PLOT_ARTIFACT, version_description
from crypto_platform.lib.model.packaging import OUTPUT_COLUMN
from crypto_platform.lib.model.promotion import load_evidence, promote
from crypto_platform.lib.model.selection_tracking import CHAMPION_FORECASTS, TRIAL_RUN_TAG, family_of
from crypto_platform.lib.model.tags import CANDIDATE_TAG, FAMILY_TAG, FEATURES_TAG, TRAINING_RUN_TAG
from crypto_platform.lib.model.tracking import window_fingerprint
from crypto_platform.lib.model.walk_forward_evidence import (
    EVIDENCE_PARQUET,
    WALK_FORWARD_JSON,
    evidence_frame,
)
from crypto_platform.lib.model.windows import build_windows
from crypto_platform.lib.storage import LocalStore, day_start_ms
from crypto_platform_tests.integration.market_runs import run_range
from crypto_platform_tests.integration.ml_defs import asset_metadata, ml_definitions, ml_settings, run_retrain
from serving.core.history import History, history_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = registry.MODEL_NAME
FIRST_DAY, LAST_DAY, DAYS = "2024-01-01", "2024-03-20", 80  # 30 days of warm-up, ~50 days of windows
FAST_FOLDS, FAST_TRIALS = 3, 6  # SelectionSpec.fast()


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


def _stored_features(lifecycle_run) -> pl.DataFrame:
    features, _ = load_feature_window(
        LocalStore(lifecycle_run["data"]),
        ["BTC/USDT", "ETH/USDT"],
        date.fromisoformat(FIRST_DAY),
        date.fromisoformat(LAST_DAY),
    )
    return features


def _artifact_text(client: MlflowClient, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def test_retrain_registers_the_gate_winner_and_makes_it_the_first_champion(lifecycle_run):
    result, client = lifecycle_run["result"], lifecycle_run["client"]
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    trained = asset_metadata(result, "trained_model")
    run_id = trained["mlflow_run_id"]
    winner = trained["gate_winner"]
    version = _version(client, trained["model_version"])
    assert version.run_id == run_id and version.tags[TRAINING_RUN_TAG] == run_id
    assert version.tags[CANDIDATE_TAG] == winner and version.tags[FAMILY_TAG] == family_of(winner)
    # the serving contract the version speaks: the feature frame for HAR+ / its residual, windows otherwise
    expected_contract = FRAME_CONTRACT if winner in ("har_plus", "har_plus_residual") else WINDOW_CONTRACT
    assert version.tags[INPUT_CONTRACT_TAG] == trained["input_contract"] == expected_contract
    assert (
        version.tags["data_window"] == f"{FIRST_DAY}..{LAST_DAY}"
        and version.tags["symbols"] == "BTC/USDT,ETH/USDT"
    )
    # the content fingerprint of the training window, on the run and the version; the same stored data
    # read again gives the same fingerprint
    assert version.tags["data_fingerprint"] == trained["data_fingerprint"]
    assert trained["data_fingerprint"] == window_fingerprint(_stored_features(lifecycle_run))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["data_fingerprint"] == trained["data_fingerprint"]

    # every candidate walked forward on the same folds; the evidence is on the run and the version
    evidence = json.loads(_artifact_text(client, run_id, WALK_FORWARD_JSON))
    assert len(evidence["folds"]) == trained["folds"] == FAST_FOLDS
    names = set(evidence["candidates"])
    assert (
        {"har", "ewma", "naive", "har_plus", "har_plus_residual"}
        <= names
        <= set(BASELINES)
        | {
            "har_plus",
            "har_plus_residual",
            "combination",
        }
    )
    pooled = json.loads(version.tags["pooled_qlike"])
    folds = json.loads(version.tags["fold_qlike"])
    dm = json.loads(version.tags["dm_pvalue_vs_har"])
    assert set(pooled) == set(folds) == names and set(dm) == names - {"har"}
    for name in names:
        assert pooled[name] == pytest.approx(evidence["candidates"][name]["pooled_qlike"])
        assert len(folds[name]) == FAST_FOLDS
        assert run.data.metrics[f"wf_pooled_qlike_{name}"] == pytest.approx(pooled[name])
    assert evidence["champion"] == winner == evidence["gate"]["champion"]
    # the tuned HAR+ configuration and the residual's, on the version
    tuned = json.loads(version.tags["har_plus_config"])
    assert tuned == evidence["configuration"]["har_plus"] and tuned["terms"]
    assert json.loads(version.tags["residual_config"])["lstm_units"] == 0  # the fast preset's MLP

    # each HAR+ tuning trial is a nested run of the training run, with its params and score
    trials = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    assert len(trials) == trained["tuning_trials"] == FAST_TRIALS
    assert sorted(int(t.data.tags[TRIAL_RUN_TAG]) for t in trials) == list(range(FAST_TRIALS))
    for trial in trials:
        assert {"ridge", "estimation_days", "use_range"} <= set(trial.data.params)
        assert "tuning_pooled_qlike" in trial.data.metrics or "trial_error" in trial.data.tags
    best_trial = min(t.data.metrics.get("tuning_pooled_qlike", np.inf) for t in trials)
    assert best_trial == pytest.approx(trained["tuning"]["best_pooled_qlike"])

    # the model card: an artifact, the version's description and Dagster metadata; it names the winner
    card = _artifact_text(client, run_id, CARD_ARTIFACT)
    assert version.description == version_description(card)  # the card, cut to fit PostgreSQL's column
    assert f"v{version.version}" in card and "## Gate decision" in card and "## Walk-forward folds" in card
    if winner == "har":
        assert "**No challenger passed: har stays.**" in card
    else:
        assert f"**{winner} won**" in card
    for symbol in ("BTC/USDT", "ETH/USDT"):
        assert f"### {symbol}" in card
    assert card in trained["model_card"] and "data:image/png;base64," in trained["model_card"]
    assert {a.path for a in client.list_artifacts(run_id)} >= {
        CARD_ARTIFACT,
        MZ_PLOT_ARTIFACT,
        WALK_FORWARD_JSON,
    }

    # no champion existed: the gate's winner became the first champion, never judged against itself
    promotion = asset_metadata(result, "model_promotion")
    assert promotion["bootstrapped_version"] == promotion["champion_version"] == trained["model_version"]
    assert promotion["promoted"] and promotion["champion_candidate"] == winner
    first = _version(client, promotion["champion_version"])
    assert (
        first.tags["promotion.decision"] == "promoted" and "first champion" in first.tags["promotion.reason"]
    )
    champion = registry.alias_version(client, registry.CHAMPION, MODEL)
    assert champion is not None and str(champion.version) == promotion["champion_version"]
    assert winner not in promotion["baselines_not_beaten"]
    beaten_by = [b for b in names & set(BASELINES) if b != winner and pooled[b] <= pooled[winner]]
    assert sorted(promotion["baselines_not_beaten"]) == sorted(beaten_by)

    # checks of the ML group ran with their assets
    checks = lifecycle_run["checks"]
    assert checks["champion_beats_baselines"].passed == promotion["champion_beats_baselines"]
    assert checks["champion_beats_baselines"].severity.value == "WARN"
    for baseline in promotion["baselines_not_beaten"]:
        assert baseline in checks["champion_beats_baselines"].description
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


def test_the_registered_champion_reproduces_the_refitted_model(lifecycle_run):
    """Loaded from the server by alias, the champion forecasts the training windows exactly as the
    refitted in-memory model did (its forecasts are a run artifact), fed as serving feeds it."""
    result, client = lifecycle_run["result"], lifecycle_run["client"]
    trained = asset_metadata(result, "trained_model")
    mlflow.set_tracking_uri(client.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        expected = pl.read_parquet(
            client.download_artifacts(trained["mlflow_run_id"], CHAMPION_FORECASTS, tmp)
        )
    champion = registry.alias_version(client, registry.CHAMPION, MODEL)
    served = mlflow.pyfunc.load_model(registry.champion_uri(MODEL))
    features = _stored_features(lifecycle_run)
    if champion.tags[INPUT_CONTRACT_TAG] == FRAME_CONTRACT:
        frame = har_plus_features(features).to_pandas()
        out = pl.from_pandas(served.predict(frame)).drop_nulls(OUTPUT_COLUMN)
    else:
        columns = json.loads(champion.tags[FEATURES_TAG])
        assert columns == list(MODEL_FEATURES)
        windows = build_windows(features, columns, with_target=False)
        values = served.predict(np.ascontiguousarray(windows.X, dtype=np.float32))[OUTPUT_COLUMN].to_numpy()
        out = pl.DataFrame({"symbol": windows.symbol.astype(str), "ts": windows.ts, OUTPUT_COLUMN: values})
    joined = expected.join(out.select("symbol", "ts", OUTPUT_COLUMN), on=["symbol", "ts"], how="inner")
    assert joined.height == expected.height > 1000
    np.testing.assert_allclose(joined[OUTPUT_COLUMN].to_numpy(), joined["forecast"].to_numpy(), rtol=1e-5)
    assert np.all(joined[OUTPUT_COLUMN].to_numpy() > 0)


class _Const(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        return pd.DataFrame({OUTPUT_COLUMN: np.full(len(model_input), 0.02)})


def _challenger(client: MlflowClient, base_run: str, label: str, forecasts: dict[str, np.ndarray]) -> str:
    """A challenger version whose training run's walk-forward evidence is `base_run`'s plus `forecasts`
    (candidate → pooled out-of-sample forecasts on the same rows); it claims to be candidate `label`."""
    result, recent = load_evidence(base_run)
    frame = evidence_frame(result, recent).with_columns(
        pl.Series(f"forecast_{name}", values) for name, values in forecasts.items()
    )
    summary = json.loads(_artifact_text(client, base_run, WALK_FORWARD_JSON))
    with mlflow.start_run(run_name=f"synthetic-{label}") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_dict(summary, WALK_FORWARD_JSON)
        path = Path(tmp) / Path(EVIDENCE_PARQUET).name
        frame.write_parquet(path)
        mlflow.log_artifact(str(path), artifact_path=str(Path(EVIDENCE_PARQUET).parent))
        info = mlflow.pyfunc.log_model(name="model", python_model=_Const(), pip_requirements=["mlflow"])
    tags = {FAMILY_TAG: f"synthetic:{label}", CANDIDATE_TAG: label, TRAINING_RUN_TAG: run.info.run_id}
    version = registry.register_version(client, info.model_uri, run.info.run_id, tags, model_name=MODEL)
    registry.move_alias(client, registry.CHALLENGER, version.version, MODEL)
    return str(version.version)


def test_promotion_gate_with_synthetic_challengers(lifecycle_run):
    result, client = lifecycle_run["result"], lifecycle_run["client"]
    run_id = asset_metadata(result, "trained_model")["mlflow_run_id"]
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_experiment("ml-lifecycle-synthetic")
    evidence, _ = load_evidence(run_id)
    realized = evidence.y
    champion = registry.alias_version(client, registry.CHAMPION, MODEL)
    champion_before, incumbent = str(champion.version), champion.tags[CANDIDATE_TAG]

    constant = _challenger(client, run_id, "constant", {"constant": np.full_like(realized, realized.mean())})
    outcome = promote(client, margin=0.02, model_name=MODEL)
    assert not outcome.promoted and "sanity probes failed" in outcome.decision.reason
    assert outcome.champion_after == champion_before
    tags = _version(client, constant).tags
    assert (
        tags["promotion.decision"] == "rejected" and tags["promotion.probe.rises_with_recent_vol"] == "False"
    )
    assert tags["promotion.champion_version"] == champion_before

    # the incumbent's own forecasts, re-labelled: no improvement on the folds, so not by the margin
    twin = _challenger(client, run_id, "twin", {"twin": evidence.forecasts[incumbent]})
    outcome = promote(client, margin=0.02, model_name=MODEL)
    assert not outcome.promoted and outcome.champion_after == champion_before
    assert incumbent in outcome.decision.references
    assert f"vs {incumbent}: improvement +0.00% is below the 2.0% margin" in outcome.decision.reason
    assert "won 0 of 3 folds (need 3)" in outcome.decision.reason
    assert _version(client, twin).tags[f"promotion.gate.{incumbent}"].startswith("failed")

    # a near-oracle on the same folds beats the incumbent and the best baseline by far, in every fold
    near = realized * np.exp(np.random.default_rng(0).normal(0.0, 0.05, realized.size))
    oracle = _challenger(client, run_id, "oracle", {"oracle": near})
    outcome = promote(client, margin=0.02, model_name=MODEL)
    assert outcome.promoted and outcome.champion_after == oracle
    assert outcome.pooled_qlike["oracle"] == pytest.approx(0.0, abs=0.01)
    assert outcome.champion_beats_baselines and outcome.champion_candidate == "oracle"
    assert str(registry.alias_version(client, registry.CHAMPION, MODEL).version) == oracle
    tags = _version(client, oracle).tags
    assert tags["promotion.decision"] == "promoted" and float(tags["promotion.relative_improvement"]) > 0.02
    assert incumbent in tags["promotion.references"].split(",")

    # better than every baseline yet 10 % biased: it does not beat the oracle champion on the same folds
    biased = _challenger(client, run_id, "biased", {"oracle": near, "biased": near * 1.1})
    outcome = promote(client, margin=0.02, model_name=MODEL)
    assert not outcome.promoted and "vs oracle" in outcome.decision.reason
    assert (
        outcome.champion_after == oracle and _version(client, biased).tags["promotion.decision"] == "rejected"
    )
