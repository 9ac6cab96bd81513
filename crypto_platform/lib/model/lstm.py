"""TensorFlow/Keras LSTM forecaster of next-24-bar realized volatility.

Contract of the exported model (what `build_model` returns and `train_lstm` trains):
raw feature windows `float32 [n, sequence_length, n_features]` in, volatility `[n, 1]` out. The
feature normalisation is a Keras `Normalization` layer inside the model, with mean/variance fitted
on the training block only, so a loader needs no side files to score raw features.

Internally the network predicts the log-variance of the next 24 bars (`log_variance` Dense layer);
the exported output is `exp(0.5 · logvar)` built from standard layers only (`Rescaling(0.5)` then
`Activation("exponential")`), so `keras.models.load_model` works in a process that never imported
this module (no custom objects, no Lambda).

The training loss is QLIKE on the variance (see `qlike_loss`). Only `crypto_platform.lib` code that
trains imports TensorFlow; serving uses the numpy forward pass in `inference.py`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # keras is imported lazily: importing TF costs seconds and ~500 MB
    import keras

    from crypto_platform.lib.model.inference import FastVolatilityPredictor
    from crypto_platform.lib.model.windows import WindowSet

LOG_VARIANCE_LAYER = "log_variance"
VOLATILITY_LAYER = "volatility"
NORMALIZATION_LAYER = "normalization"
# Variance floor for the QLIKE log term: a window with a zero realised variance (a flat market or a
# data hole) must not produce log(0); the floor is far below any real 24-bar variance.
_VARIANCE_FLOOR = 1e-12
# Log-variance is clipped inside the loss only, so one bad batch cannot overflow exp(-z) to inf.
_LOGVAR_CLIP = 30.0


@dataclass(frozen=True)
class LSTMConfig:
    """Hyperparameters of the LSTM forecaster.

    `layers` stacked LSTM layers of `units` each (1 or 2: more depth does not pay on a few thousand
    windows per symbol), `dropout` between layers and before the head, `l2` on all kernels,
    Adam with `learning_rate` and gradient clipping at `clipnorm`, early stopping on the validation
    block after `patience` epochs without improvement (best weights restored).
    """

    units: int = 32
    layers: int = 2
    dropout: float = 0.1
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 40
    patience: int = 5
    seed: int = 7
    l2: float = 1e-5
    clipnorm: float = 1.0

    def __post_init__(self) -> None:
        if self.units < 1:
            raise ValueError(f"units must be >= 1, got {self.units}")
        if self.layers not in (1, 2):
            raise ValueError(f"layers must be 1 or 2, got {self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 0:
            raise ValueError("batch_size and max_epochs must be >= 1 and patience >= 0")
        if self.l2 < 0 or self.clipnorm <= 0:
            raise ValueError("l2 must be >= 0 and clipnorm > 0")

    @classmethod
    def default(cls) -> LSTMConfig:
        """Real training: 2×32 units, up to 40 epochs with patience 5."""
        return cls()

    @classmethod
    def fast(cls) -> LSTMConfig:
        """Tiny network for tests and the offline demo: trains in a few seconds on 2 CPU cores."""
        return cls(
            units=8,
            layers=1,
            dropout=0.0,
            learning_rate=5e-3,
            batch_size=128,
            max_epochs=8,
            patience=2,
            l2=0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainedLSTM:
    """A trained model and what MLflow should record about its training."""

    model: keras.Model  # exported model: raw features in, volatility [n, 1] out
    config: LSTMConfig
    feature_columns: tuple[str, ...]
    history: dict[str, list[float]]  # per-epoch "loss" and "val_loss" (QLIKE)
    best_epoch: int  # 1-based epoch whose weights were restored
    epochs_run: int
    seconds_per_epoch: float  # mean over epochs; the first one also pays graph tracing
    best_val_loss: float
    epoch_seconds: tuple[float, ...]
    normalizer_mean: np.ndarray = field(repr=False)
    normalizer_var: np.ndarray = field(repr=False)

    @property
    def sequence_length(self) -> int:
        return int(self.model.input_shape[1])

    def predict(self, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Volatility forecasts [n] from raw feature windows (Keras forward pass)."""
        return predict_volatility(self.model, X, batch_size=batch_size)

    def fast_predictor(self) -> FastVolatilityPredictor:
        """The numpy forward pass serving uses (no TensorFlow at prediction time)."""
        from crypto_platform.lib.model.inference import FastVolatilityPredictor

        return FastVolatilityPredictor.from_keras(self.model, feature_columns=self.feature_columns)


