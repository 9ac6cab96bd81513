"""`log_selection` on a real `mlflow server` when the gate's winner is HAR+: the version speaks the
feature-frame contract, carries its interval dispersion, and the registered model — loaded from the
server — forecasts the windows exactly as the refitted in-memory HAR+ did. (On the simulated market of
the lifecycle test the gate keeps plain HAR, so the frame path is driven here by choosing HAR+.)"""

from __future__ import annotations

import dataclasses
import json

import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient

from crypto_platform.lib.features import compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.model.frame_serving import FRAME_CONTRACT, INPUT_CONTRACT_TAG
from crypto_platform.lib.model.intervals import fit_dispersion
from crypto_platform.lib.model.lstm import limit_tf_threads
from crypto_platform.lib.model.packaging import OUTPUT_COLUMN
from crypto_platform.lib.model.promotion import load_evidence
from crypto_platform.lib.model.selection import SelectionSpec, fit_on_all, select_and_fit
from crypto_platform.lib.model.selection_tracking import log_selection
from crypto_platform.lib.model.tags import CANDIDATE_TAG, FAMILY_TAG, FEATURES_TAG
from crypto_platform.lib.model.tracking import DataWindow, window_fingerprint
from crypto_platform.lib.model.walk_forward import default_candidates
from crypto_platform.lib.storage import day_start_ms

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "crypto-volatility-selection-test"
SYMBOLS = ("BTC/USDT", "ETH/USDT")


@pytest.fixture(scope="module")
def har_plus_selection():
    bars = pl.concat(
        simulate_ohlcv(s, "1h", day_start_ms("2024-01-01"), day_start_ms("2024-03-21"), seed=7).with_columns(
            pl.lit(s).alias("symbol")
        )
        for s in SYMBOLS
    )
    features = compute_features(bars)
    limit_tf_threads()
    spec = dataclasses.replace(SelectionSpec.fast(), n_folds=2)
    selection = select_and_fit(features, spec)
    candidates = default_candidates(residual_config=spec.residual, har_plus_config=selection.har_plus_config)
    har_plus = fit_on_all(candidates, "har_plus", selection.windows)
    chosen = dataclasses.replace(
        selection,
        decision=dataclasses.replace(selection.decision, champion="har_plus"),
        model=har_plus,
        dispersion=fit_dispersion(har_plus.validation_log_residuals, spec.levels),
    )
    return features, chosen


def test_a_har_plus_winner_is_registered_behind_the_frame_contract(mlflow_server, har_plus_selection):
    features, selection = har_plus_selection
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("selection-tracking-test")
    client = MlflowClient(mlflow_server.url)
    window = DataWindow(SYMBOLS, "2024-01-01", "2024-03-20", fingerprint=window_fingerprint(features))
    with mlflow.start_run():
        logged = log_selection(selection, features, window, client, model_name=MODEL, source="simulated")
    version = client.get_model_version(MODEL, logged.version)
    assert version.tags[INPUT_CONTRACT_TAG] == logged.input_contract == FRAME_CONTRACT
    assert version.tags[CANDIDATE_TAG] == "har_plus" and version.tags[FAMILY_TAG] == "har_plus"
    assert json.loads(version.tags[FEATURES_TAG]) == list(selection.model.required_columns())
    assert "**har_plus won**" in version.description or "No challenger passed" in version.description

    served = mlflow.pyfunc.load_model(f"models:/{MODEL}/{logged.version}")
    out = pl.from_pandas(served.predict(selection.feature_frame.to_pandas())).drop_nulls(OUTPUT_COLUMN)
    assert {"lower_80", "upper_80", "lower_95", "upper_95"} <= set(out.columns)
    expected = pl.DataFrame(
        {
            "symbol": selection.windows.symbol.astype(str),
            "ts": selection.windows.ts,
            "expected": selection.model.predict(selection.windows),
        }
    )
    joined = expected.join(out, on=["symbol", "ts"], how="inner")
    assert joined.height == len(selection.windows)
    np.testing.assert_allclose(joined[OUTPUT_COLUMN].to_numpy(), joined["expected"].to_numpy(), rtol=1e-9)
    assert np.all(joined["lower_95"].to_numpy() < joined[OUTPUT_COLUMN].to_numpy())

    # the evidence promotion reads back is the walk-forward this selection ran
    evidence, recent = load_evidence(logged.run_id)
    assert evidence.names == selection.walk_forward.names and recent.shape == evidence.y.shape
    for name in evidence.names:
        assert evidence.table.row(name).qlike == pytest.approx(selection.walk_forward.table.row(name).qlike)
