"""Model selection on simulated features with the fast preset: HAR+ tuning on the block before the first
test fold, every candidate walked forward, the gate's winner refitted on every window."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from crypto_platform.defs.ml.config import TrainingConfig
from crypto_platform.lib.features import MODEL_FEATURES, compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.model.baselines import BASELINES
from crypto_platform.lib.model.frame_serving import FrameForecaster
from crypto_platform.lib.model.har_plus import HARPlusBaseline
from crypto_platform.lib.model.lstm import limit_tf_threads
from crypto_platform.lib.model.residual import ResidualConfig
from crypto_platform.lib.model.selection import SelectionSpec, fit_on_all, select_and_fit
from crypto_platform.lib.model.training import InsufficientDataError, reference_features
from crypto_platform.lib.model.tuning import tune_har_plus, tuning_block
from crypto_platform.lib.model.walk_forward import candidate_windows, default_candidates
from crypto_platform.lib.model.walk_forward_evidence import evidence_frame, result_from_evidence
from crypto_platform.lib.model.windows import walk_forward_folds
from crypto_platform.lib.storage import day_start_ms

SYMBOLS = ("BTC/USDT", "ETH/USDT")
# 30 days of warm-up for the longest feature window, then ~50 days of complete windows per symbol.
START, END = "2024-01-01", "2024-03-21"
SPEC = SelectionSpec.fast()


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
def trials() -> list:
    return []


@pytest.fixture(scope="module")
def selection(features, trials):
    limit_tf_threads()
    return select_and_fit(features, SPEC, on_trial=trials.append)


def test_every_candidate_is_walked_forward_on_the_same_folds(selection):
    result = selection.walk_forward
    assert len(result.folds) == SPEC.n_folds and result.reference == "har"
    evaluated = set(result.names)
    assert {"naive", "ewma", "har", "har_plus", "har_plus_residual"} <= evaluated
    # a candidate skipped on some fold (GARCH needs 500 returns a symbol) is out of the pooled series
    skipped = {n for f in result.folds for n in f.skipped}
    assert evaluated == (set(BASELINES) | {"har_plus", "har_plus_residual", "combination"}) - skipped
    for fold in result.folds:
        assert set(fold.forecasts) >= evaluated and fold.test_windows >= 50
    assert result.y.size == sum(f.test_windows for f in result.folds)


def test_the_tuning_trials_are_reported_and_the_best_configuration_is_walked_forward(selection, trials):
    assert [t.number for t in trials] == list(range(SPEC.n_trials))
    assert selection.tuning.trials == tuple(trials)
    assert selection.tuning.best.pooled_qlike == min(t.pooled_qlike for t in trials)
    assert selection.har_plus_config == selection.tuning.best_config
    # the walked-forward HAR+ is the tuned one, on every fold
    for fold in selection.walk_forward.folds:
        assert fold.params["har_plus"]["config"] == selection.har_plus_config.to_dict()
    assert selection.configuration()["har_plus"] == selection.har_plus_config.to_dict()


def test_tuning_reads_only_the_windows_before_the_first_test_block(features, selection):
    """Scrambling every bar from the first test block on leaves the tuning study's scores unchanged."""
    windows = selection.windows
    first_test = walk_forward_folds(
        windows.ts, SPEC.n_folds, SPEC.min_train_frac, purge_bars=windows.horizon, bar_ms=windows.bar_ms
    )[0].test_start_ts
    rng = np.random.default_rng(0)
    future = pl.col("ts") >= first_test
    columns = [*MODEL_FEATURES, "open", "high", "low", "close", "volume"]
    noisy = features.with_columns(
        pl.when(future)
        .then(pl.col(c) * pl.Series(rng.uniform(0.5, 2.0, features.height)))
        .otherwise(pl.col(c))
        for c in columns
    )
    scrambled, _ = candidate_windows(noisy)
    assert not np.allclose(scrambled.y, windows.y)  # the scrambling did reach the later windows
    block = tuning_block(scrambled, SPEC.n_folds, SPEC.min_train_frac)
    again = tune_har_plus(block, n_trials=SPEC.n_trials, n_folds=SPEC.tuning_folds, seed=SPEC.tuning_seed)
    assert [t.pooled_qlike for t in again.trials] == [t.pooled_qlike for t in selection.tuning.trials]


