"""Losses, Mincer–Zarnowitz, Newey–West and Diebold–Mariano against hand-computed values, and the
evaluation table built on them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crypto_platform.lib.model.evaluation import evaluate_forecasts
from crypto_platform.lib.model.metrics import (
    DEFAULT_HAC_LAG,
    diebold_mariano,
    mincer_zarnowitz,
    mse_var,
    newey_west_variance,
    qlike,
    qlike_losses,
    rmse_vol,
)


def test_qlike_by_hand():
    realized = np.array([1.0, 2.0, 4.0, 3.0, 0.5])
    forecast = np.array([1.0, 1.0, 2.0, 6.0, 1.0])
    # ratios σ²/h = 1, 2, 2, 0.5, 0.5; loss = ratio − ln(ratio) − 1
    by_hand = [0.0, 1 - math.log(2), 1 - math.log(2), -0.5 + math.log(2), -0.5 + math.log(2)]
    np.testing.assert_allclose(qlike_losses(realized, forecast), by_hand, rtol=1e-12)
    assert qlike(realized, forecast) == pytest.approx((2 * (1 - math.log(2)) + 2 * (math.log(2) - 0.5)) / 5)


def test_qlike_is_minimised_by_the_true_variance():
    realized = np.array([0.5, 1.0, 2.0])
    assert qlike(realized, realized) == 0.0
    for scale in (0.5, 0.9, 1.1, 2.0):
        assert qlike(realized, realized * scale) > 0.0
    # under-prediction costs more than over-prediction by the same factor
    assert qlike(realized, realized / 2) > qlike(realized, realized * 2)


def test_mse_and_rmse_by_hand():
    realized = np.array([1.0, 2.0, 4.0, 3.0, 0.5])
    forecast = np.array([1.0, 1.0, 2.0, 6.0, 1.0])
    assert mse_var(realized, forecast) == pytest.approx((0 + 1 + 4 + 9 + 0.25) / 5)
    assert rmse_vol(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.4, 0.2])) == pytest.approx(
        math.sqrt((0 + 0.04 + 0.01) / 3)
    )


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_forecasts_raise_instead_of_being_clipped(bad):
    realized = np.ones(5)
    forecast = np.array([1.0, 1.0, bad, 1.0, 1.0])
    for fn in (qlike, mse_var, rmse_vol, mincer_zarnowitz):
        with pytest.raises(ValueError, match=r"strictly positive: 1 of 5 .*index 2"):
            fn(realized, forecast)
    with pytest.raises(ValueError, match="realized variance"):
        qlike(np.array([1.0, 0.0]), np.ones(2))
    with pytest.raises(ValueError, match="non-finite"):
        qlike(np.ones(2), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="one length"):
        qlike(np.ones(2), np.ones(3))


def test_mincer_zarnowitz_by_hand():
    forecast = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    realized = np.array([2.0, 3.0, 5.0, 4.0, 6.0])
    # Sxy = 9, Sxx = 10 → b = 0.9, a = 4 − 0.9·3 = 1.3; SSR = 1.9, TSS = 10 → R² = 0.81
    mz = mincer_zarnowitz(realized, forecast)
    assert (mz.a, mz.b, mz.r2) == pytest.approx((1.3, 0.9, 0.81))
    exact = mincer_zarnowitz(2.0 + 3.0 * forecast, forecast)
    assert (exact.a, exact.b, exact.r2) == pytest.approx((2.0, 3.0, 1.0))
    flat = mincer_zarnowitz(realized, np.full(5, 2.0))
    assert all(math.isnan(v) for v in (flat.a, flat.b, flat.r2))


def test_newey_west_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    # deviations −1.5, −0.5, 0.5, 1.5: γ0 = 1.25, γ1 = 1.25/4, γ2 = −1.5/4 (divisor n throughout)
    assert newey_west_variance(x, 0) == pytest.approx(1.25)
    assert newey_west_variance(x, 1) == pytest.approx(1.25 + 2 * 0.5 * 0.3125)
    assert newey_west_variance(x, 2) == pytest.approx(1.25 + 2 * (2 / 3) * 0.3125 + 2 * (1 / 3) * (-0.375))
    # lags past the sample add nothing but keep shrinking the weights of those that exist
    assert newey_west_variance(x, 50) == pytest.approx(
        1.25 + 2 * sum((1 - j / 51) * g for j, g in ((1, 0.3125), (2, -0.375), (3, -1.5 * 1.5 / 4)))
    )


def test_diebold_mariano_with_lag_0_is_the_simple_t_statistic():
    a = np.array([2.0, 0.0, 3.0, 1.0, 4.0])
    b = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    # d = 1, −1, 2, 0, 3: mean 1, population variance 2 → DM = 1 / √(2/5)
    dm = diebold_mariano(a, b, lag=0)
    assert dm.stat == pytest.approx(1 / math.sqrt(2 / 5))
    assert dm.pvalue == pytest.approx(math.erfc(dm.stat / math.sqrt(2)))
    assert dm.mean_diff == 1.0 and dm.n == 5
    assert diebold_mariano(b, a, lag=0).stat == pytest.approx(-dm.stat)  # negative: the first is better


def test_hln_with_horizon_1_is_the_classic_t_test():
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(30) + 0.3, rng.standard_normal(30)
    dm = diebold_mariano(a, b, lag=0, hln=True)
    classic = ttest_1samp(a - b, 0.0)
    assert dm.stat == pytest.approx(classic.statistic) and dm.pvalue == pytest.approx(classic.pvalue)
    with pytest.raises(ValueError, match="HLN"):
        diebold_mariano(a[:24], b[:24], lag=23, hln=True)  # as many observations as the horizon


def test_diebold_mariano_degenerate_cases():
    same = np.array([1.0, 2.0, 3.0])
    assert diebold_mariano(same, same, lag=1).stat == 0.0
    assert diebold_mariano(same, same, lag=1).pvalue == 1.0
    gap = diebold_mariano(same, same + 1.0, lag=1)
    assert gap.stat == -math.inf and gap.pvalue == 0.0


def test_hac_lag_23_keeps_the_size_of_a_test_on_overlapping_targets():
    """Loss differentials of overlapping 24-bar targets are MA(23); with lag 0 the test rejects a true
    null far too often (≈70% at the 5% level); the default lag brings that near the nominal size.
    Bartlett weights shrink the 23 autocovariances, so some over-rejection remains (≈12% here)."""
    rng = np.random.default_rng(42)
    reps, n = 300, 2000
    rejections = {0: 0, DEFAULT_HAC_LAG: 0}
    for _ in range(reps):
        shocks = rng.standard_normal(n + 23)
        d = np.convolve(shocks, np.ones(24), mode="valid")  # equal expected loss, 23 overlapping bars
        for lag in rejections:
            rejections[lag] += diebold_mariano(d, np.zeros(n), lag=lag).pvalue < 0.05
    assert rejections[0] / reps > 0.4
    assert rejections[DEFAULT_HAC_LAG] / reps < 0.16


# --------------------------------------------------------------------------- evaluation table


def forecasts_fixture(rng, n=600):
    true_var = np.exp(np.convolve(rng.standard_normal(n + 23), np.ones(24) / 6, mode="valid") - 7)
    y = np.sqrt(true_var * rng.chisquare(24, n) / 24)
    return y, {
        "naive": np.sqrt(true_var) * np.exp(rng.normal(0, 0.5, n)),
        "har": np.sqrt(true_var) * np.exp(rng.normal(0, 0.2, n)),
        "lstm": np.sqrt(true_var) * np.exp(rng.normal(0, 0.1, n)),
    }


def test_evaluation_table_ranks_and_tests_against_the_best_baseline():
    y, forecasts = forecasts_fixture(np.random.default_rng(7))
    table = evaluate_forecasts(y, forecasts)
    assert table.best_baseline == "har" and table.best == "lstm"
    assert [r.name for r in table.rows] == ["lstm", "har", "naive"]
    assert table.row("lstm").kind == "model" and table.row("naive").kind == "baseline"
    assert math.isnan(table.row("har").dm_stat)
    expected = diebold_mariano(
        qlike_losses(y**2, forecasts["lstm"] ** 2), qlike_losses(y**2, forecasts["har"] ** 2)
    )
    assert table.row("lstm").dm_stat == pytest.approx(expected.stat) and expected.stat < 0
    assert table.row("naive").dm_stat > 0
    row = table.row("naive")
    assert row.qlike == pytest.approx(qlike(y**2, forecasts["naive"] ** 2)) and row.n == len(y)
    assert row.mz_b == pytest.approx(mincer_zarnowitz(y**2, forecasts["naive"] ** 2).b)

    records = json.loads(json.dumps(table.to_records()))  # NaN → None keeps it JSON-valid
    assert records[1]["name"] == "har" and records[1]["dm_stat"] is None
    md = table.to_markdown()
    assert "DM vs har" in md and "**lstm**" in md and md.count("\n| ") == 3  # one line per forecaster


def test_evaluation_primary_metric_and_errors():
    y, forecasts = forecasts_fixture(np.random.default_rng(8))
    assert evaluate_forecasts(y, forecasts, primary="rmse_vol").primary == "rmse_vol"
    assert evaluate_forecasts(y, {"lstm": forecasts["lstm"]}).best_baseline is None
    with pytest.raises(ValueError, match="primary"):
        evaluate_forecasts(y, forecasts, primary="mae")
    with pytest.raises(ValueError, match="'lstm' must be finite and strictly positive"):
        evaluate_forecasts(y, {**forecasts, "lstm": -forecasts["lstm"]})


def test_pooled_symbols_are_tested_on_the_per_timestamp_mean():
    """Two symbols with identical losses at every hour carry no more evidence than one."""
    y, forecasts = forecasts_fixture(np.random.default_rng(9))
    ts = np.arange(len(y))
    one = evaluate_forecasts(y, forecasts, ts=ts)
    two = evaluate_forecasts(np.r_[y, y], {k: np.r_[v, v] for k, v in forecasts.items()}, ts=np.r_[ts, ts])
    naive = evaluate_forecasts(np.r_[y, y], {k: np.r_[v, v] for k, v in forecasts.items()})
    assert two.row("lstm").dm_stat == pytest.approx(one.row("lstm").dm_stat)
    assert abs(naive.row("lstm").dm_stat) > 1.3 * abs(one.row("lstm").dm_stat)
