"""Run configuration of the ML assets (editable in the launchpad) and the automation constants."""

from __future__ import annotations

import dataclasses
from typing import Any

from dagster import Config
from pydantic import Field

from crypto_platform.lib.drift import DEFAULT_ALPHA
from crypto_platform.lib.model.selection import SelectionSpec

GROUP = "ml"
EXPERIMENT_NAME = "crypto-volatility"
RETRAIN_JOB = "ml_retrain_job"

# A drift signal or an overdue champion asks for at most one retrain per cooldown: a retrain that
# cannot fix the drift (the market really changed and the new model drifts too) must not loop.
RETRAIN_COOLDOWN_S = 24 * 3600
CHAMPION_MAX_AGE_DAYS = 14
RETRAIN_SENSOR_INTERVAL_S = 300
WEEKLY_RETRAIN_CRON = "0 3 * * 1"  # Monday 03:00 UTC, after the hourly refresh of minute 5 has settled
RELOAD_SENSOR_INTERVAL_S = 60
DRIFT_JOB = "ml_drift_job"
# Daily 00:20 UTC: after the 00:05 refresh has stored the previous day's last bar and its features
# (the track record runs at 00:15, the daily report at 00:30 and shows this verdict).
DAILY_DRIFT_CRON = "20 0 * * *"
RELOAD_PATH = "/v1/ml/model/reload"


class TrainingConfig(Config):
    """What `trained_model` trains on and how. Selection fields left empty take the preset's value."""

    symbols: list[str] = Field(
        default_factory=list, description="Symbols to pool (e.g. BTC/USDT); empty: every configured symbol."
    )
    training_days: int = Field(default=365, ge=7, description="UTC days of features up to end_date.")
    end_date: str | None = Field(
        default=None, description="Last UTC day of the training window (YYYY-MM-DD); empty: today."
    )
    fast: bool = Field(
        default=False,
        description="Fast preset (SelectionSpec.fast: 3 folds, 6 HAR+ trials, small residual): tests, demo.",
    )
    margin: float = Field(
        default=0.02,
        ge=0.0,
        description="Relative pooled QLIKE improvement a challenger needs over the champion (and the best "
        "baseline) on the walk-forward folds to be promoted.",
    )
    folds: int | None = Field(
        default=None, ge=2, le=12, description="Walk-forward folds (default 4, fast 3)."
    )
    trials: int | None = Field(default=None, ge=1, le=500, description="HAR+ Optuna trials (default 30).")
    tuning_timeout_s: float | None = Field(
        default=None, gt=0, description="Wall-time bound of the HAR+ study (trials finished by then count)."
    )
    walk_forward_budget_s: float | None = Field(
        default=None,
        gt=0,
        description="Wall-time bound of the walk-forward (default 420 s): a candidate whose next fold "
        "would end past it is skipped, with the reason in the model card.",
    )
    candidates: list[str] = Field(
        default_factory=list,
        description="Challengers the gate may choose (naive, ewma, har, garch, expanding_mean, har_plus, "
        "har_plus_residual, combination); what they build on and plain HAR, the reference, are walked "
        "forward too. Empty: every candidate.",
    )

    def selection_spec(self, timeframe: str = "1h") -> SelectionSpec:
        preset = SelectionSpec.fast() if self.fast else SelectionSpec.default()
        overrides: dict[str, Any] = {"timeframe": timeframe}
        if self.folds is not None:
            overrides["n_folds"] = self.folds
        if self.trials is not None:
            overrides["n_trials"] = self.trials
        if self.tuning_timeout_s is not None:
            overrides["tuning_timeout_s"] = self.tuning_timeout_s
        if self.walk_forward_budget_s is not None:
            overrides["walk_forward_budget_s"] = self.walk_forward_budget_s
        if self.candidates:
            overrides["candidates"] = tuple(self.candidates)
        return dataclasses.replace(preset, **overrides)


class PromotionConfig(Config):
    margin: float | None = Field(
        default=None,
        ge=0.0,
        description="Override of the margin the challenger's training run recorded (TrainingConfig.margin).",
    )


class DriftConfig(Config):
    symbols: list[str] = Field(default_factory=list, description="Empty: every configured symbol.")
    current_days: int = Field(
        default=7, ge=1, description="Most recent UTC days compared with the reference."
    )
    end_date: str | None = Field(
        default=None, description="Last UTC day of the current window; empty: today."
    )
    alpha: float = Field(
        default=DEFAULT_ALPHA,
        gt=0.0,
        lt=1.0,
        description=(
            "Nominal level of the drift test's family (below the ≤ 5 % false alarms it is measured to "
            "give out of sample: see lib/drift.py DEFAULT_ALPHA)."
        ),
    )
    ks_floor: float = 0.1
    psi_floor: float = 0.2
    scale_floor: float = Field(
        default=0.25,
        ge=0.0,
        description="Shift of mean log |value| (volatility-like columns) a scale change must reach.",
    )


def training_run_config(
    fast: bool = False,
    training_days: int | None = None,
    end_date: str | None = None,
    symbols: list[str] | None = None,
) -> dict[str, Any]:
    """Run config of a job holding `trained_model` (ml_retrain_job): for the CLI, sensor and schedule."""
    config: dict[str, Any] = {}
    if fast:
        config["fast"] = True
    if symbols:
        config["symbols"] = list(symbols)
    if training_days is not None:
        config["training_days"] = training_days
    if end_date is not None:
        config["end_date"] = end_date
    return {"ops": {"trained_model": {"config": config}}} if config else {}
