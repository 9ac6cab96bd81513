"""MLflow packaging of volatility forecasters: a pyfunc that serves without TensorFlow.

Serving contract of every logged forecaster (LSTM or baseline):

* input: one float32 numpy array `[n, sequence_length, n_features]` of RAW feature windows, features
  in the order of the model's `feature_columns` (logged as the `feature_columns.json` run artifact and
  in the predictor header). The signature is a TensorSpec `(-1, sequence_length, n_features)` float32,
  so MLflow rejects a wrong shape or dtype before the model runs; over REST the body is
  `{"inputs": [[[...], ...], ...]}`. A 3-D array was chosen over a long DataFrame with a
  `window_id` column because it is what the windows already are, it needs no regrouping, and MLflow
  validates its shape.
* output: a pandas DataFrame with one float64 column `predicted_volatility`, one row per window
  (volatility of the next 24 bars, same units as the training target).

`VolatilityPyfunc` wraps any forecaster class with `load(path)` (classmethod) and `predict(X) ->
ndarray[n]`; by default `inference.FastVolatilityPredictor`, whose artifact is an `.npz` + JSON, so
`load_context` never imports TensorFlow.

HAR+ and its TF residual need the symbol, the bar time and cross-symbol columns that a window array
does not carry: they are logged with `log_frame_forecaster` as a `FeatureFramePyfunc`, whose input is
a feature frame (pandas DataFrame: `symbol`, `ts`, feature columns) — the contract is written down
in `frame_serving`'s docstring. The logged model's `input_contract` tag (`frame_serving.
INPUT_CONTRACT_TAG`) says which of the two contracts a version speaks.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema, TensorSpec

if TYPE_CHECKING:
    from crypto_platform.lib.model.lstm import TrainedLSTM

OUTPUT_COLUMN = "predicted_volatility"
FORECASTER_ARTIFACT = "forecaster"
FAST_LSTM_CLASS = "crypto_platform.lib.model.inference:FastVolatilityPredictor"
KERAS_MODEL_NAME = "keras_model"
FRAME_FORECASTER_CLASS = "crypto_platform.lib.model.frame_serving:FrameForecaster"


def _import_class(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


class VolatilityPyfunc(PythonModel):
    """pyfunc wrapper: raw feature windows in, a `predicted_volatility` DataFrame out."""

    def __init__(self, forecaster_class: str = FAST_LSTM_CLASS) -> None:
        # A "module:Class" string, not the class: the pickled wrapper then holds no reference that
        # would drag the forecaster's dependencies into unpickling.
        self.forecaster_class = forecaster_class
        self._forecaster: Any = None

    def load_context(self, context) -> None:
        self._forecaster = _import_class(self.forecaster_class).load(context.artifacts[FORECASTER_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self._forecaster is None:
            raise RuntimeError("load_context was not called: load the model with mlflow.pyfunc.load_model")
        if isinstance(model_input, pd.DataFrame | dict | list):
            raise TypeError(
                "expected a float32 numpy array [n, sequence_length, n_features] of raw feature windows, "
                f"got {type(model_input).__name__}"
            )
        forecasts = np.asarray(self._forecaster.predict(np.asarray(model_input)), dtype=np.float64)
        return pd.DataFrame({OUTPUT_COLUMN: forecasts.reshape(-1)})


def volatility_signature(sequence_length: int, n_features: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, sequence_length, n_features))]),
        outputs=Schema([ColSpec("double", OUTPUT_COLUMN)]),
    )


def serving_requirements() -> list[str]:
    """What the pyfunc needs at serving time: no TensorFlow."""
    return [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


def _package_code_path() -> str:
    """The `crypto_platform` package directory, shipped with the model so that the pickled wrapper and
    the forecaster class import in an environment where this project is not installed
    (`mlflow models serve`)."""
    import crypto_platform

    return str(Path(crypto_platform.__file__).parent)


@dataclass(frozen=True)
class LoggedVolatilityModel:
    run_id: str
    model_uri: str  # the pyfunc (numpy forward pass): what serving loads
    model_id: str | None
    keras_model_uri: str
    registered_version: str | None


def log_forecaster(
    forecaster: Any,
    name: str,
    input_example: np.ndarray,
    forecaster_class: str,
    registered_model_name: str | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log any forecaster with `save(dir)` / `load(dir)` / `predict(X)` as a `VolatilityPyfunc`."""
    example = np.asarray(input_example, dtype=np.float32)
    if example.ndim != 3:
        raise ValueError(f"input_example must be [n, sequence_length, n_features], got {example.shape}")
    with tempfile.TemporaryDirectory() as tmp:
        artifact_dir = forecaster.save(Path(tmp) / FORECASTER_ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=VolatilityPyfunc(forecaster_class),
            artifacts={FORECASTER_ARTIFACT: str(artifact_dir)},
            code_paths=[_package_code_path()],
            input_example=example,
            signature=volatility_signature(example.shape[1], example.shape[2]),
            pip_requirements=serving_requirements(),
            registered_model_name=registered_model_name,
        )


