"""The Keras LSTM volatility model: training, normalisation inside the model, reproducibility, saving.

Data: a simulated GARCH(1,1) hourly return series with persistent variance (α + β = 0.98), so the
next-24-bar realized volatility is predictable from the last 48 bars, turned into windows with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from crypto_platform.lib.model.lstm import (
    LSTMConfig,
    LSTMForecaster,
    build_model,
    fit_normalizer,
    holdout_split,
    limit_tf_threads,
    predict_volatility,
    qlike_loss,
    small_hyperparameter_search,
    train_lstm,
)

SEQ, HORIZON = 48, 24
FEATURES = ("ret", "abs_ret", "log_abs_ret", "sq_ret")


def garch_windows(
    n_windows: int, seed: int, omega: float = 2e-6, alpha: float = 0.08, beta: float = 0.90
) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n, 48, 4] of per-bar features and the realized volatility of the next 24 bars."""
    rng = np.random.default_rng(seed)
    burn_in = 500
    n_bars = burn_in + n_windows + SEQ + HORIZON
    shocks = rng.standard_normal(n_bars)
    returns = np.empty(n_bars)
    variance = omega / (1 - alpha - beta)
    for t in range(n_bars):
        returns[t] = np.sqrt(variance) * shocks[t]
        variance = omega + alpha * returns[t] ** 2 + beta * variance
    returns = returns[burn_in:]
    per_bar = np.stack([returns, np.abs(returns), np.log(np.abs(returns) + 1e-8), returns**2], axis=1)
    X = np.lib.stride_tricks.sliding_window_view(per_bar.astype(np.float32), (SEQ, len(FEATURES)))
    X = np.ascontiguousarray(X[:n_windows, 0])
    cumulative = np.concatenate([[0.0], np.cumsum(returns**2)])
    window_end = np.arange(n_windows) + SEQ  # first bar after the window
    y = np.sqrt(cumulative[window_end + HORIZON] - cumulative[window_end])
    return X, y


def qlike(y_vol: np.ndarray, forecast_vol: np.ndarray) -> float:
    ratio = (np.asarray(y_vol) / np.asarray(forecast_vol)) ** 2
    return float(np.mean(ratio - np.log(ratio) - 1.0))


@pytest.fixture(scope="module", autouse=True)
def _tf_threads():
    limit_tf_threads(intra_op=2, inter_op=1)


@pytest.fixture(scope="module")
def blocks():
    """Chronological train / validation blocks, a horizon-long gap between them (no target overlap)."""
    X, y = garch_windows(2600, seed=11)
    train, val_start = 1800, 1800 + SEQ + HORIZON
    return X[:train], y[:train], X[val_start:], y[val_start:]


@pytest.fixture(scope="module")
def trained(blocks):
    X_train, y_train, X_val, y_val = blocks
    return train_lstm(X_train, y_train, X_val, y_val, LSTMConfig.fast(), FEATURES)


def test_config_presets_and_validation():
    fast, default = LSTMConfig.fast(), LSTMConfig.default()
    assert fast.units < default.units and fast.max_epochs < default.max_epochs
    assert default.to_dict()["layers"] == 2
    with pytest.raises(ValueError, match="layers"):
        LSTMConfig(layers=3)
    with pytest.raises(ValueError, match="dropout"):
        LSTMConfig(dropout=1.0)