@dataclass(frozen=True)
class SearchResult:
    best: TrainedLSTM
    trials: list[dict[str, Any]]  # one row per grid point: the overrides, best_val_loss, epochs_run


def limit_tf_threads(intra_op: int = 2, inter_op: int = 1) -> None:
    """Cap TensorFlow's thread pools (the CI box has 2 cores shared with other work).

    TF only accepts this before its runtime starts; later calls are ignored, which is what a test
    module calling it after another module already ran TF wants.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        pass


def _validate_windows(X: np.ndarray, name: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"{name} must be [n, sequence_length, n_features], got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} holds no windows")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(X)).sum())} non-finite values")
    return X


def _validate_targets(y: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} targets for {n} windows")
    if not np.isfinite(y).all() or (y < 0).any():
        raise ValueError(f"{name} must be finite, non-negative realized volatilities")
    return y


def fit_normalizer(X_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance over every timestep of the training windows.

    Windows overlap, so each bar is counted up to `sequence_length` times; only the first and last
    few bars of the block are under-weighted, which is immaterial for a mean/variance. A constant
    feature gets variance 1: its centred value is 0 either way, and Keras' epsilon floor on the
    standard deviation would otherwise magnify float noise in it.
    """
    X = _validate_windows(X_train, "X_train")
    flat = X.reshape(-1, X.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    var = flat.var(axis=0)
    var = np.where(var > 1e-12 * np.maximum(mean**2, 1.0), var, 1.0)
    return mean, var


def qlike_loss(y_true, log_variance):
    """QLIKE of the variance forecast h = exp(z) against the realised variance σ² = y_true².

    QLIKE(σ², h) = σ²/h − log(σ²/h) − 1 ≥ 0 (0 iff h = σ²). Why QLIKE rather than MSE on log
    variance: its minimiser is the conditional *mean* of the variance (the quantity risk uses),
    while MSE on log RV targets the conditional mean of log RV, which is biased low by Jensen's
    inequality; QLIKE is also the loss Patton (2011) shows ranks forecasts consistently when the
    target is a noisy realised-variance proxy, and it is the evaluation metric of this project, so
    training and model selection optimise the same thing. Parameterising h by its log keeps h > 0
    and makes the gradient (1 − σ²/h) well scaled. Written as σ²·exp(−z) + z − log σ² − 1 so a
    zero realised variance still gets the right gradient.
    """
    from keras import ops

    z = ops.clip(ops.reshape(log_variance, (-1,)), -_LOGVAR_CLIP, _LOGVAR_CLIP)
    realized_var = ops.square(ops.reshape(ops.cast(y_true, z.dtype), (-1,)))
    log_realized = ops.log(ops.maximum(realized_var, _VARIANCE_FLOOR))
    return ops.mean(realized_var * ops.exp(-z) + z - log_realized - 1.0)


def build_model(
    sequence_length: int,
    n_features: int,
    config: LSTMConfig,
    normalizer_mean: np.ndarray,
    normalizer_var: np.ndarray,
    initial_log_variance: float = 0.0,
) -> keras.Model:
    """The exported model: raw windows → Normalization → LSTM stack → log-variance → volatility.

    `initial_log_variance` initialises the head's bias (train_lstm passes the log of the mean
    training variance), so the untrained network is the constant unconditional-variance forecaster
    and training starts from that baseline instead of from a variance of 1 (orders of magnitude off,
    with exploding QLIKE gradients).
    """
    import keras

    mean = np.asarray(normalizer_mean, dtype=np.float32).reshape(-1)
    var = np.asarray(normalizer_var, dtype=np.float32).reshape(-1)
    if mean.shape != (n_features,) or var.shape != (n_features,):
        raise ValueError(
            f"normalizer mean/var must have shape ({n_features},), got {mean.shape} and {var.shape}"
        )
    regularizer = keras.regularizers.L2(config.l2) if config.l2 > 0 else None

    inputs = keras.Input(shape=(sequence_length, n_features), name="features", dtype="float32")
    x = keras.layers.Normalization(axis=-1, mean=mean, variance=var, name=NORMALIZATION_LAYER)(inputs)
    for index in range(config.layers):
        last = index == config.layers - 1
        x = keras.layers.LSTM(
            config.units,
            return_sequences=not last,
            kernel_regularizer=regularizer,
            recurrent_regularizer=regularizer,
            name=f"lstm_{index}",
        )(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{index}")(x)
    log_variance = keras.layers.Dense(
        1,
        kernel_regularizer=regularizer,
        bias_initializer=keras.initializers.Constant(float(initial_log_variance)),
        name=LOG_VARIANCE_LAYER,
    )(x)
    # sqrt(exp(z)) = exp(z / 2), from standard layers so the saved model needs no custom objects.
    log_vol = keras.layers.Rescaling(0.5, name="log_volatility")(log_variance)
    volatility = keras.layers.Activation("exponential", name=VOLATILITY_LAYER)(log_vol)
    return keras.Model(inputs, volatility, name="lstm_volatility")


def log_variance_view(model: keras.Model) -> keras.Model:
    """The same network (shared weights) with the log-variance output, which is what is trained."""
    import keras

    return keras.Model(model.inputs, model.get_layer(LOG_VARIANCE_LAYER).output, name="lstm_log_variance")


def predict_volatility(model: keras.Model, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Keras forward pass in inference mode, batched; returns volatility [n] as float64."""
    X = _validate_windows(X, "X").astype(np.float32, copy=False)
    outputs = [
        np.asarray(model(X[start : start + batch_size], training=False))
        for start in range(0, X.shape[0], batch_size)
    ]
    return np.concatenate(outputs).reshape(-1).astype(np.float64)


def _epoch_timer():
    """A callback recording each epoch's wall-clock seconds (defined here: keras is imported lazily)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def train_lstm(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    config: LSTMConfig,
    feature_columns: Sequence[str],
    verbose: int = 0,
) -> TrainedLSTM:
    """Train on the training block with early stopping on the (later) validation block.

    The chronological train/validation/test split is made upstream (MODEL-LIB); here mini-batches of
    already-built windows are shuffled, which leaks nothing across time because every window carries
    its own 48-bar history and the validation windows all lie after the training ones.
    Reproducible: `keras.utils.set_random_seed(config.seed)` seeds Python, numpy and TF (weight init,
    dropout masks, batch order); on CPU with fixed thread pools the kernels are deterministic, so the
    same data and seed give the same weights (tested).
    """
    import keras

    X_train = _validate_windows(X_train, "X_train").astype(np.float32, copy=False)
    X_val = _validate_windows(X_val, "X_val").astype(np.float32, copy=False)
    y_train = _validate_targets(y_train, X_train.shape[0], "y_train")
    y_val = _validate_targets(y_val, X_val.shape[0], "y_val")
    if X_val.shape[1:] != X_train.shape[1:]:
        raise ValueError(f"X_val windows {X_val.shape[1:]} differ from X_train windows {X_train.shape[1:]}")
    feature_columns = tuple(feature_columns)
    if len(feature_columns) != X_train.shape[2]:
        raise ValueError(f"{len(feature_columns)} feature_columns for {X_train.shape[2]} features")

    keras.utils.set_random_seed(config.seed)
    mean, var = fit_normalizer(X_train)
    initial_log_variance = math.log(max(float(np.mean(y_train**2)), _VARIANCE_FLOOR))
    model = build_model(X_train.shape[1], X_train.shape[2], config, mean, var, initial_log_variance)
    trainable = log_variance_view(model)
    trainable.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate, clipnorm=config.clipnorm),
        loss=qlike_loss,
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    timer = _epoch_timer()
    fit = trainable.fit(
        X_train,
        y_train.astype(np.float32),
        validation_data=(X_val, y_val.astype(np.float32)),
        batch_size=config.batch_size,
        epochs=config.max_epochs,
        shuffle=True,
        callbacks=[stopper, timer],
        verbose=verbose,
    )
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    val_losses = history["val_loss"]
    best_index = int(np.argmin(val_losses))
    return TrainedLSTM(
        model=model,
        config=config,
        feature_columns=feature_columns,
        history=history,
        best_epoch=best_index + 1,
        epochs_run=len(val_losses),
        seconds_per_epoch=float(np.mean(timer.seconds)),
        best_val_loss=float(val_losses[best_index]),
        epoch_seconds=tuple(timer.seconds),
        normalizer_mean=mean,
        normalizer_var=var,
    )


DEFAULT_SEARCH_GRID: Mapping[str, Sequence[Any]] = {"units": (8, 16), "learning_rate": (2e-3, 5e-3)}


def small_hyperparameter_search(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    feature_columns: Sequence[str],
    base: LSTMConfig | None = None,
    grid: Mapping[str, Sequence[Any]] = DEFAULT_SEARCH_GRID,
) -> SearchResult:
    """Train one model per grid point and keep the best validation QLIKE.

    The validation block both stops training and picks the grid point; the test block (held out
    upstream) stays untouched for the reported metrics. The grid is deliberately tiny: each point is a
    full training run.
    """
    base = base or LSTMConfig.fast()
    unknown = set(grid) - set(LSTMConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown LSTMConfig fields in grid: {sorted(unknown)}")
    keys = list(grid)
    best: TrainedLSTM | None = None
    trials: list[dict[str, Any]] = []
    for values in itertools.product(*(grid[key] for key in keys)):
        overrides = dict(zip(keys, values, strict=True))
        trained = train_lstm(X_train, y_train, X_val, y_val, replace(base, **overrides), feature_columns)
        trials.append({**overrides, "best_val_loss": trained.best_val_loss, "epochs_run": trained.epochs_run})
        if best is None or trained.best_val_loss < best.best_val_loss:
            best = trained
    if best is None:
        raise ValueError("the search grid is empty")
    return SearchResult(best=best, trials=trials)


def holdout_split(
    ts: np.ndarray, fraction: float, horizon: int, bar_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation): validation = windows at or after the time cut leaving `fraction` of
    the windows after it (one cut for all symbols); fit = windows whose `horizon`-bar target ends
    before the cut (the ones in between are dropped: their targets overlap the validation period)."""
    ts = np.asarray(ts, dtype=np.int64)
    if ts.size == 0:
        raise ValueError("no windows to split")
    cut = int(np.quantile(ts, 1.0 - fraction, method="lower"))
    fit_idx = np.flatnonzero(ts + horizon * bar_ms < cut)
    val_idx = np.flatnonzero(ts >= cut)
    if fit_idx.size == 0 or val_idx.size == 0:
        raise ValueError("too few windows to hold out a validation block")
    return fit_idx, val_idx


class LSTMForecaster:
    """The LSTM behind the baselines' `Forecaster` protocol: `fit(WindowSet)`, `predict(WindowSet)`.

    `fit(train)` without a validation block holds out the latest `validation_fraction` of `train` by
    time (one cut for all symbols) for early stopping, and drops the windows whose 24-bar target
    reaches past the cut. Predictions use the numpy fast path, as serving does.
    """

    name = "lstm"

    def __init__(self, config: LSTMConfig | None = None, validation_fraction: float = 0.15) -> None:
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        self.config = config or LSTMConfig.default()
        self.validation_fraction = validation_fraction
        self.trained: TrainedLSTM | None = None
        self._fast: FastVolatilityPredictor | None = None

    def fit(self, train: WindowSet, validation: WindowSet | None = None) -> LSTMForecaster:
        if validation is None:
            fit_idx, val_idx = holdout_split(train.ts, self.validation_fraction, train.horizon, train.bar_ms)
            X_fit, y_fit = train.X[fit_idx], train.y[fit_idx]
            X_val, y_val = train.X[val_idx], train.y[val_idx]
        else:
            if tuple(validation.feature_columns) != tuple(train.feature_columns):
                raise ValueError("train and validation windows have different feature columns")
            X_fit, y_fit, X_val, y_val = train.X, train.y, validation.X, validation.y
        self.trained = train_lstm(X_fit, y_fit, X_val, y_val, self.config, train.feature_columns)
        self._fast = self.trained.fast_predictor()
        return self

    def predict(self, windows: WindowSet) -> np.ndarray:
        if self.trained is None or self._fast is None:
            raise RuntimeError("lstm: call fit first")
        if tuple(windows.feature_columns) != self.trained.feature_columns:
            raise ValueError(
                f"windows have feature columns {tuple(windows.feature_columns)}, "
                f"the model was trained on {self.trained.feature_columns}"
            )
        return self._fast.predict(windows.X)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.config.to_dict()
        if self.trained is not None:
            params.update(best_epoch=self.trained.best_epoch, epochs_run=self.trained.epochs_run)
        return params
