"""The numpy forward pass equals Keras; its MLflow pyfunc serves the same numbers without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from crypto_platform.lib.model.inference import HEADER_FILE, FastVolatilityPredictor, keras_tf_function
from crypto_platform.lib.model.lstm import (
    LSTMConfig,
    build_model,
    limit_tf_threads,
    predict_volatility,
    train_lstm,
)

SEQ, N_FEATURES = 48, 5
FEATURES = tuple(f"f{i}" for i in range(N_FEATURES))
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _tf_threads():
    limit_tf_threads(intra_op=2, inter_op=1)


def random_model(layers: int, seed: int = 0):
    """A model whose weights are perturbed well away from Keras' small initial values, so the
    gates saturate sometimes and a wrong gate order or activation would show. Seeded (Keras'
    initializers included) so it does not depend on which tests ran before."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    config = LSTMConfig(units=12, layers=layers, dropout=0.2)
    model = build_model(
        SEQ, N_FEATURES, config, rng.normal(size=N_FEATURES), rng.uniform(0.2, 3.0, N_FEATURES), -6.0
    )
    model.set_weights(
        [w + rng.normal(scale=0.6, size=w.shape).astype(np.float32) for w in model.get_weights()]
    )
    return model


def windows(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, SEQ, N_FEATURES)) * 2.0 + 0.5).astype(np.float32)


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal within 1e-5, relative and absolute."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [1, 256])
def test_numpy_forward_pass_equals_keras(layers, dtype, n):
    model = random_model(layers)
    X = windows(n)
    expected = predict_volatility(model, X)
    fast = FastVolatilityPredictor.from_keras(model, feature_columns=FEATURES, dtype=dtype)
    actual = fast.predict(X)
    assert actual.dtype == np.float64
    assert_close(actual, expected)
    # The spread of forecasts is wide enough that a wrong gate order would not pass by accident.
    if n > 1:
        assert expected.max() / expected.min() > 2.0


def test_save_load_round_trip(tmp_path):
    model = random_model(2)
    X = windows(256)
    fast = FastVolatilityPredictor.from_keras(model, feature_columns=FEATURES)
    fast.save(tmp_path / "predictor")
    header = json.loads((tmp_path / "predictor" / HEADER_FILE).read_text())
    assert header["lstm_units"] == [12, 12] and header["feature_columns"] == list(FEATURES)
    loaded = FastVolatilityPredictor.load(tmp_path / "predictor")
    assert loaded.feature_columns == FEATURES and loaded.sequence_length == SEQ
    np.testing.assert_array_equal(loaded.predict(X), fast.predict(X))
    assert_close(loaded.predict(X[:1]), predict_volatility(model, X[:1]))
    assert_close(loaded.predict(X), predict_volatility(model, X))

    header["format_version"] = 99
    (tmp_path / "predictor" / HEADER_FILE).write_text(json.dumps(header))
    with pytest.raises(ValueError, match="not a"):
        FastVolatilityPredictor.load(tmp_path / "predictor")


def test_export_from_a_reloaded_keras_file(tmp_path):
    import keras

    model = random_model(1, seed=3)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    X = windows(32, seed=4)
    assert_close(FastVolatilityPredictor.from_keras(reloaded).predict(X), predict_volatility(model, X))