def test_fit_normalizer_is_per_feature_over_all_timesteps():
    rng = np.random.default_rng(0)
    X = rng.normal(loc=[1.0, -5.0, 0.0], scale=[2.0, 0.1, 1.0], size=(300, SEQ, 3)).astype(np.float32)
    X[:, :, 2] = 4.0  # a constant feature
    mean, var = fit_normalizer(X)
    flat = X.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(axis=0))
    np.testing.assert_allclose(var[:2], flat[:, :2].var(axis=0))
    assert var[2] == 1.0
    X[5, 7, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_normalizer(X)


def test_qlike_loss_matches_the_formula_and_is_zero_for_a_perfect_forecast():
    y = np.array([0.01, 0.02, 0.05], dtype=np.float32)
    log_var = np.log(np.array([0.012, 0.018, 0.05]) ** 2).astype(np.float32)
    expected = qlike(y, np.exp(0.5 * log_var))
    assert float(qlike_loss(y, log_var)) == pytest.approx(expected, rel=1e-5)
    assert float(qlike_loss(y, np.log(y.astype(np.float64) ** 2))) == pytest.approx(0.0, abs=1e-6)
    # A zero realized variance still gives a finite loss.
    assert np.isfinite(float(qlike_loss(np.zeros(2, np.float32), np.full(2, -8.0, np.float32))))


def test_training_beats_the_untrained_model_and_the_constant_forecaster(blocks, trained):
    _, y_train, X_val, y_val = blocks
    forecast = trained.predict(X_val)
    constant = np.full_like(y_val, np.sqrt(np.mean(y_train**2)))
    untrained = build_model(
        SEQ, len(FEATURES), trained.config, trained.normalizer_mean, trained.normalizer_var,
        initial_log_variance=float(np.log(np.mean(y_train**2))),
    )  # fmt: skip
    model_qlike = qlike(y_val, forecast)
    assert model_qlike < 0.85 * qlike(y_val, constant)
    assert model_qlike < qlike(y_val, predict_volatility(untrained, X_val))
    # Early stopping restored the best epoch: its validation loss (QLIKE, no L2 in the fast preset)
    # is what the returned model scores.
    assert trained.best_val_loss == min(trained.history["val_loss"])
    assert model_qlike == pytest.approx(trained.best_val_loss, rel=1e-3)
    assert 1 <= trained.best_epoch <= trained.epochs_run <= trained.config.max_epochs
    assert trained.seconds_per_epoch > 0
    assert len(trained.history["loss"]) == trained.epochs_run


def test_raw_features_in_volatility_out(blocks, trained):
    X_train, _, X_val, y_val = blocks
    forecast = trained.model.predict(X_val[:64], verbose=0)
    assert forecast.shape == (64, 1)
    assert np.isfinite(forecast).all() and (forecast > 0).all()
    # Same order of magnitude as the realized volatility it forecasts.
    assert 0.5 < np.median(forecast) / np.median(y_val) < 2.0
    norm = trained.model.get_layer("normalization")
    mean, var = fit_normalizer(X_train)
    np.testing.assert_allclose(np.asarray(norm.mean).reshape(-1), mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(norm.variance).reshape(-1), var, rtol=1e-6)


@pytest.mark.slow
def test_a_column_scaled_by_1000_changes_nothing_material(blocks, trained):
    """Normalisation lives in the model: scaling a raw input column is absorbed by the fitted mean/var."""
    X_train, y_train, X_val, y_val = blocks
    scale = np.array([1.0, 1.0, 1.0, 1000.0], dtype=np.float32)
    rescaled = train_lstm(X_train * scale, y_train, X_val * scale, y_val, LSTMConfig.fast(), FEATURES)
    ratio = rescaled.predict(X_val * scale) / trained.predict(X_val)
    assert 0.67 < np.median(ratio) < 1.5
    assert qlike(y_val, rescaled.predict(X_val * scale)) < 0.85 * qlike(
        y_val, np.full_like(y_val, np.sqrt(np.mean(y_train**2)))
    )


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(blocks):
    X_train, y_train, X_val, y_val = blocks
    config = replace(LSTMConfig.fast(), max_epochs=2, dropout=0.2)
    first, second = (
        train_lstm(X_train[:600], y_train[:600], X_val[:200], y_val[:200], config, FEATURES) for _ in range(2)
    )
    for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.predict(X_val[:50]), second.predict(X_val[:50]))
    other = train_lstm(
        X_train[:600], y_train[:600], X_val[:200], y_val[:200], replace(config, seed=99), FEATURES
    )
    assert not np.array_equal(first.model.get_weights()[0], other.model.get_weights()[0])


def test_saved_keras_model_reloads_without_custom_objects(tmp_path, blocks, trained):
    import keras

    _, _, X_val, _ = blocks
    path = tmp_path / "m.keras"
    trained.model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(predict_volatility(reloaded, X_val), trained.predict(X_val), rtol=1e-6)


@pytest.mark.slow
def test_two_layer_model_with_dropout_trains(blocks):
    X_train, y_train, X_val, y_val = blocks
    config = replace(LSTMConfig.fast(), layers=2, dropout=0.1, l2=1e-5, max_epochs=2)
    result = train_lstm(X_train[:800], y_train[:800], X_val[:300], y_val[:300], config, FEATURES)
    assert [layer.name for layer in result.model.layers if "lstm" in layer.name] == ["lstm_0", "lstm_1"]
    forecast = result.predict(X_val[:300])
    assert np.isfinite(forecast).all() and (forecast > 0).all()


