"""Inference latency of the LSTM volatility model, four ways, and training time per epoch.

Measured in one run on the same model (default config) and the same inputs:
  * Keras `model.predict(x)` (the baseline),
  * Keras `model(x, training=False)` (eager call),
  * a `tf.function` with a fixed input signature,
  * the numpy fast path (`FastVolatilityPredictor`: float32, its default, and float64),
for 1 window (serving / Kafka scorer) and 256 windows (a batch backfill). Each figure is the median over
repetitions after warm-up calls (excluded). Then trains the default config on ~20k synthetic GARCH
windows for a few epochs and reports seconds per epoch (first epoch, which includes graph tracing,
reported separately). TF is capped at `--threads` intra-op threads (2 by default, like CI).

Prints JSON; `ratio_fast_to_keras_predict` < 1 means the fast path is faster.

    .venv/bin/python benchmarks/inference.py [--features 8] [--train-windows 20000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from crypto_platform.lib.model.inference import FastVolatilityPredictor, keras_tf_function
from crypto_platform.lib.model.lstm import LSTMConfig, build_model, limit_tf_threads, train_lstm

SEQ, HORIZON = 48, 24


def garch_windows(n_windows: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """GARCH(1,1) returns → windows [n, 48, n_features] (lagged |r|, r², …) and next-24-bar realized vol."""
    rng = np.random.default_rng(seed)
    omega, alpha, beta = 2e-6, 0.08, 0.90
    n_bars = 500 + n_windows + SEQ + HORIZON
    shocks = rng.standard_normal(n_bars)
    returns = np.empty(n_bars)
    variance = omega / (1 - alpha - beta)
    for t in range(n_bars):
        returns[t] = np.sqrt(variance) * shocks[t]
        variance = omega + alpha * returns[t] ** 2 + beta * variance
    returns = returns[500:]
    base = [returns, np.abs(returns), np.log(np.abs(returns) + 1e-8), returns**2]
    # Extra columns: noisy copies, so the feature count matches what the real pipeline feeds.
    extra = [base[i % 4] * (1 + 0.1 * rng.standard_normal(returns.size)) for i in range(n_features - 4)]
    per_bar = np.stack((base + extra)[:n_features], axis=1).astype(np.float32)
    X = np.lib.stride_tricks.sliding_window_view(per_bar, (SEQ, n_features))[:n_windows, 0]
    cumulative = np.concatenate([[0.0], np.cumsum(returns**2)])
    end = np.arange(n_windows) + SEQ
    return np.ascontiguousarray(X), np.sqrt(cumulative[end + HORIZON] - cumulative[end])


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def latency(model, X: np.ndarray, repeats: int, warmup: int) -> dict[str, float]:
    import tensorflow as tf

    fast64 = FastVolatilityPredictor.from_keras(model, dtype="float64")
    fast32 = FastVolatilityPredictor.from_keras(model, dtype="float32")
    tf_fn = keras_tf_function(model)
    x_tensor = tf.constant(X)
    return {
        "keras_predict_ms": median_ms(lambda: model.predict(X, verbose=0), repeats, warmup),
        "keras_call_ms": median_ms(lambda: np.asarray(model(x_tensor, training=False)), repeats, warmup),
        "tf_function_ms": median_ms(lambda: tf_fn(X), repeats, warmup),
        "numpy_fast_ms": median_ms(lambda: fast32.predict(X), repeats, warmup),
        "numpy_fast_float64_ms": median_ms(lambda: fast64.predict(X), repeats, warmup),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--train-windows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if args.features < 4:
        parser.error("--features must be >= 4")

    limit_tf_threads(intra_op=args.threads, inter_op=1)
    import keras
    import tensorflow as tf

    config = LSTMConfig.default()
    rng = np.random.default_rng(0)
    X_all, y_all = garch_windows(args.train_windows + 2_000, args.features, seed=1)

    # Latency: the default architecture with weights from a short fit would time the same as random
    # ones; the statistics of the inputs are what matter for the normaliser, so fit it on the data.
    keras.utils.set_random_seed(config.seed)
    flat = X_all[: args.train_windows].reshape(-1, args.features)
    model = build_model(SEQ, args.features, config, flat.mean(axis=0), flat.var(axis=0), -7.0)
    figures: dict[str, dict[str, float]] = {}
    for n, repeats in ((1, args.repeats), (256, max(10, args.repeats // 5))):
        X = X_all[rng.choice(len(X_all), size=n, replace=False)]
        figures[str(n)] = latency(model, X, repeats=repeats, warmup=5)
        keras_out = model.predict(X, verbose=0).reshape(-1)
        fast_out = FastVolatilityPredictor.from_keras(model).predict(X)
        figures[str(n)]["max_rel_diff_fast_vs_keras"] = float(np.max(np.abs(fast_out / keras_out - 1)))

    # Training time per epoch, default config, chronological split with a horizon-long gap.
    n_train = args.train_windows
    X_train, y_train = X_all[:n_train], y_all[:n_train]
    X_val, y_val = X_all[n_train + SEQ + HORIZON :], y_all[n_train + SEQ + HORIZON :]
    timed_config = replace(config, max_epochs=args.epochs, patience=args.epochs)
    trained = train_lstm(
        X_train, y_train, X_val, y_val, timed_config, [f"f{i}" for i in range(args.features)]
    )
    epoch_seconds = list(trained.epoch_seconds)

    result = {
        "benchmark": "lstm_inference",
        "machine": {
            "cpu_count": os.cpu_count(),
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "model": {
            "config": "default",
            "units": config.units,
            "layers": config.layers,
            "sequence_length": SEQ,
            "n_features": args.features,
        },
        "latency_ms": figures,
        "ratio_fast_to_keras_predict": {
            n: round(f["numpy_fast_ms"] / f["keras_predict_ms"], 4) for n, f in figures.items()
        },
        "ratio_fast_to_tf_function": {
            n: round(f["numpy_fast_ms"] / f["tf_function_ms"], 4) for n, f in figures.items()
        },
        "training": {
            "train_windows": len(X_train),
            "val_windows": len(X_val),
            "batch_size": config.batch_size,
            "epochs_run": trained.epochs_run,
            "epoch_seconds": [round(s, 3) for s in epoch_seconds],
            "first_epoch_seconds": round(epoch_seconds[0], 3),
            "steady_seconds_per_epoch": round(statistics.median(epoch_seconds[1:] or epoch_seconds), 3),
            "val_loss": [round(v, 5) for v in trained.history["val_loss"]],
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
