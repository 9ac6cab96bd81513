"""lib.model.tuning: the HAR+ study starts from the default, reports every trial, is seeded, stays honest."""

from __future__ import annotations

import pytest

pytest.importorskip("optuna")

from crypto_platform.lib.model.har_plus import DEFAULT_TERMS, HARPlusConfig
from crypto_platform.lib.model.tuning import (
    DEFAULT_GROUPS,
    TrialRecord,
    groups_of,
    score_config,
    terms_of,
    tune_har_plus,
    tuning_block,
)
from crypto_platform.lib.model.windows import walk_forward_folds
from crypto_platform_tests.unit.test_har_plus import har_plus_windows, random_bars


@pytest.fixture(scope="module")
def windows():
    return har_plus_windows(random_bars(17, 3200))


def test_term_groups_round_trip_the_default_terms():
    assert terms_of(DEFAULT_GROUPS) == DEFAULT_TERMS
    assert groups_of(terms_of(["harq", "day"])) == ("harq", "day")
    assert terms_of([]) == ("log_rv_24", "log_rv_168", "log_rv_720")
    with pytest.raises(KeyError, match="no_such"):
        terms_of(["no_such"])


def test_study_starts_at_the_default_reports_each_trial_and_never_ends_worse(windows):
    seen: list[TrialRecord] = []
    result = tune_har_plus(windows, n_trials=6, n_folds=2, seed=3, on_trial=seen.append)
    assert [r.number for r in seen] == list(range(6)) and result.trials == tuple(seen)
    assert result.default.number == 0 and result.default.config == HARPlusConfig()
    pooled, folds = score_config(windows, HARPlusConfig(), n_folds=2)
    assert result.default.pooled_qlike == pytest.approx(pooled, rel=1e-12)
    assert result.default.fold_qlike == pytest.approx(folds, rel=1e-12)
    assert result.best.pooled_qlike <= result.default.pooled_qlike
    assert result.improvement_vs_default >= 0
    assert result.best_config == _config_from(result.best)
    assert result.to_dict()["n_trials"] == 6
    # Seeded: the same study samples the same configurations.
    again = tune_har_plus(windows, n_trials=6, n_folds=2, seed=3)
    assert [r.params for r in again.trials] == [r.params for r in seen]


def _config_from(record: TrialRecord) -> HARPlusConfig:
    p = record.params
    days = None if p["estimation_days"] == "expanding" else float(p["estimation_days"])
    groups = [k.removeprefix("use_") for k, v in p.items() if k.startswith("use_") and v]
    return HARPlusConfig(terms=terms_of(groups), ridge=p["ridge"], estimation_days=days)


def test_tuning_block_ends_before_the_gate_sees_any_test_window(windows):
    block = tuning_block(windows, n_folds=4, min_train_frac=0.5)
    first_test = walk_forward_folds(windows.ts, 4, 0.5)[0].test_start_ts
    assert len(block) > 0 and int(block.target_end_ts.max()) < first_test
    with pytest.raises(ValueError):
        tune_har_plus(windows, n_trials=0)
