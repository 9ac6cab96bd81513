"""Training orchestration on simulated features with the fast LSTM preset."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.features import MODEL_FEATURES, compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.model.baseline_serving import SERVABLE_BASELINES, ServableBaseline
from crypto_platform.lib.model.baselines import BASELINES
from crypto_platform.lib.model.lstm import LSTMConfig, limit_tf_threads
from crypto_platform.lib.model.training import (
    LSTM_NAME,
    InsufficientDataError,
    TrainingSpec,
    build_split,
    fit_baselines,
    forecast_plot_png,
    holdout_features,
    holdout_windows,
    loss_curve_png,
    reference_features,
    train_and_evaluate,
)
from crypto_platform.lib.storage import day_start_ms

SYMBOLS = ("BTC/USDT", "ETH/USDT")
# 30 days of warm-up for the longest feature window, then ~50 days of complete windows per symbol.
START, END = "2024-01-01", "2024-03-21"
SPEC = TrainingSpec(lstm=LSTMConfig.fast())


def _features(start: str = START, end: str = END) -> pl.DataFrame:
    bars = pl.concat(
        simulate_ohlcv(s, "1h", day_start_ms(start), day_start_ms(end), seed=7).with_columns(
            pl.lit(s).alias("symbol")
        )
        for s in SYMBOLS
    )
    return compute_features(bars)


@pytest.fixture(scope="module")
def features() -> pl.DataFrame:
    return _features()


@pytest.fixture(scope="module")
def result(features):
    limit_tf_threads()
    return train_and_evaluate(features, SPEC)


def test_evaluation_table_has_every_baseline_and_the_lstm(result):
    assert result.skipped_baselines == {}
    names = {row.name for row in result.evaluation.rows}
    assert names == set(BASELINES) | {LSTM_NAME}
    assert result.evaluation.best_baseline in BASELINES
    assert result.evaluation.row(LSTM_NAME).kind == "model"
    n = len(result.holdout)
    assert n >= SPEC.min_block_windows
    for name, forecast in result.forecasts.items():
        assert forecast.shape == (n,), name
        assert np.all(np.isfinite(forecast)) and np.all(forecast > 0), name
        assert np.isfinite(result.evaluation.row(name).qlike), name
    # both symbols are pooled into every block
    for block in (result.split.train, result.split.validation, result.holdout):
        assert set(block.symbol) == set(SYMBOLS)
    frame = result.holdout_frame()
    assert frame.height == n and {f"forecast_{k}" for k in result.forecasts} <= set(frame.columns)
    metrics = result.metrics()
    assert metrics[f"holdout_qlike_{LSTM_NAME}"] == pytest.approx(result.evaluation.row(LSTM_NAME).qlike)


def test_split_boundaries_respect_the_purge(result):
    split = result.split
    bar_ms = SPEC.bar_ms
    assert split.purge_bars >= SPEC.horizon and split.purge_bars * bar_ms >= 24 * HOUR_MS
    c1, c2 = split.boundaries
    train, val, hold = split.train, split.validation, split.holdout
    # every target of an earlier block ends (and the purge elapses) before the next block's first decision
    assert train.ts.max() + split.purge_bars * bar_ms < c1 <= val.ts.min()
    assert val.ts.max() + split.purge_bars * bar_ms < c2 <= hold.ts.min()
    assert train.target_end_ts.max() < c1 and val.target_end_ts.max() < c2
    # the holdout is the most recent block, and every sample lands in at most one block
    assert hold.ts.min() > val.ts.max() > train.ts.max()
    keys = [set(zip(b.symbol, b.ts, strict=True)) for b in (train, val, hold)]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2]) and not (keys[0] & keys[2])


def test_the_future_cannot_change_what_was_fitted(features, result):
    """Scrambling every bar at or after the holdout start leaves the training inputs, targets and fitted
    baselines unchanged: nothing fitted reads the holdout."""
    c2 = result.split.boundaries[1]
    rng = np.random.default_rng(0)
    future = pl.col("ts") >= c2
    noisy = features.with_columns(
        pl.when(future)
        .then(pl.col(c) * pl.Series(rng.uniform(0.2, 5.0, features.height)))
        .otherwise(pl.col(c))
        .alias(c)
        for c in MODEL_FEATURES
    )
    split = build_split(noisy, SPEC)
    assert split.boundaries[0] == result.split.boundaries[0]
    np.testing.assert_array_equal(split.train.X, result.split.train.X)
    np.testing.assert_array_equal(split.train.y, result.split.train.y)
    np.testing.assert_array_equal(split.validation.y, result.split.validation.y)
    assert not np.allclose(split.holdout.y, result.holdout.y)  # the scrambling did reach the holdout
    refit, _ = fit_baselines(split.train, SPEC.baselines)
    for name, baseline in result.baselines.items():
        assert refit[name].params() == baseline.params(), name


def test_servable_baselines_reproduce_the_evaluated_forecasts(result, tmp_path):
    for name in SERVABLE_BASELINES:
        packaged = ServableBaseline.from_fitted(result.baselines[name], result.holdout)
        loaded = ServableBaseline.load(packaged.save(tmp_path / name))
        np.testing.assert_allclose(loaded.predict(result.holdout.X), result.forecasts[name], rtol=1e-12)
    assert result.best_baseline(servable_only=True) in SERVABLE_BASELINES
    with pytest.raises(ValueError, match="cannot be served"):
        ServableBaseline.from_fitted(result.baselines["garch"], result.holdout)


def test_holdout_rows_rebuild_the_same_holdout_windows(features, result):
    c2 = result.split.boundaries[1]
    rows = holdout_features(features, SPEC, c2)
    rebuilt = holdout_windows(rows, SPEC.feature_columns, c2)
    order = np.lexsort((result.holdout.ts, result.holdout.symbol.astype(str)))
    np.testing.assert_array_equal(rebuilt.ts, result.holdout.ts[order])
    np.testing.assert_array_equal(rebuilt.X, result.holdout.X[order])
    np.testing.assert_array_equal(rebuilt.y, result.holdout.y[order])
    reference = reference_features(features, c2, SPEC.feature_columns)
    assert reference["ts"].max() < c2 and set(MODEL_FEATURES) <= set(reference.columns)


def test_figures_are_png(result):
    trained = result.lstm.trained
    for png in (forecast_plot_png(result), loss_curve_png(trained.history, trained.best_epoch)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_too_little_history_is_a_clear_error():
    short = _features("2024-01-01", "2024-02-05")  # the warm-up leaves a handful of complete windows
    with pytest.raises(InsufficientDataError, match="materialize more history"):
        build_split(short, SPEC)