def test_input_validation_errors_are_clear():
    fast = FastVolatilityPredictor.from_keras(random_model(1))
    with pytest.raises(ValueError, match=r"shape \[n, 48, 5\]"):
        fast.predict(np.zeros((SEQ, N_FEATURES)))
    with pytest.raises(ValueError, match=r"shape \[n, 48, 5\]"):
        fast.predict(np.zeros((2, 24, N_FEATURES)))
    with pytest.raises(ValueError, match=r"shape \[n, 48, 5\]"):
        fast.predict(np.zeros((2, SEQ, 4)))
    X = windows(4)
    X[2, 10, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values in 1 window.*index 2"):
        fast.predict(X)
    with pytest.raises(ValueError, match="numeric"):
        fast.predict([[["a"] * N_FEATURES] * SEQ])
    assert fast.predict(np.zeros((0, SEQ, N_FEATURES))).shape == (0,)


def test_unsupported_architectures_are_rejected():
    import keras

    gru = keras.Sequential(
        [
            keras.Input((SEQ, N_FEATURES)),
            keras.layers.Normalization(mean=0.0, variance=1.0),
            keras.layers.GRU(4),
        ]
    )
    with pytest.raises(ValueError, match="unsupported layer chain"):
        FastVolatilityPredictor.from_keras(gru)
    relu = keras.Sequential(
        [
            keras.Input((SEQ, N_FEATURES)),
            keras.layers.Normalization(mean=0.0, variance=1.0),
            keras.layers.LSTM(4, activation="relu"),
            keras.layers.Dense(1),
            keras.layers.Rescaling(0.5),
            keras.layers.Activation("exponential"),
        ]
    )
    with pytest.raises(ValueError, match="activation relu"):
        FastVolatilityPredictor.from_keras(relu)


def test_tf_function_variant_matches_keras():
    model = random_model(2, seed=5)
    X = windows(64, seed=6)
    forward = keras_tf_function(model)
    np.testing.assert_allclose(forward(X), predict_volatility(model, X), rtol=1e-6)
    np.testing.assert_allclose(forward(X[:1]), predict_volatility(model, X[:1]), rtol=1e-6)


def test_predictor_serves_without_tensorflow(tmp_path):
    model = random_model(2, seed=7)
    X = windows(8, seed=8)
    FastVolatilityPredictor.from_keras(model).save(tmp_path / "predictor")
    np.save(tmp_path / "X.npy", X)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from crypto_platform.lib.model.inference import FastVolatilityPredictor
        forecast = FastVolatilityPredictor.load({str(tmp_path / "predictor")!r}).predict(
            np.load({str(tmp_path / "X.npy")!r}))
        print(",".join(repr(float(v)) for v in forecast))
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TF was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert_close(np.array([float(v) for v in done.stdout.strip().split(",")]), predict_volatility(model, X))


@pytest.fixture(scope="module")
def small_trained():
    rng = np.random.default_rng(9)
    X = windows(700, seed=10)
    # A target that depends on the windows, so the trained weights are not just the initial ones.
    y = 0.02 * np.exp(0.3 * np.tanh(X[:, -6:, 0].mean(axis=1))) * rng.uniform(0.8, 1.2, size=700)
    config = replace(LSTMConfig.fast(), max_epochs=2)
    return train_lstm(X[:500], y[:500], X[500:], y[500:], config, FEATURES)


@pytest.fixture
def mlflow_tracking(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("lstm-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_logged_pyfunc_serves_keras_predictions(mlflow_tracking, small_trained, tmp_path):
    import mlflow
    import mlflow.tensorflow

    from crypto_platform.lib.model.packaging import (
        OUTPUT_COLUMN,
        feature_columns_of,
        log_lstm_model,
        rest_body,
    )

    X = windows(256, seed=12)
    with mlflow.start_run() as run:
        logged = log_lstm_model(small_trained, "volatility", X[:2], registered_model_name="lstm-vol-test")
    assert logged.run_id == run.info.run_id and logged.registered_version == "1"
    expected = small_trained.predict(X)

    served = mlflow.pyfunc.load_model(logged.model_uri)
    for batch in (X[:1], X):
        frame = served.predict(batch)
        assert list(frame.columns) == [OUTPUT_COLUMN]
        assert_close(frame[OUTPUT_COLUMN].to_numpy(), expected[: len(batch)])
    registered = mlflow.pyfunc.load_model("models:/lstm-vol-test/1")
    assert_close(registered.predict(X)[OUTPUT_COLUMN].to_numpy(), expected)
    with pytest.raises(Exception, match="float64 does not match"):
        served.predict(X.astype(np.float64))
    with pytest.raises(Exception, match=r"Shape of input"):
        served.predict(X[:, :24])

    keras_model = mlflow.tensorflow.load_model(logged.keras_model_uri)
    assert_close(predict_volatility(keras_model, X), expected)
    assert feature_columns_of(logged.run_id) == list(FEATURES)
    run_data = mlflow.get_run(logged.run_id).data
    assert run_data.params["lstm_units"] == str(small_trained.config.units)
    assert run_data.metrics["lstm_epochs_run"] == small_trained.epochs_run
    assert json.loads(rest_body(X[:2]))["inputs"][1][0][0] == pytest.approx(float(X[1, 0, 0]))

    # A fresh interpreter loads and serves the pyfunc without importing TensorFlow.
    np.save(tmp_path / "X.npy", X[:4])
    script = textwrap.dedent(
        f"""
        import sys
        import mlflow, numpy as np
        frame = mlflow.pyfunc.load_model({logged.model_uri!r}).predict(np.load({str(tmp_path / "X.npy")!r}))
        print(",".join(repr(float(v)) for v in frame["{OUTPUT_COLUMN}"]))
        assert "tensorflow" not in sys.modules, "TF was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(np.array([float(v) for v in done.stdout.strip().splitlines()[-1].split(",")]), expected[:4])
