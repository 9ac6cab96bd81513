"""lib.model.walk_forward: purged folds, pooled series, gate evidence, skipped candidates, intervals."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest

from crypto_platform.lib.model.evaluation import evaluate_forecasts
from crypto_platform.lib.model.metrics import qlike
from crypto_platform.lib.model.model_card import model_card_markdown
from crypto_platform.lib.model.walk_forward import (
    Candidate,
    baseline_candidate,
    combination_candidate,
    default_candidates,
    har_plus_candidate,
    walk_forward,
    windows_fingerprint,
)
from crypto_platform.lib.model.windows import WindowSet
from crypto_platform_tests.unit.test_har_plus import har_plus_windows, random_bars


@pytest.fixture(scope="module")
def windows() -> WindowSet:
    return har_plus_windows(random_bars(7, 3400))


class _Oracle:
    """Reads the target it should forecast: a candidate that must win the gate."""

    name = "oracle"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def predict(self, w: WindowSet) -> np.ndarray:
        return np.maximum(w.y, 1e-6) * np.exp(0.05 * self.rng.standard_normal(len(w)))


class _Spy:
    """Records the training block each fold handed it, forecasts like naive."""

    name = "spy"
    seen: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, train: WindowSet) -> None:
        _Spy.seen.append((int(train.target_end_ts.max()), len(train)))

    def predict(self, w: WindowSet) -> np.ndarray:
        return w.last("realized_vol_24") + 1e-6


def _cheap() -> list[Candidate]:
    return [
        *(baseline_candidate(b) for b in ("naive", "ewma", "har")),
        har_plus_candidate(),
        combination_candidate(("har_plus", "har", "ewma")),
    ]


@pytest.fixture(scope="module")
def result(windows):
    _Spy.seen.clear()
    candidates = [
        *_cheap(),
        Candidate("oracle", lambda train, ctx: _Oracle(ctx.fold)),
        Candidate("spy", lambda train, ctx: _Spy(train)),
    ]
    return walk_forward(windows, candidates, n_folds=3, min_train_frac=0.5)


def test_training_blocks_end_before_each_test_block_and_the_tests_tile_the_tail(windows, result):
    assert len(result.folds) == 3 and len(_Spy.seen) == 3
    for fold, (target_end, n_train) in zip(result.folds, _Spy.seen, strict=True):
        assert target_end < fold.test_start_ts  # purged: no training target reads a test bar
        assert n_train == fold.train_windows
    assert [f.test_end_ts for f in result.folds[:-1]] == [f.test_start_ts for f in result.folds[1:]]
    assert result.y.size == sum(f.test_windows for f in result.folds)
    assert np.all(np.diff(result.fold_of_row) >= 0)
    tail = np.sort(windows.ts[windows.ts >= result.folds[0].test_start_ts])
    np.testing.assert_array_equal(np.sort(result.ts), tail)


def test_pooled_scores_are_those_of_the_concatenated_fold_forecasts(result):
    for name in result.names:
        joined = np.concatenate([f.forecasts[name] for f in result.folds])
        np.testing.assert_array_equal(result.forecasts[name], joined)
        assert result.table.row(name).qlike == pytest.approx(qlike(result.y**2, joined**2), rel=1e-12)
    fold = result.folds[1]
    direct = evaluate_forecasts(result.y[result.fold_of_row == 1], fold.forecasts)
    assert fold.qlike("har_plus") == pytest.approx(direct.row("har_plus").qlike, rel=1e-12)
    assert result.fold_qlike("har") == tuple(f.qlike("har") for f in result.folds)


def test_the_gate_promotes_the_oracle_and_nothing_that_ties_the_reference(result):
    decision = result.decide()
    assert decision.champion == "oracle" and decision.reference == "har"
    verdicts = {v.name: v for v in decision.verdicts}
    assert verdicts["oracle"].passed and verdicts["oracle"].folds_won == 3
    assert not verdicts["naive"].passed
    ev = result.evidence("oracle")
    assert ev.dm_stat < 0 and ev.dm_pvalue < 0.05 and ev.fold_qlike == result.fold_qlike("oracle")
    # Without the oracle, every challenger is judged against HAR on the same evidence.
    honest = result.decide(candidates=[n for n in result.names if n not in ("oracle", "spy")])
    assert "oracle" not in {v.name for v in honest.verdicts}
    # Against another reference, the DM statistics are recomputed against it.
    vs_plus = result.evidence("har", against="har_plus")
    assert vs_plus.dm_stat == pytest.approx(-result.evidence("har_plus").dm_stat, rel=1e-9)
    with pytest.raises(KeyError):
        result.decide(candidates=["no_such"])


def test_a_candidate_that_fails_on_one_fold_is_reported_and_left_out_of_the_pool(windows):
    def flaky(train: WindowSet, ctx):
        if ctx.fold == 1:
            raise ValueError("did not converge")
        return _Spy(train)

    res = walk_forward(windows, [*_cheap(), Candidate("flaky", flaky)], n_folds=3)
    assert res.folds[1].skipped == {"flaky": "did not converge"}
    assert "flaky" in res.folds[0].forecasts and "flaky" not in res.names
    assert "flaky" not in res.forecasts and res.decide().champion in res.names

    def broken(train, ctx):
        raise RuntimeError("no")

    with pytest.raises(ValueError, match="reference 'har' could not be fitted"):
        walk_forward(windows, [Candidate("har", broken)], n_folds=2)


def test_a_candidate_that_cannot_finish_in_the_time_budget_is_skipped_with_the_reason(windows):
    """A fake clock: the slow candidate's fit costs 100 "seconds", everything else nothing."""
    now = [0.0]

    def slow(train: WindowSet, ctx):
        now[0] += 100.0
        return _Spy(train)

    candidates = [*_cheap(), Candidate("slow", slow)]
    res = walk_forward(windows, candidates, n_folds=3, time_budget_s=150.0, clock=lambda: now[0])
    # fold 0 always runs; before fold 1, 100 s are spent and its next fit is projected past 150 s
    assert "slow" in res.folds[0].forecasts and res.folds[0].seconds["slow"] == 100.0
    for fold in res.folds[1:]:
        assert "slow" not in fold.forecasts
        assert fold.skipped["slow"].startswith("time budget: 100 s of the walk-forward's 150 s")
        assert "skipped from fold 1 on" in fold.skipped["slow"]
    assert "slow" not in res.names and res.decide().champion in res.names
    assert set(res.names) == {c.name for c in _cheap()}  # the cheap ones fit in the budget
    card = model_card_markdown(res, res.decide())
    assert "slow: time budget: 100 s of the walk-forward's 150 s" in card  # never a silent absence
    # a budget that leaves room for every fold fits it on every fold
    now[0] = 0.0
    roomy = walk_forward(windows, candidates, n_folds=3, time_budget_s=1000.0, clock=lambda: now[0])
    assert "slow" in roomy.names and not any(f.skipped for f in roomy.folds)


