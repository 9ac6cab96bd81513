import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.drift import (
    benjamini_hochberg,
    detect_drift,
    population_stability_index,
)


def test_benjamini_hochberg_matches_hand_computation():
    # p sorted: 0.01, 0.02, 0.03, 0.5 with n=4 → raw 0.04, 0.04, 0.04, 0.5 → monotone from the top.
    adjusted = benjamini_hochberg(np.array([0.03, 0.5, 0.01, 0.02]))
    np.testing.assert_allclose(adjusted, [0.04, 0.5, 0.04, 0.04])


def test_benjamini_hochberg_caps_at_one_and_keeps_order():
    adjusted = benjamini_hochberg(np.array([0.9, 0.8, 0.95]))
    assert np.all(adjusted <= 1.0)
    assert adjusted[1] <= adjusted[0] <= adjusted[2]


def test_psi_is_zero_for_identical_samples_and_grows_with_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert population_stability_index(ref, ref) == pytest.approx(0.0, abs=1e-12)
    small = population_stability_index(ref, ref + 0.1)
    large = population_stability_index(ref, ref + 1.0)
    assert 0 < small < 0.1 < 0.2 < large


def test_psi_hand_computed_two_bins():
    # Reference deciles collapse to the edges {0, 1}: one bin holding everything at or above 0.
    ref = np.array([0.0, 0.0, 1.0, 1.0])
    cur = np.array([0.0, 1.0, 1.0, 1.0])
    # edges = {0, 1}: no inner edge, so a single bin → PSI 0 whatever the mix.
    assert population_stability_index(ref, cur, bins=1) == pytest.approx(0.0)
    # With 2 bins the inner edge is the median 0.5: ref 50/50, cur 25/75.
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert population_stability_index(ref, cur, bins=2) == pytest.approx(expected)


def _frame(rng: np.random.Generator, n: int, shift: float = 0.0, vol_scale: float = 1.0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "log_ret": rng.normal(0.0, 0.01, n),
            "rsi_14": rng.uniform(20, 80, n) + shift,
            "realized_vol_24": np.abs(rng.normal(0.03, 0.01, n)) * vol_scale,
        }
    )


def test_no_drift_between_samples_of_one_distribution():
    rng = np.random.default_rng(1)
    report = detect_drift(_frame(rng, 3000), _frame(rng, 500), ["log_ret", "rsi_14"])
    assert not report.feature_drift_detected
    assert not report.label_drift_detected


def test_shifted_feature_is_flagged_and_others_are_not():
    rng = np.random.default_rng(2)
    report = detect_drift(_frame(rng, 3000), _frame(rng, 500, shift=25.0), ["log_ret", "rsi_14"])
    assert report.drifted_features == ["rsi_14"]
    assert "rsi_14" in report.to_markdown()
    assert report.to_dict()["feature_drift_detected"] is True


def test_effect_size_floor_ignores_significant_but_tiny_shifts():
    rng = np.random.default_rng(3)
    ref = pl.DataFrame({"x": rng.normal(0, 1, 200_000), "realized_vol_24": rng.uniform(size=200_000)})
    cur = pl.DataFrame({"x": rng.normal(0.03, 1, 200_000), "realized_vol_24": rng.uniform(size=200_000)})
    report = detect_drift(ref, cur, ["x"])
    assert report.features[0].p_value_adjusted < 0.05  # "significant" with this many samples …
    assert not report.features[0].drifted  # … but far below the floor


def test_label_drift_reported_separately():
    rng = np.random.default_rng(4)
    report = detect_drift(_frame(rng, 3000), _frame(rng, 500, vol_scale=2.5), ["log_ret"])
    assert report.label_drift_detected
    assert not report.feature_drift_detected


def test_missing_columns_and_tiny_samples_raise_clearly():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="lack columns"):
        detect_drift(_frame(rng, 10), _frame(rng, 10), ["nope"])
    with pytest.raises(ValueError, match="at least 2 finite values"):
        detect_drift(_frame(rng, 10), _frame(rng, 1), ["log_ret"])