def test_train_rejects_bad_inputs(blocks):
    X_train, y_train, X_val, y_val = blocks
    config = LSTMConfig.fast()
    with pytest.raises(ValueError, match="feature_columns"):
        train_lstm(X_train, y_train, X_val, y_val, config, FEATURES[:3])
    with pytest.raises(ValueError, match="targets"):
        train_lstm(X_train, y_train[:-1], X_val, y_val, config, FEATURES)
    with pytest.raises(ValueError, match="non-negative"):
        train_lstm(X_train, -y_train, X_val, y_val, config, FEATURES)
    bad = X_val.copy()
    bad[3, 2, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        train_lstm(X_train, y_train, bad, y_val, config, FEATURES)
    with pytest.raises(ValueError, match="differ"):
        train_lstm(X_train, y_train, X_val[:, :24], y_val, config, FEATURES)


@pytest.mark.slow
def test_small_hyperparameter_search_keeps_the_best_validation_loss(blocks):
    X_train, y_train, X_val, y_val = blocks
    base = replace(LSTMConfig.fast(), max_epochs=2)
    result = small_hyperparameter_search(
        X_train[:600], y_train[:600], X_val[:200], y_val[:200], FEATURES, base=base, grid={"units": (4, 8)}
    )
    assert [trial["units"] for trial in result.trials] == [4, 8]
    assert result.best.best_val_loss == min(trial["best_val_loss"] for trial in result.trials)
    assert result.best.config.units in (4, 8)
    with pytest.raises(ValueError, match="unknown"):
        small_hyperparameter_search(X_train, y_train, X_val, y_val, FEATURES, grid={"width": (1,)})


HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Windows:
    """The attributes of MODEL-LIB's WindowSet that the LSTM adapter reads (kept local: no dependency)."""

    X: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    feature_columns: tuple[str, ...]
    bar_ms: int = HOUR_MS
    horizon: int = HORIZON


def test_holdout_split_purges_windows_whose_target_crosses_the_cut():
    ts = np.tile(np.arange(100, dtype=np.int64) * HOUR_MS, 2)  # two symbols, same hours
    fit_idx, val_idx = holdout_split(ts, 0.2, HORIZON, HOUR_MS)
    cut_hour = ts[val_idx].min() // HOUR_MS
    assert 0.18 <= val_idx.size / ts.size <= 0.22
    np.testing.assert_array_equal(np.sort(ts[val_idx]) // HOUR_MS, np.repeat(np.arange(cut_hour, 100), 2))
    # Fit windows: every one whose 24-bar target ends before the cut, and no other.
    np.testing.assert_array_equal(
        np.sort(ts[fit_idx]) // HOUR_MS, np.repeat(np.arange(cut_hour - HORIZON), 2)
    )
    with pytest.raises(ValueError, match="too few"):
        holdout_split(ts[:10], 0.2, HORIZON, HOUR_MS)


@pytest.mark.slow
def test_forecaster_adapter_fits_and_predicts_window_sets(blocks):
    X_train, y_train, X_val, y_val = blocks
    ts = np.arange(len(X_train), dtype=np.int64) * HOUR_MS
    forecaster = LSTMForecaster(replace(LSTMConfig.fast(), max_epochs=2))
    with pytest.raises(RuntimeError, match="fit first"):
        forecaster.predict(Windows(X_val, y_val, ts[: len(X_val)], FEATURES))
    forecaster.fit(Windows(X_train, y_train, ts, FEATURES))
    assert (
        forecaster.trained is not None and forecaster.params()["epochs_run"] == forecaster.trained.epochs_run
    )
    val = Windows(X_val, y_val, ts[: len(X_val)] + len(X_train) * HOUR_MS, FEATURES)
    forecast = forecaster.predict(val)
    np.testing.assert_allclose(forecast, forecaster.trained.predict(X_val), rtol=1e-5)
    with pytest.raises(ValueError, match="feature columns"):
        forecaster.predict(Windows(X_val, y_val, val.ts, tuple(reversed(FEATURES))))
