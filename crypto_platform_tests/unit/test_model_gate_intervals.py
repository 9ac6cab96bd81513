"""The promotion gate rule, predictive intervals / VaR / ES, and the convex log combination."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crypto_platform.lib.model.combination import combine, fit_combination
from crypto_platform.lib.model.gate import CandidateEvidence, choose_champion, min_fold_wins
from crypto_platform.lib.model.intervals import (
    LogResidualDispersion,
    expected_shortfall,
    fit_dispersion,
    interval_coverage,
    log_residuals,
    value_at_risk,
    var_breach_rate,
    volatility_interval,
)

HAR = CandidateEvidence("har", 0.30, 0.0, 1.0, (0.30, 0.30, 0.30, 0.30))


def test_gate_promotes_the_best_passing_challenger():
    strong = CandidateEvidence("har_plus", 0.27, -4.0, 1e-4, (0.26, 0.27, 0.29, 0.31))  # wins 3 of 4
    better_but_noisy = CandidateEvidence("lucky", 0.26, -1.5, 0.13, (0.20, 0.25, 0.29, 0.31))
    few_folds = CandidateEvidence("one_regime", 0.25, -3.0, 0.001, (0.10, 0.31, 0.31, 0.31))
    decision = choose_champion(HAR, [HAR, strong, better_but_noisy, few_folds])
    assert decision.champion == "har_plus"
    verdicts = {v.name: v for v in decision.verdicts}
    assert verdicts["har_plus"].passed and verdicts["har_plus"].folds_won == 3
    assert verdicts["har_plus"].improvement == pytest.approx(0.1)
    assert any("DM" in r for r in verdicts["lucky"].reasons)
    assert any("folds" in r for r in verdicts["one_regime"].reasons)
    assert decision.to_dict()["champion"] == "har_plus"


def test_gate_keeps_the_reference_when_nothing_passes_the_margin():
    tiny = CandidateEvidence("tiny", 0.299, -5.0, 1e-6, (0.29, 0.29, 0.29, 0.29))
    assert choose_champion(HAR, [tiny]).champion == "har"
    assert choose_champion(HAR, [tiny], margin=0.001).champion == "tiny"
    with pytest.raises(ValueError, match="same folds"):
        choose_champion(HAR, [CandidateEvidence("x", 0.2, -3, 0.01, (0.2,))])
    assert [min_fold_wins(n) for n in (1, 4, 5)] == [1, 3, 4]


def test_intervals_cover_lognormal_residuals_at_nominal_rates():
    rng = np.random.default_rng(0)
    forecast = np.exp(rng.normal(-3, 0.5, 40_000))
    realized = forecast * np.exp(0.5 * rng.normal(0, 0.8, forecast.size))  # ln RV² − ln ĥ ~ N(0, 0.8²)
    val, test = slice(0, 20_000), slice(20_000, None)
    disp = fit_dispersion(log_residuals(realized[val], forecast[val]))
    assert disp.sd == pytest.approx(0.8, rel=0.03)
    cover = interval_coverage(realized[test], forecast[test], disp)
    assert cover[0.8] == pytest.approx(0.8, abs=0.01) and cover[0.95] == pytest.approx(0.95, abs=0.01)
    lo, hi = volatility_interval(forecast[:3], disp, 0.95)
    assert np.all(lo < forecast[:3]) and np.all(forecast[:3] < hi)
    assert LogResidualDispersion.from_dict(disp.to_dict()) == disp
    with pytest.raises(ValueError, match="not fitted"):
        volatility_interval(forecast, disp, 0.5)


def test_var_and_es_under_the_normal_assumption():
    sigma = np.array([0.02, 0.05])
    var = value_at_risk(sigma, 0.99)
    np.testing.assert_allclose(var, 1 - np.exp(-2.3263478740408408 * sigma), rtol=1e-12)
    es = expected_shortfall(sigma, 0.99)
    assert np.all(es > var)
    rng = np.random.default_rng(1)
    r = rng.normal(0, 0.05, 400_000)
    loss = 1 - np.exp(r)
    tail = loss[loss > value_at_risk(np.array(0.05), 0.99)]
    assert es[1] == pytest.approx(tail.mean(), rel=0.01)
    assert var_breach_rate(r, np.full(r.size, 0.05), 0.99) == pytest.approx(0.01, abs=0.001)


def test_combination_weights_are_convex_and_find_the_informative_forecast():
    rng = np.random.default_rng(2)
    truth = np.exp(rng.normal(-3, 0.6, 5000))
    good = truth * np.exp(rng.normal(0, 0.2, truth.size))
    noise = np.exp(rng.normal(-3, 0.6, truth.size))
    realized = truth * np.exp(0.5 * rng.normal(0, 0.7, truth.size))
    weights = fit_combination(realized, {"good": good, "noise": noise})
    assert sum(weights.weights.values()) == pytest.approx(1.0)
    assert all(w >= 0 for w in weights.weights.values())
    assert weights.weights["good"] > 0.8
    mixed = combine(weights, {"good": good, "noise": noise})
    assert np.all(mixed > 0) and math.isfinite(weights.log_scale)
    with pytest.raises(KeyError, match="needs forecasts"):
        combine(weights, {"good": good})
