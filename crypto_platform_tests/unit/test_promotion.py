import numpy as np
import pytest

from crypto_platform.lib.model.promotion import decide_promotion, sanity_probes


@pytest.fixture
def recent_vol() -> np.ndarray:
    return np.linspace(0.005, 0.05, 200)


def test_constant_challenger_fails_probes_and_is_not_promoted(recent_vol):
    probes = sanity_probes(np.full_like(recent_vol, 0.02), recent_vol)
    assert probes.finite and probes.positive
    assert not probes.rises_with_recent_vol
    decision = decide_promotion(challenger_qlike=0.01, champion_qlike=0.5, probes=probes)
    assert not decision.promote
    assert "do not rise" in decision.reason


def test_better_challenger_is_promoted_and_worse_is_not(recent_vol):
    probes = sanity_probes(recent_vol * 1.1, recent_vol)
    assert probes.passed
    better = decide_promotion(challenger_qlike=0.18, champion_qlike=0.20, probes=probes, margin=0.05)
    assert better.promote
    assert better.relative_improvement == pytest.approx(0.1)
    within_margin = decide_promotion(challenger_qlike=0.195, champion_qlike=0.20, probes=probes, margin=0.05)
    assert not within_margin.promote
    worse = decide_promotion(challenger_qlike=0.25, champion_qlike=0.20, probes=probes)
    assert not worse.promote


def test_first_champion_needs_only_probes(recent_vol):
    decision = decide_promotion(0.3, None, sanity_probes(recent_vol, recent_vol))
    assert decision.promote
    assert decision.to_tags()["promotion.decision"] == "promoted"


@pytest.mark.parametrize(
    ("forecasts", "failure"),
    [
        (np.r_[np.full(199, 0.02), np.nan], "non-finite"),
        (np.linspace(-0.01, 0.04, 200), "non-positive"),
        (np.linspace(0.05, 0.005, 200), "do not rise"),
    ],
)
def test_probe_failures_are_named(recent_vol, forecasts, failure):
    probes = sanity_probes(forecasts, recent_vol)
    decision = decide_promotion(0.01, None, probes)
    assert not decision.promote
    assert failure in decision.reason


def test_probes_reject_bad_shapes():
    with pytest.raises(ValueError):
        sanity_probes(np.ones(5), np.ones(5))
    with pytest.raises(ValueError):
        sanity_probes(np.ones(20), np.ones(21))


def test_non_finite_qlike_and_negative_margin():
    probes = sanity_probes(np.linspace(0.01, 0.02, 20), np.linspace(0.01, 0.02, 20))
    assert not decide_promotion(float("nan"), 0.2, probes).promote
    with pytest.raises(ValueError):
        decide_promotion(0.1, 0.2, probes, margin=-0.1)


def test_a_baseline_champion_is_never_judged_against_itself():
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    from crypto_platform.lib.model.promotion import is_own_family

    ewma = ModelVersion("m", "1", 0, tags=[ModelVersionTag("model_family", "baseline:ewma")])
    lstm = ModelVersion("m", "2", 0, tags=[ModelVersionTag("model_family", "lstm")])
    assert is_own_family(ewma, "ewma")
    assert not is_own_family(ewma, "har") and not is_own_family(lstm, "ewma")
