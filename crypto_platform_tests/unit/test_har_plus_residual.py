"""The TF residual on HAR+: starts as HAR+ exactly, trains, and its numpy forward pass equals Keras."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from crypto_platform.lib.model.har_plus import HARPlusBaseline
from crypto_platform.lib.model.lstm import limit_tf_threads
from crypto_platform.lib.model.residual import ResidualConfig, ResidualHARPlusForecaster
from crypto_platform_tests.unit.test_har_plus import har_plus_windows, random_bars


@pytest.fixture(scope="module")
def fitted():
    limit_tf_threads(2, 1)
    windows = har_plus_windows(random_bars(5, 2600))
    base = HARPlusBaseline().fit(windows)
    config = dataclasses.replace(ResidualConfig.default(), lstm_units=4, max_epochs=2, patience=1)
    model = ResidualHARPlusForecaster(config, base=base).fit(windows)
    return windows, base, model


def test_numpy_ensemble_equals_keras_within_1e5(fitted):
    windows, _, model = fitted
    assert len(model.ensemble.members) == 5 and len(model.keras_models) == 5
    sample = windows.take(np.arange(0, len(windows), 7))
    keras_lv = model.keras_log_variance(sample)
    np.testing.assert_allclose(model.predict_log_variance(sample), keras_lv, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        model.predict_log_variance(sample, dtype=np.float64), keras_lv, rtol=0, atol=1e-5
    )


def test_untrained_correction_is_exactly_har_plus(fitted):
    windows, base, model = fitted
    zeroed = dataclasses.replace(
        model.ensemble,
        members=tuple(
            dataclasses.replace(m, out_kernel=np.zeros_like(m.out_kernel), out_bias=np.zeros_like(m.out_bias))
            for m in model.ensemble.members
        ),
    )
    model_zero = ResidualHARPlusForecaster(model.config, base=base)
    model_zero.ensemble = zeroed
    np.testing.assert_allclose(model_zero.predict(windows), base.predict(windows), rtol=1e-12)


def test_members_report_training_and_the_no_harm_rule(fitted):
    _, _, model = fitted
    for member in model.params()["members"]:
        assert 0 <= member["best_epoch"] <= member["epochs_run"] <= 2
        assert np.isfinite(member["best_val_loss"])
    # a member kept at zero correction (best_epoch 0) has an all-zero output layer
    for m in model.ensemble.members:
        if m.best_epoch == 0:
            assert not m.out_kernel.any() and not m.out_bias.any()


def test_config_errors_and_unfitted():
    with pytest.raises(ValueError, match="at least one seed"):
        ResidualConfig(seeds=())
    with pytest.raises(RuntimeError, match="fit first"):
        ResidualHARPlusForecaster().predict(None)  # type: ignore[arg-type]
