"""The promotion rules on walk-forward evidence: probes, the gate against the incumbent and the best
baseline on the same folds, first champion, refresh of the same candidate, an unevaluated incumbent."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from crypto_platform.lib.model.promotion import (
    baselines_not_beaten,
    judge_challenger,
    sanity_probes,
    version_candidate,
)
from crypto_platform.lib.model.walk_forward_evidence import (
    evidence_frame,
    recent_realized_vol,
    result_from_evidence,
)

HOUR_MS = 3_600_000
N_FOLDS, HOURS_PER_FOLD = 4, 300


def _evidence(noise: dict[str, float], seed: int = 0) -> tuple[pl.DataFrame, dict]:
    """Two symbols over 4 folds of 300 hours: forecast = realized · exp(N(0, sd)), one sd per candidate
    (a smaller sd is a better forecaster; the same noise draws scaled, so ranks hold in every fold)."""
    rng = np.random.default_rng(seed)
    hours = N_FOLDS * HOURS_PER_FOLD
    ts = np.repeat(np.arange(hours, dtype=np.int64) * HOUR_MS, 2)
    symbol = np.tile(["BTC/USDT", "ETH/USDT"], hours)
    fold = np.repeat(np.arange(hours) // HOURS_PER_FOLD, 2)
    recent = np.exp(rng.normal(np.log(0.02), 0.4, ts.size))
    realized = recent * np.exp(rng.normal(0, 0.3, ts.size))
    shock = rng.normal(0, 1, ts.size)
    frame = pl.DataFrame(
        {
            "fold": fold.astype(np.int32),
            "ts": ts,
            "symbol": symbol,
            "realized_vol": realized,
            "recent_realized_vol": recent,
            **{f"forecast_{n}": realized * np.exp(sd * shock - sd**2) for n, sd in noise.items()},
        }
    )
    summary = {
        "reference": "har",
        "fingerprint": "test",
        "n_windows": ts.size,
        "folds": [
            {
                "fold": k,
                "train_windows": 1000 + k,
                "test_windows": 2 * HOURS_PER_FOLD,
                "test_start_ts": k * HOURS_PER_FOLD * HOUR_MS,
                "test_end_ts": (k + 1) * HOURS_PER_FOLD * HOUR_MS,
                "skipped": {},
            }
            for k in range(N_FOLDS)
        ],
    }
    return frame, summary


NOISE = {"naive": 0.9, "ewma": 0.55, "har": 0.6, "har_plus": 0.35, "slight": 0.348, "oracle": 0.05}


@pytest.fixture(scope="module")
def evidence():
    frame, summary = _evidence(NOISE)
    return result_from_evidence(frame, summary), recent_realized_vol(frame)


def _probes(result, name, recent):
    return sanity_probes(result.forecasts[name], recent)


def test_the_evidence_round_trips_to_the_same_scores(evidence):
    result, recent = evidence
    frame, summary = _evidence(NOISE)
    again = result_from_evidence(evidence_frame(result, recent), summary)
    assert again.names == result.names == tuple(NOISE)
    for name in result.names:
        assert again.table.row(name).qlike == result.table.row(name).qlike
        assert again.fold_qlike(name) == result.fold_qlike(name)
    assert again.decide().champion == result.decide().champion == "oracle"
    with pytest.raises(ValueError, match="reference"):
        result_from_evidence(frame.drop("forecast_har"), summary)


def test_a_challenger_beating_the_incumbent_and_the_best_baseline_on_the_folds_is_promoted(evidence):
    result, recent = evidence
    decision = judge_challenger(result, "har_plus", "har", _probes(result, "har_plus", recent), margin=0.02)
    assert decision.promote, decision.reason
    # it had to pass against the incumbent and the best baseline (ewma), on every fold
    assert decision.references == ("har", "ewma")
    assert all(v["passed"] and v["folds_won"] == N_FOLDS for v in decision.verdicts.values())
    assert decision.relative_improvement == pytest.approx(
        (result.table.row("har").qlike - result.table.row("har_plus").qlike) / result.table.row("har").qlike
    )
    assert decision.to_tags()["promotion.gate.ewma"] == "passed"


def test_a_challenger_within_the_margin_of_the_incumbent_is_refused(evidence):
    result, recent = evidence
    gain = result.improvement("slight", "har_plus")
    assert 0 < gain < 0.02  # better than the incumbent on the folds, but by less than the margin
    decision = judge_challenger(result, "slight", "har_plus", _probes(result, "slight", recent), margin=0.02)
    assert not decision.promote
    assert "vs har_plus" in decision.reason and "below the 2.0% margin" in decision.reason
    assert decision.verdicts["har_plus"]["passed"] is False
    assert decision.verdicts["ewma"]["passed"] is True  # it does beat the best baseline
    assert decision.to_tags()["promotion.decision"] == "rejected"


def test_beating_the_incumbent_is_not_enough_without_beating_the_best_baseline():
    frame, summary = _evidence({"naive": 0.9, "ewma": 0.3, "har": 0.6, "har_plus": 0.45})
    result = result_from_evidence(frame, summary)
    probes = sanity_probes(result.forecasts["har_plus"], recent_realized_vol(frame))
    decision = judge_challenger(result, "har_plus", "har", probes, margin=0.02)
    assert decision.verdicts["har"]["passed"] and not decision.verdicts["ewma"]["passed"]
    assert not decision.promote and "vs ewma" in decision.reason


def test_first_champion_same_candidate_and_an_unevaluated_incumbent(evidence):
    result, recent = evidence
    probes = _probes(result, "har_plus", recent)
    first = judge_challenger(result, "har_plus", None, probes, margin=0.02)
    assert first.promote and first.reason.startswith("first champion: har_plus")
    refresh = judge_challenger(result, "har_plus", "har_plus", probes, margin=0.02)
    assert refresh.promote and "own candidate" in refresh.reason and refresh.references == ()
    legacy = judge_challenger(result, "har_plus", "lstm", probes, margin=0.02)
    assert legacy.promote and legacy.references == ("ewma",) and "not evaluated" in legacy.reason
    assert legacy.champion_qlike is None
    with pytest.raises(ValueError, match="not in its run"):
        judge_challenger(result, "lstm", "har", probes, margin=0.02)
    with pytest.raises(ValueError, match="margin"):
        judge_challenger(result, "har_plus", "har", probes, margin=-0.1)


def test_a_constant_challenger_fails_the_probes_whatever_its_loss(evidence):
    result, recent = evidence
    probes = sanity_probes(np.full_like(recent, 0.02), recent)
    assert probes.finite and probes.positive and not probes.rises_with_recent_vol
    decision = judge_challenger(result, "oracle", "har", probes, margin=0.02)
    assert not decision.promote and "do not rise" in decision.reason


@pytest.mark.parametrize(
    ("forecasts", "failure"),
    [
        (np.r_[np.full(199, 0.02), np.nan], "non-finite"),
        (np.linspace(-0.01, 0.04, 200), "non-positive"),
        (np.linspace(0.05, 0.005, 200), "do not rise"),
    ],
)
def test_probe_failures_are_named(forecasts, failure):
    probes = sanity_probes(forecasts, np.linspace(0.005, 0.05, 200))
    assert not probes.passed and any(failure in f for f in probes.failures())


def test_probes_reject_bad_shapes():
    with pytest.raises(ValueError):
        sanity_probes(np.ones(5), np.ones(5))
    with pytest.raises(ValueError):
        sanity_probes(np.ones(20), np.ones(21))


def test_a_champion_is_never_judged_against_itself(evidence):
    result, _ = evidence
    assert baselines_not_beaten(result, "har") == ["ewma"]  # har loses to ewma, never to itself
    assert baselines_not_beaten(result, "ewma") == []
    assert baselines_not_beaten(result, "har_plus") == []
    assert set(baselines_not_beaten(result, "lstm")) == {"naive", "ewma", "har"}  # not evaluated


def test_a_versions_candidate_comes_from_its_tags():
    def version(**tags: str) -> ModelVersion:
        return ModelVersion("m", "1", 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])

    assert version_candidate(version(candidate="har_plus", model_family="har_plus")) == "har_plus"
    assert version_candidate(version(model_family="baseline:ewma")) == "ewma"
    assert version_candidate(version(model_family="lstm")) == "lstm"