def log_lstm_model(
    trained: TrainedLSTM,
    name: str,
    input_example: np.ndarray,
    registered_model_name: str | None = None,
    log_training_summary: bool = True,
) -> LoggedVolatilityModel:
    """Log a trained LSTM to the active MLflow run (one is started when none is active).

    Logs the numpy pyfunc under `name` (optionally registered) and the Keras model itself under
    `keras_model` (TensorFlow flavor, for retraining or inspection; not what serving loads). With
    `log_training_summary`, also the config as params, the per-epoch losses and the training figures
    as metrics, and the feature columns as a JSON artifact.
    """
    import mlflow.tensorflow
    import tensorflow as tf

    example = np.asarray(input_example, dtype=np.float32)
    active = mlflow.active_run()
    with nullcontext(active) if active is not None else mlflow.start_run() as run:
        if log_training_summary:
            mlflow.log_params({f"lstm_{key}": value for key, value in trained.config.to_dict().items()})
            mlflow.log_dict({"feature_columns": list(trained.feature_columns)}, "feature_columns.json")
            for key, values in trained.history.items():
                for epoch, value in enumerate(values):
                    mlflow.log_metric(f"lstm_epoch_{key}", value, step=epoch + 1)
            mlflow.log_metrics(
                {
                    "lstm_best_val_qlike": trained.best_val_loss,
                    "lstm_best_epoch": trained.best_epoch,
                    "lstm_epochs_run": trained.epochs_run,
                    "lstm_seconds_per_epoch": trained.seconds_per_epoch,
                }
            )
        info = log_forecaster(
            trained.fast_predictor(),
            name=name,
            input_example=example,
            forecaster_class=FAST_LSTM_CLASS,
            registered_model_name=registered_model_name,
        )
        keras_info = mlflow.tensorflow.log_model(
            trained.model,
            name=KERAS_MODEL_NAME,
            input_example=example,
            # An explicit signature skips MLflow's inference run of the model on the example.
            signature=ModelSignature(
                inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
                outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1))]),
            ),
            pip_requirements=[f"tensorflow-cpu=={tf.__version__}", *serving_requirements()],
        )
        version = info.registered_model_version
        return LoggedVolatilityModel(
            run_id=run.info.run_id,
            model_uri=info.model_uri,
            model_id=getattr(info, "model_id", None),
            keras_model_uri=keras_info.model_uri,
            registered_version=str(version) if version is not None else None,
        )


def feature_columns_of(run_id: str) -> list[str]:
    """The feature order a logged model expects (from the run's `feature_columns.json`)."""
    return list(mlflow.artifacts.load_dict(f"runs:/{run_id}/feature_columns.json")["feature_columns"])


def rest_body(windows: np.ndarray) -> str:
    """The JSON body the MLflow scoring server (`mlflow models serve`) accepts for these windows."""
    return json.dumps({"inputs": np.asarray(windows, dtype=np.float32).tolist()})


class FeatureFramePyfunc(PythonModel):
    """pyfunc wrapper of a `frame_serving.FrameForecaster`: a feature frame in, forecasts per row out."""

    def __init__(self, forecaster_class: str = FRAME_FORECASTER_CLASS) -> None:
        self.forecaster_class = forecaster_class
        self._forecaster: Any = None

    def load_context(self, context) -> None:
        self._forecaster = _import_class(self.forecaster_class).load(context.artifacts[FORECASTER_ARTIFACT])

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self._forecaster is None:
            raise RuntimeError("load_context was not called: load the model with mlflow.pyfunc.load_model")
        if not isinstance(model_input, pd.DataFrame):
            raise TypeError(
                "expected a pandas DataFrame of feature rows (symbol, ts, feature columns), "
                f"got {type(model_input).__name__}"
            )
        return self._forecaster.predict_frame(model_input)


def frame_signature(
    feature_columns: list[str] | tuple[str, ...], output_columns: list[str]
) -> ModelSignature:
    """symbol string, ts long, each feature double → symbol, ts and double forecast / interval columns."""
    inputs = [ColSpec("string", "symbol"), ColSpec("long", "ts")]
    inputs += [ColSpec("double", c) for c in feature_columns]
    outputs = [ColSpec("string", "symbol"), ColSpec("long", "ts")]
    outputs += [ColSpec("double", c) for c in output_columns if c not in ("symbol", "ts")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def serving_frame_requirements() -> list[str]:
    """The frame pyfunc also needs polars (windows are rebuilt with `windows.build_windows`)."""
    import polars as pl

    return [*serving_requirements(), f"polars=={pl.__version__}"]


def log_frame_forecaster(
    forecaster: Any,
    name: str,
    input_example: pd.DataFrame,
    registered_model_name: str | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log a `FrameForecaster` (HAR+ or residual) to the active run as a `FeatureFramePyfunc`.

    `input_example`: a few feature rows with `symbol`, `ts` and the forecaster's `feature_columns`
    (only those are kept, in that order). The model carries the `input_contract` metadata."""
    from crypto_platform.lib.model.frame_serving import FRAME_CONTRACT, INPUT_CONTRACT_TAG

    columns = ["symbol", "ts", *forecaster.feature_columns]
    missing = [c for c in columns if c not in input_example.columns]
    if missing:
        raise ValueError(f"input_example lacks columns {missing}")
    example = input_example[columns].astype({"ts": "int64", **{c: "float64" for c in columns[2:]}})
    with tempfile.TemporaryDirectory() as tmp:
        artifact_dir = forecaster.save(Path(tmp) / FORECASTER_ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=FeatureFramePyfunc(),
            artifacts={FORECASTER_ARTIFACT: str(artifact_dir)},
            code_paths=[_package_code_path()],
            input_example=example,
            signature=frame_signature(forecaster.feature_columns, forecaster.output_columns),
            pip_requirements=serving_frame_requirements(),
            registered_model_name=registered_model_name,
            metadata={INPUT_CONTRACT_TAG: FRAME_CONTRACT, "kind": forecaster.kind},
        )