def test_the_gate_winner_is_refitted_on_every_window(selection):
    decision = selection.decision
    assert decision == selection.walk_forward.decide(margin=SPEC.margin)
    assert decision.champion in selection.walk_forward.names
    candidates = default_candidates(residual_config=SPEC.residual, har_plus_config=selection.har_plus_config)
    refit = fit_on_all(candidates, decision.champion, selection.windows)
    np.testing.assert_allclose(refit.predict(selection.windows), selection.model.predict(selection.windows))
    forecasts = selection.model.predict(selection.windows)
    assert forecasts.shape == (len(selection.windows),) and np.all(np.isfinite(forecasts) & (forecasts > 0))


def test_har_plus_refit_on_all_windows_packages_behind_the_frame_contract(selection):
    candidates = default_candidates(residual_config=SPEC.residual, har_plus_config=selection.har_plus_config)
    har_plus = fit_on_all(candidates, "har_plus", selection.windows)
    assert isinstance(har_plus, HARPlusBaseline) and har_plus.config == selection.har_plus_config
    packaged = FrameForecaster.from_fitted("har_plus", har_plus, selection.windows.feature_columns)
    out = packaged.predict_frame(selection.feature_frame).dropna(subset=["predicted_volatility"])
    keys = pl.DataFrame({"symbol": selection.windows.symbol.astype(str), "ts": selection.windows.ts})
    joined = keys.with_columns(pl.Series("expected", har_plus.predict(selection.windows))).join(
        pl.from_pandas(out), on=["symbol", "ts"], how="inner"
    )
    assert joined.height == len(selection.windows)
    np.testing.assert_allclose(joined["predicted_volatility"], joined["expected"], rtol=1e-9)
    with pytest.raises(ValueError, match="not servable under the frame contract"):
        FrameForecaster.from_fitted("ewma", object(), selection.windows.feature_columns)


def test_the_stored_evidence_reproduces_the_gate(selection):
    result = selection.walk_forward
    rebuilt = result_from_evidence(evidence_frame(result), result.summary())
    assert rebuilt.names == result.names
    for name in result.names:
        assert rebuilt.table.row(name).qlike == pytest.approx(result.table.row(name).qlike, rel=1e-12)
        assert rebuilt.fold_qlike(name) == pytest.approx(result.fold_qlike(name), rel=1e-12)
    assert rebuilt.decide(margin=SPEC.margin).to_dict() == selection.decision.to_dict()
    best = result.table.best_baseline
    assert rebuilt.decide_against_all(["har", best])[0] == result.decide_against_all(["har", best])[0]


def test_the_drift_reference_keeps_the_model_features(features):
    reference = reference_features(features, int(features["ts"].max()) + 1, MODEL_FEATURES)
    assert reference.height == features.height and set(MODEL_FEATURES) <= set(reference.columns)


def test_too_little_history_is_a_clear_error():
    short = _features("2024-01-01", "2024-02-05")  # the warm-up leaves a handful of complete windows
    with pytest.raises(InsufficientDataError, match="materialize more history"):
        select_and_fit(short, SPEC)


def test_candidates_narrow_what_is_walked_forward_and_what_the_gate_may_choose(features):
    spec = dataclasses.replace(SPEC, candidates=("har_plus_residual",))
    chosen = select_and_fit(features, spec)
    # the named challenger, the HAR+ it builds on, and plain HAR, the reference; nothing else
    assert set(chosen.walk_forward.names) == {"har", "har_plus", "har_plus_residual"}
    assert [v.name for v in chosen.decision.verdicts] == ["har_plus_residual"]
    assert chosen.champion in ("har", "har_plus_residual")
    assert chosen.configuration()["candidates"] == ["har_plus_residual"]
    assert spec.to_params()["selection_candidates"] == "har_plus_residual"


def test_unknown_candidates_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"candidates: \['lstm'\] are not candidates"):
        SelectionSpec(candidates=("lstm",))
    with pytest.raises(ValueError, match="candidates"):
        TrainingConfig(candidates=["har", "garch2"]).selection_spec()
    config = TrainingConfig(fast=True, candidates=["combination"], walk_forward_budget_s=60)
    narrowed = config.selection_spec()
    assert narrowed.candidates == ("combination",) and narrowed.walk_forward_budget_s == 60
    assert narrowed.residual == SelectionSpec.fast().residual
    assert SelectionSpec.default().residual == ResidualConfig.pipeline()
