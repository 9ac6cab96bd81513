"""Save/load of HAR+ and the residual ensemble, the feature-frame contract, and its MLflow pyfunc."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from crypto_platform.lib.features import compute_features
from crypto_platform.lib.model.baselines import NotFittedError
from crypto_platform.lib.model.frame_serving import OUTPUT_COLUMN, FrameForecaster
from crypto_platform.lib.model.har_features import har_plus_features
from crypto_platform.lib.model.har_plus import TERM_COLUMNS, TERMS, HARPlusBaseline, HARPlusConfig
from crypto_platform.lib.model.intervals import fit_dispersion, volatility_interval
from crypto_platform.lib.model.windows import build_windows
from crypto_platform_tests.unit.test_har_plus import COLUMNS, random_bars

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return har_plus_features(compute_features(random_bars(11, 2600)))


@pytest.fixture(scope="module")
def windows(frame):
    return build_windows(frame, COLUMNS)


@pytest.fixture(scope="module")
def har_plus(windows) -> HARPlusBaseline:
    terms = tuple(TERMS)  # every term, the day harmonics and the Parkinson ones included
    return HARPlusBaseline(HARPlusConfig(terms=terms)).fit(windows)


def test_har_plus_round_trip_forecasts_bit_for_bit(tmp_path, windows, har_plus):
    loaded = HARPlusBaseline.load(har_plus.save(tmp_path / "hp"))
    np.testing.assert_allclose(
        loaded.predict_log_variance(windows), har_plus.predict_log_variance(windows), rtol=0, atol=1e-12
    )
    assert loaded.params() == har_plus.params()
    np.testing.assert_array_equal(loaded.validation_log_residuals, har_plus.validation_log_residuals)
    unseen = dataclasses.replace(windows.take(np.arange(50)), symbol=np.full(50, "SOL/USDT", dtype=object))
    np.testing.assert_allclose(loaded.predict(unseen), har_plus.predict(unseen), rtol=1e-12)


def test_har_plus_persistence_errors(tmp_path, har_plus):
    with pytest.raises(NotFittedError):
        HARPlusBaseline().save(tmp_path / "x")
    path = har_plus.save(tmp_path / "hp")
    header = json.loads((path / "har_plus.json").read_text())
    (path / "har_plus.json").write_text(json.dumps({**header, "format_version": 99}))
    with pytest.raises(ValueError, match="is not a"):
        HARPlusBaseline.load(path)


def test_required_columns_are_exactly_what_the_terms_read(windows, har_plus):
    assert set(TERM_COLUMNS) == set(TERMS)
    cols = har_plus.required_columns()
    narrow = dataclasses.replace(
        windows, X=windows.X[:, :, [windows.column_index(c) for c in cols]], feature_columns=cols
    )
    np.testing.assert_array_equal(har_plus.predict(narrow), har_plus.predict(windows))
    for dropped in cols:  # each listed column is really read
        keep = tuple(c for c in cols if c != dropped)
        short = dataclasses.replace(
            windows, X=windows.X[:, :, [windows.column_index(c) for c in keep]], feature_columns=keep
        )
        with pytest.raises(KeyError, match=dropped):
            har_plus.predict(short)


def test_frame_forecasts_equal_the_window_forecasts_in_input_order(frame, windows, har_plus):
    disp = fit_dispersion(har_plus.validation_log_residuals)
    served = FrameForecaster.from_har_plus(har_plus, disp)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3).to_pandas()
    out = served.predict_frame(shuffled)
    assert list(out.columns) == [
        "symbol",
        "ts",
        OUTPUT_COLUMN,
        "lower_80",
        "upper_80",
        "lower_95",
        "upper_95",
    ]
    assert (out["symbol"].to_numpy() == shuffled["symbol"].to_numpy()).all()
    assert (out["ts"].to_numpy() == shuffled["ts"].to_numpy()).all()
    by_key = {
        (s, t): v for s, t, v in zip(windows.symbol, windows.ts, har_plus.predict(windows), strict=True)
    }
    got = {(s, t): v for s, t, v in out[["symbol", "ts", OUTPUT_COLUMN]].itertuples(index=False)}
    assert all(got[k] == pytest.approx(v, rel=1e-12) for k, v in by_key.items())
    # Rows before the features are warm (NaN features) get no forecast rather than a wrong one.
    warm = out.dropna(subset=[OUTPUT_COLUMN])
    assert 0 < len(warm) < len(out)
    lo, hi = volatility_interval(warm[OUTPUT_COLUMN].to_numpy(), disp, 0.8)
    np.testing.assert_allclose(warm["lower_80"], lo, rtol=1e-12)
    np.testing.assert_allclose(warm["upper_80"], hi, rtol=1e-12)
    latest = frame.group_by("symbol").agg(pl.all().sort_by("ts").last()).to_pandas()
    single = served.predict_frame(latest)  # one row per symbol is enough for HAR+
    assert single[OUTPUT_COLUMN].notna().all()


def test_frame_input_errors(frame, har_plus):
    served = FrameForecaster.from_har_plus(har_plus)
    with pytest.raises(ValueError, match="log_gk_24"):
        served.predict_frame(frame.drop("log_gk_24").to_pandas())
    with pytest.raises(ValueError, match="duplicate"):
        served.predict_frame(pl.concat([frame.head(5), frame.head(5)]).to_pandas())


@pytest.fixture(scope="module")
def residual(windows):
    pytest.importorskip("tensorflow")
    from crypto_platform.lib.model.lstm import limit_tf_threads
    from crypto_platform.lib.model.residual import ResidualConfig, ResidualHARPlusForecaster

    limit_tf_threads(2, 1)
    base = HARPlusBaseline().fit(windows)
    cfg = dataclasses.replace(
        ResidualConfig.default(), lstm_units=4, seeds=(11, 12), max_epochs=1, patience=0
    )
    return ResidualHARPlusForecaster(cfg, base=base).fit(windows)


def test_residual_round_trip_equals_fitted_and_keras(tmp_path, windows, residual):
    from crypto_platform.lib.model.residual import ResidualHARPlusForecaster

    loaded = ResidualHARPlusForecaster.load(residual.save(tmp_path / "res"))
    sample = windows.take(np.arange(0, len(windows), 5))
    np.testing.assert_allclose(
        loaded.predict_log_variance(sample), residual.predict_log_variance(sample), rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        loaded.predict_log_variance(sample), residual.keras_log_variance(sample), rtol=0, atol=1e-5
    )
    assert loaded.params()["members"] == residual.params()["members"]
    assert loaded.ensemble.members[0].lstm is not None
    np.testing.assert_array_equal(loaded.validation_log_residuals, residual.validation_log_residuals)


def test_residual_frame_serving_without_tensorflow(tmp_path, frame, windows, residual):
    served = FrameForecaster.from_residual(residual, windows.feature_columns)
    path = served.save(tmp_path / "frame")
    head = frame.filter(pl.col("ts") >= int(np.sort(windows.ts)[-120])).to_pandas()
    head.to_parquet(tmp_path / "frame.parquet")
    script = textwrap.dedent(
        f"""
        import sys
        import pandas as pd
        from crypto_platform.lib.model.frame_serving import FrameForecaster
        rows = pd.read_parquet({str(tmp_path / "frame.parquet")!r})
        out = FrameForecaster.load({str(path)!r}).predict_frame(rows)
        out.to_parquet({str(tmp_path / "out.parquet")!r})
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TF was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    out = pd.read_parquet(tmp_path / "out.parquet")
    # The first 23 rows of each symbol lack the 24 bars the sequence encoder reads.
    first = out.groupby("symbol").head(residual.config.sequence_length - 1)
    assert first[OUTPUT_COLUMN].isna().all()
    scored = out.dropna(subset=[OUTPUT_COLUMN])
    expected = {
        (s, t): v for s, t, v in zip(windows.symbol, windows.ts, residual.predict(windows), strict=True)
    }
    compared = 0
    for s, t, v in scored[["symbol", "ts", OUTPUT_COLUMN]].itertuples(index=False):
        if (s, t) in expected:
            assert v == pytest.approx(expected[(s, t)], rel=1e-6)
            compared += 1
    assert compared >= 50


@pytest.fixture
def mlflow_tracking(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("frame-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_logged_har_plus_pyfunc_serves_the_frame_contract(mlflow_tracking, frame, har_plus):
    import mlflow

    from crypto_platform.lib.model.packaging import log_frame_forecaster

    served = FrameForecaster.from_har_plus(har_plus, fit_dispersion(har_plus.validation_log_residuals))
    rows = frame.tail(300).to_pandas()
    with mlflow.start_run():
        info = log_frame_forecaster(served, "har_plus", rows.head(3), registered_model_name="har-plus-test")
    assert info.metadata["input_contract"] == "feature-frame/v1"
    model = mlflow.pyfunc.load_model("models:/har-plus-test/1")
    got = model.predict(rows[["symbol", "ts", *served.feature_columns]])
    pd.testing.assert_frame_equal(got, served.predict_frame(rows), rtol=1e-12)
    with pytest.raises(Exception, match="log_gk_24"):
        model.predict(rows.drop(columns=["log_gk_24"]))
