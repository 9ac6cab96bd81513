"""Names of the MLflow registry tags every registered version of the volatility model carries.

Written by training and promotion (`lib.model.tracking`, `lib.model.promotion`), read by the served-model
core and the reports. One definition, so a renamed tag cannot leave a reader looking for the old name.
Importing this module costs nothing (no MLflow import): serving reads these names on every load.
"""

from __future__ import annotations

FAMILY_TAG = "model_family"  # `baseline:<name>`, `har_plus`, `har_plus_residual`, `combination`, `lstm`
FEATURES_TAG = "feature_columns"  # JSON list: the feature order of the version's input windows
TIMEFRAME_TAG = "timeframe"  # bar size the version was trained on (`1h`)
TRAINING_RUN_TAG = (
    "training_run_id"  # the run whose walk-forward judged it and whose reference describes its data
)
# The walk-forward candidate a version is the refit of (`har_plus`, `ewma`…): what promotion looks up in
# a run's walk-forward evidence to judge the incumbent on the same folds as the challenger.
CANDIDATE_TAG = "candidate"

LSTM_FAMILY = "lstm"
BASELINE_FAMILY_PREFIX = "baseline:"


def baseline_family(name: str) -> str:
    return f"{BASELINE_FAMILY_PREFIX}{name}"