def test_candidate_list_errors(windows):
    with pytest.raises(ValueError, match="reference"):
        walk_forward(windows, [baseline_candidate("naive")], n_folds=2)
    with pytest.raises(ValueError, match="unique"):
        walk_forward(windows, [baseline_candidate("har"), baseline_candidate("har")], n_folds=2)
    late = Candidate("needs_plus", lambda t, c: None, requires=("har_plus",))
    with pytest.raises(ValueError, match="must come before"):
        walk_forward(windows, [baseline_candidate("har"), late, har_plus_candidate()], n_folds=2)
    with pytest.raises(KeyError):
        baseline_candidate("no_such")
    with pytest.raises(ValueError, match="forward_log_return"):
        walk_forward(windows, _cheap(), n_folds=2, forward_log_return=np.zeros(3))


def test_interval_report_covers_models_with_validation_residuals(windows, result):
    report = result.interval_report()
    assert set(report) == {"har_plus", "combination"}  # baselines carry no validation residuals
    for entry in report.values():
        assert 0.6 < entry["coverage_80"] < entry["coverage_95"] <= 1.0
        assert "var99_breach_rate" not in entry  # no forward returns given
    rng = np.random.default_rng(0)
    fwd = rng.standard_normal(len(windows)) * 0.02
    res = walk_forward(windows, _cheap(), n_folds=2, forward_log_return=fwd)
    assert 0.0 <= res.interval_report()["har_plus"]["var99_breach_rate"] <= 1.0


