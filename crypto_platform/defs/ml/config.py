"""Run configuration of the ML assets (editable in the launchpad) and the automation constants."""

from __future__ import annotations

import dataclasses
from typing import Any

from dagster import Config
from pydantic import Field

from crypto_platform.lib.model.lstm import LSTMConfig

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

_LSTM_FIELDS = ("units", "layers", "dropout", "learning_rate", "batch_size", "max_epochs", "patience", "seed")


class TrainingConfig(Config):
    """What `trained_model` trains on and how. LSTM fields left empty take the preset's value."""

    symbols: list[str] = Field(
        default_factory=list, description="Symbols to pool (e.g. BTC/USDT); empty: every configured symbol."
    )
    training_days: int = Field(default=365, ge=7, description="UTC days of features up to end_date.")
    end_date: str | None = Field(
        default=None, description="Last UTC day of the training window (YYYY-MM-DD); empty: today."
    )
    fast: bool = Field(
        default=False, description="Tiny LSTM preset (LSTMConfig.fast): tests and the offline demo."
    )
    margin: float = Field(
        default=0.02,
        ge=0.0,
        description="Relative QLIKE improvement a challenger needs over the champion to be promoted.",
    )
    units: int | None = None
    layers: int | None = None
    dropout: float | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    max_epochs: int | None = None
    patience: int | None = None
    seed: int | None = None

    def lstm_config(self) -> LSTMConfig:
        preset = LSTMConfig.fast() if self.fast else LSTMConfig.default()
        overrides = {name: getattr(self, name) for name in _LSTM_FIELDS if getattr(self, name) is not None}
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
    alpha: float = 0.05
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
