"""A small Optuna study over HAR+'s configuration, scored on purged walk-forward folds.

Search space: the ridge penalty (log-uniform), the rolling estimation window (180 / 365 / 730 days or
expanding) and which groups of HAR+ terms enter (`TERM_GROUPS`; the daily RV / weekly / monthly RV
core is always in). Objective: pooled out-of-sample QLIKE of HAR+ over `n_folds` expanding folds
(`windows.walk_forward_folds`, purged by the horizon), the loss the gate judges. HAR+ fits in well
under a second per fold, so a 30-trial study costs about a minute on 2 cores.

The default configuration is enqueued as trial 0, so the best trial is never worse than it on the
tuning folds; the TPE sampler is seeded, so a study is repeatable. Each finished trial is handed to
`on_trial(TrialRecord)` — the `trained_model` asset logs it as a nested MLflow run — and the chosen
configuration goes on the registered version (`TuningResult.best_config.to_dict()`).

Honesty: a configuration tuned on the very folds the gate then scores would carry selection bias
into the gate's evidence. Tune on `tuning_block(windows, ...)` — the windows before the gate's first
test block, purged — and let the walk-forward judge the tuned HAR+ on the blocks it never saw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from crypto_platform.lib.model.har_plus import DEFAULT_TERMS, HARPlusBaseline, HARPlusConfig
from crypto_platform.lib.model.metrics import qlike
from crypto_platform.lib.model.windows import WindowSet, walk_forward_folds

CORE_TERMS: tuple[str, ...] = ("log_rv_24", "log_rv_168", "log_rv_720")
TERM_GROUPS: dict[str, tuple[str, ...]] = {
    "range": ("log_gk_1", "log_gk_24", "log_gk_168", "log_gk_720"),
    "harq": ("harq_ratio_24", "harq_x_log_rv_24"),
    "semivariance": ("semivar_neg_share_24", "semivar_neg_share_168"),
    "leverage": ("signed_ret_24", "signed_ret_24_negative"),
    "cross_asset": ("cross_log_rv_24",),
    "volume": ("volume_ratio_24_720",),
    "week": tuple(f"week_{fn}_{k}" for k in (1, 2, 3) for fn in ("sin", "cos")),
    "day": ("day_sin_1", "day_cos_1"),
    "parkinson": ("log_pk_24", "log_pk_168"),
    "hourly_rv": ("log_rv_1",),
}
ESTIMATION_DAYS: tuple[str, ...] = ("180", "365", "730", "expanding")  # categorical labels
RIDGE_RANGE = (1.0, 1e5)


def terms_of(groups: Sequence[str]) -> tuple[str, ...]:
    """The core terms plus those of `groups`, in `TERM_GROUPS` order."""
    unknown = [g for g in groups if g not in TERM_GROUPS]
    if unknown:
        raise KeyError(f"unknown term groups {unknown}; known: {sorted(TERM_GROUPS)}")
    return CORE_TERMS + tuple(t for g, terms in TERM_GROUPS.items() if g in groups for t in terms)


def groups_of(terms: Sequence[str]) -> tuple[str, ...]:
    """The groups fully contained in `terms` (how a configuration reads as search parameters)."""
    return tuple(g for g, group in TERM_GROUPS.items() if set(group) <= set(terms))


@dataclass(frozen=True)
class TrialRecord:
    number: int
    params: dict[str, Any]  # the sampled values (what a nested run logs as params)
    config: HARPlusConfig
    pooled_qlike: float  # inf when the configuration could not be fitted on some fold
    fold_qlike: tuple[float, ...]
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class TuningResult:
    best: TrialRecord
    default: TrialRecord  # trial 0, the default configuration
    trials: tuple[TrialRecord, ...]

    @property
    def best_config(self) -> HARPlusConfig:
        return self.best.config

    @property
    def improvement_vs_default(self) -> float:
        return (self.default.pooled_qlike - self.best.pooled_qlike) / self.default.pooled_qlike

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_trial": self.best.number,
            "best_pooled_qlike": self.best.pooled_qlike,
            "default_pooled_qlike": self.default.pooled_qlike,
            "improvement_vs_default": self.improvement_vs_default,
            "best_config": self.best.config.to_dict(),
            "n_trials": len(self.trials),
        }


def tuning_block(windows: WindowSet, n_folds: int = 4, min_train_frac: float = 0.5) -> WindowSet:
    """The windows the walk-forward with these settings trains its first fold on (before any test)."""
    folds = walk_forward_folds(
        windows.ts, n_folds, min_train_frac, purge_bars=windows.horizon, bar_ms=windows.bar_ms
    )
    if not folds:
        raise ValueError("tuning_block: no folds (no windows)")
    return windows.take(folds[0].train)


def score_config(
    windows: WindowSet, config: HARPlusConfig, n_folds: int = 3, min_train_frac: float = 0.5
) -> tuple[float, tuple[float, ...]]:
    """(pooled QLIKE, per-fold QLIKE) of HAR+ with `config` on purged expanding folds of `windows`."""
    folds = walk_forward_folds(
        windows.ts, n_folds, min_train_frac, purge_bars=windows.horizon, bar_ms=windows.bar_ms
    )
    if not folds:
        raise ValueError("score_config: no folds (no windows)")
    ys, fs, per_fold = [], [], []
    for fold in folds:
        train, test = windows.take(fold.train), windows.take(fold.test)
        forecast = HARPlusBaseline(config).fit(train).predict(test)
        per_fold.append(qlike(test.y**2, forecast**2))
        ys.append(test.y)
        fs.append(forecast)
    y, f = np.concatenate(ys), np.concatenate(fs)
    return qlike(y**2, f**2), tuple(per_fold)


def _params_of(config: HARPlusConfig) -> dict[str, Any]:
    days = "expanding" if config.estimation_days is None else str(round(config.estimation_days))
    groups = set(groups_of(config.terms))
    return {
        "ridge": config.ridge,
        "estimation_days": days,
        **{f"use_{g}": g in groups for g in TERM_GROUPS},
    }


def _config_of(params: dict[str, Any], base: HARPlusConfig) -> HARPlusConfig:
    days = params["estimation_days"]
    groups = [g for g in TERM_GROUPS if params[f"use_{g}"]]
    return replace(
        base,
        terms=terms_of(groups),
        ridge=float(params["ridge"]),
        estimation_days=None if days == "expanding" else float(days),
    )


def tune_har_plus(
    windows: WindowSet,
    n_trials: int = 30,
    n_folds: int = 3,
    min_train_frac: float = 0.5,
    seed: int = 0,
    on_trial: Callable[[TrialRecord], None] | None = None,
    base: HARPlusConfig | None = None,
    timeout_s: float | None = None,
) -> TuningResult:
    """Seeded TPE study over ridge, estimation window and term groups (module docstring).

    `windows`: the tuning block (see `tuning_block`). `base`: the configuration the non-searched
    settings (validation fraction, scale block…) come from, and trial 0. `timeout_s` bounds the
    study's wall time (trials finished by then count)."""
    import optuna

    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    base = base or HARPlusConfig()
    if tuple(base.terms) != terms_of(groups_of(base.terms)):
        # Trial 0 must be expressible in the search space, or the "never worse than default" promise breaks.
        base = replace(base, terms=terms_of(groups_of(base.terms)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(_params_of(base))
    records: list[TrialRecord] = []

    def objective(trial: optuna.Trial) -> float:
        params = {
            "ridge": trial.suggest_float("ridge", *RIDGE_RANGE, log=True),
            "estimation_days": trial.suggest_categorical("estimation_days", ESTIMATION_DAYS),
            **{f"use_{g}": trial.suggest_categorical(f"use_{g}", (True, False)) for g in TERM_GROUPS},
        }
        config = _config_of(params, base)
        started = time.perf_counter()
        try:
            pooled, per_fold = score_config(windows, config, n_folds, min_train_frac)
            error = None
        except ValueError as exc:  # too few rows for this window length, say: a bad trial, not a failed study
            pooled, per_fold, error = math.inf, (), str(exc)
        record = TrialRecord(
            trial.number, params, config, pooled, per_fold, time.perf_counter() - started, error
        )
        records.append(record)
        if on_trial is not None:
            on_trial(record)
        return pooled

    study.optimize(objective, n_trials=n_trials, timeout=timeout_s)
    best = min(records, key=lambda r: (r.pooled_qlike, r.number))
    return TuningResult(best=best, default=records[0], trials=tuple(records))


DEFAULT_GROUPS: tuple[str, ...] = groups_of(DEFAULT_TERMS)