def test_per_symbol_tables_and_summary(result):
    tables = result.per_symbol_tables()
    assert set(tables) == {"BTC/USDT", "ETH/USDT"}
    n = sum(t.row("har").n for t in tables.values())
    assert n == result.y.size
    summary = result.summary()
    assert summary["reference"] == "har" and len(summary["folds"]) == 3
    assert summary["candidates"]["har"]["improvement_vs_reference"] == 0.0


def test_fingerprint_sees_any_change_of_the_data(windows):
    base = windows_fingerprint(windows)
    assert base == windows_fingerprint(windows.take(np.arange(len(windows))))
    y = windows.y.copy()
    y[5] *= 1.0001
    assert windows_fingerprint(dataclasses.replace(windows, y=y)) != base


def test_default_candidates_include_the_residual_and_run_it_on_the_fold_har_plus(windows):
    pytest.importorskip("tensorflow")
    from crypto_platform.lib.model.lstm import limit_tf_threads
    from crypto_platform.lib.model.residual import ResidualConfig

    limit_tf_threads(2, 1)
    cfg = dataclasses.replace(ResidualConfig.fast(), seeds=(11,), max_epochs=1)
    candidates = default_candidates(residual_config=cfg, baselines=("ewma", "har"))
    assert [c.name for c in candidates] == ["ewma", "har", "har_plus", "har_plus_residual", "combination"]
    res = walk_forward(windows, candidates, n_folds=2, keep_models=True)
    assert "har_plus_residual" in res.names
    for fold in res.folds:
        assert fold.models["har_plus_residual"].base is fold.models["har_plus"]
        assert "har_plus_residual" in fold.dispersions
        assert set(fold.params["combination"]["weights"]) == {"har_plus", "har", "ewma"}


def test_candidate_windows_from_the_feature_frame_and_their_forward_returns():
    import math

    from crypto_platform.lib.features import compute_features
    from crypto_platform.lib.market.timeframes import HOUR_MS
    from crypto_platform.lib.model.walk_forward import candidate_windows

    bars = random_bars(19, 1900)  # a 10-bar hole at bar 1500
    features = compute_features(bars)
    windows, fwd = candidate_windows(features)
    assert "cross_log_rv_24" in windows.feature_columns and "log_ret" in windows.feature_columns
    assert fwd.shape == (len(windows),)
    close = {(r["symbol"], r["ts"]): r["close"] for r in bars.iter_rows(named=True)}
    checked = 0
    for k in range(0, len(windows), 97):
        sym, t = windows.symbol[k], int(windows.ts[k])
        later = close.get((sym, t + 24 * HOUR_MS))
        if later is None:
            assert math.isnan(fwd[k])
        else:
            assert fwd[k] == pytest.approx(math.log(later / close[(sym, t)]), rel=1e-12)
            checked += 1
    assert checked > 10
    # The HAR+ columns already present are not recomputed.
    again, _ = candidate_windows(har_plus_windows_frame(bars))
    np.testing.assert_array_equal(again.X, windows.X)


def har_plus_windows_frame(bars):
    from crypto_platform.lib.features import compute_features
    from crypto_platform.lib.model.har_features import har_plus_features

    return har_plus_features(compute_features(bars))


def test_a_challenger_must_pass_against_every_reference(result):
    champion, decisions = result.decide_against_all(["har_plus", "har"])
    assert champion == "oracle" and set(decisions) == {"har_plus", "har"}
    assert all(d.champion == "oracle" for d in decisions.values())
    # Nobody beats the oracle: with it as the incumbent, it stays, and every verdict says why.
    stays, decisions = result.decide_against_all(["oracle", "har"])
    assert stays == "oracle"
    assert not any(v.passed for v in decisions["oracle"].verdicts)
    # A challenger that passes against HAR but not against the incumbent is not promoted.
    beats_har = {v.name for v in result.decide("har").verdicts if v.passed} - {"oracle"}
    for name in beats_har:
        assert name not in {v.name for v in decisions["oracle"].verdicts if v.passed}
    with pytest.raises(ValueError):
        result.decide_against_all([])
