"""Model selection for the pipeline, framework-free: tune HAR+, walk every candidate forward, let the gate
choose, refit the winner on every window.

`select_and_fit(features, spec)` is what the `trained_model` asset calls (the benchmark
`benchmarks/model_quality.py` runs the same pieces by hand):
1. `walk_forward.candidate_windows(features)`: the pooled windows every candidate reads (MODEL_FEATURES
   + HAR+ columns) and their forward log returns (for the VaR breach rate).
2. `tuning.tune_har_plus` on `tuning.tuning_block(windows)` — the windows before the walk-forward's
   first test block, purged — so the tuned configuration is judged on blocks it never saw. Each trial
   is handed to `on_trial` (the asset logs it as a nested MLflow run).
3. `walk_forward.walk_forward(windows, default_candidates(tuned HAR+, residual config), n_folds)` with
   plain HAR as the reference; `WalkForwardResult.decide()` is the gate (margin, DM p < 0.05, fold wins).
   `spec.candidates` narrows which challengers the gate may choose: those are walked forward with what
   they build on (the residual's HAR+, the combination's members) and plain HAR, the reference, which
   stays the champion when none of them passes.
4. The gate's champion (plain HAR when no challenger passes) is refitted on all windows — each
   candidate makes its own validation cut inside its training block, as on every fold — with the
   candidates it builds on, and a `LogResidualDispersion` is fitted on its validation residuals when it
   has them (HAR+, the residual ensemble, the combination).
No MLflow, Dagster or disk here: logging is `tracking.log_selection`, promotion `promotion.promote`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from crypto_platform.lib.model.gate import GateDecision
from crypto_platform.lib.model.har_features import har_plus_features
from crypto_platform.lib.model.har_plus import HARPlusConfig
from crypto_platform.lib.model.intervals import DEFAULT_LEVELS, LogResidualDispersion, fit_dispersion
from crypto_platform.lib.model.residual import ResidualConfig
from crypto_platform.lib.model.training import InsufficientDataError
from crypto_platform.lib.model.tuning import TrialRecord, TuningResult, tune_har_plus, tuning_block
from crypto_platform.lib.model.walk_forward import (
    COMBINATION_MEMBERS,
    Candidate,
    FoldContext,
    FoldResult,
    WalkForwardResult,
    candidate_windows,
    default_candidates,
    walk_forward,
)
from crypto_platform.lib.model.windows import WindowSet

REFERENCE = "har"
# Below this many windows in a fold's test block the fold's QLIKE (and the fold-win count) is noise.
MIN_TEST_WINDOWS = 50
# The tuning block needs enough windows for its own folds and HAR+'s validation cut.
MIN_TUNING_WINDOWS = 300


@dataclass(frozen=True)
class SelectionSpec:
    """How `select_and_fit` selects: folds, the HAR+ study, the residual's size."""

    timeframe: str = "1h"
    n_folds: int = 4
    min_train_frac: float = 0.5
    n_trials: int = 30
    tuning_folds: int = 3
    tuning_timeout_s: float | None = None
    tuning_seed: int = 0
    residual: ResidualConfig = field(default_factory=ResidualConfig.pipeline)
    # The challengers the gate may choose (`candidate_names()`); empty: every one.
    candidates: tuple[str, ...] = ()
    # Wall-time bound of the walk-forward (`walk_forward(time_budget_s=)`): a candidate whose next fold
    # would end past it is skipped with the reason. 7 minutes leave the default run's HAR+ study, refit
    # and logging inside the 10 the pipeline is given on 2 cores (measured: README, "Training cost").
    walk_forward_budget_s: float | None = 420.0
    margin: float = 0.01  # the gate's margin vs plain HAR (promotion has its own)
    levels: tuple[float, ...] = tuple(DEFAULT_LEVELS)

    @classmethod
    def default(cls) -> SelectionSpec:
        return cls()

    @classmethod
    def fast(cls) -> SelectionSpec:
        """The same code path, small: 3 folds, 6 HAR+ trials, the residual's fast preset."""
        return cls(n_folds=3, n_trials=6, tuning_folds=2, residual=ResidualConfig.fast())

    def __post_init__(self) -> None:
        known = candidate_names()
        unknown = [c for c in self.candidates if c not in known]
        if unknown:
            raise ValueError(f"candidates: {unknown} are not candidates; choose from {list(known)}")

    def to_params(self) -> dict[str, Any]:
        return {
            "selection_timeframe": self.timeframe,
            "selection_folds": self.n_folds,
            "selection_min_train_frac": self.min_train_frac,
            "tuning_trials": self.n_trials,
            "tuning_folds": self.tuning_folds,
            "tuning_seed": self.tuning_seed,
            "gate_margin": self.margin,
            "selection_candidates": ",".join(self.candidates) or "all",
            "walk_forward_budget_s": self.walk_forward_budget_s or "none",
        }


@dataclass(frozen=True, eq=False)
class SelectionResult:
    spec: SelectionSpec
    feature_frame: pl.DataFrame  # the features with the HAR+ columns: what a frame-contract model reads
    windows: WindowSet
    forward_log_return: np.ndarray
    tuning: TuningResult
    har_plus_config: HARPlusConfig
    walk_forward: WalkForwardResult
    decision: GateDecision  # the gate vs plain HAR on the walk-forward evidence
    model: Any  # the champion, refitted on every window
    dispersion: LogResidualDispersion | None  # from the refitted champion's validation residuals
    seconds: dict[str, float]

    @property
    def champion(self) -> str:
        return self.decision.champion

    def configuration(self) -> dict[str, Any]:
        """What was chosen (version tags and the model card): tuned HAR+, the residual, the gate."""
        return {
            "champion": self.champion,
            "har_plus": self.har_plus_config.to_dict(),
            "residual": self.spec.residual.to_dict(),
            "tuning": self.tuning.to_dict(),
            "folds": self.spec.n_folds,
            "gate_margin": self.spec.margin,
            "candidates": list(self.spec.candidates) or "all",
        }


def candidate_names() -> tuple[str, ...]:
    """Every candidate `select_and_fit` can walk forward, in fitting order."""
    return tuple(c.name for c in default_candidates())


def restrict_candidates(candidates: Sequence[Candidate], allowed: Sequence[str]) -> list[Candidate]:
    """`candidates` narrowed to `allowed`, what they build on and the reference, in the given order
    (empty `allowed`: all of them)."""
    if not allowed:
        return list(candidates)
    specs = {c.name: c for c in candidates}
    needed = {REFERENCE}
    frontier = list(allowed)
    while frontier:
        current = frontier.pop()
        if current in needed:
            continue
        needed.add(current)
        frontier += list(specs[current].requires)
        if current == "combination":
            frontier += [m for m in COMBINATION_MEMBERS if m in specs]
    return [c for c in candidates if c.name in needed]


def _check_size(windows: WindowSet, spec: SelectionSpec) -> None:
    test_share = 1.0 - spec.min_train_frac
    need = max(
        math.ceil(spec.n_folds * MIN_TEST_WINDOWS / test_share),
        math.ceil(MIN_TUNING_WINDOWS / spec.min_train_frac),
    )
    if len(windows) < need:
        raise InsufficientDataError(
            f"{len(windows)} complete windows in the features frame; {need} are needed for "
            f"{spec.n_folds} walk-forward folds of at least {MIN_TEST_WINDOWS} test windows and a tuning "
            f"block of {MIN_TUNING_WINDOWS}. Each window needs a month of feature history plus the target "
            "horizon: materialize more history."
        )


def fit_on_all(candidates: Sequence[Candidate], name: str, windows: WindowSet) -> Any:
    """`name` fitted on every window, after the candidates it builds on (its `requires`, and the
    combination's members), exactly as `walk_forward` fits it on a fold's training block."""
    specs = {c.name: c for c in candidates}
    if name not in specs:
        raise KeyError(f"{name!r} is not a candidate; have {list(specs)}")
    needed = {name}
    frontier = [name]
    while frontier:
        current = frontier.pop()
        deps = list(specs[current].requires)
        if current == "combination":
            deps += [m for m in COMBINATION_MEMBERS if m in specs]
        for dep in deps:
            if dep not in needed:
                needed.add(dep)
                frontier.append(dep)
    fitted: dict[str, Any] = {}
    for spec in candidates:  # the given order already puts what a candidate builds on before it
        if spec.name not in needed:
            continue
        try:
            fitted[spec.name] = spec.fit(windows, FoldContext(-1, fitted, specs))
        except (ValueError, RuntimeError):
            if spec.name == name:
                raise
            # a member that cannot be fitted on all windows (GARCH not converging) is left out of the
            # combination there too, as on a fold
    return fitted[name]


def select_and_fit(
    features: pl.DataFrame,
    spec: SelectionSpec | None = None,
    on_trial: Callable[[TrialRecord], None] | None = None,
    on_fold: Callable[[FoldResult], None] | None = None,
) -> SelectionResult:
    """Tune, walk forward, gate, refit (module docstring). `features`: `compute_features` output for
    every symbol at once (OHLC included). Raises `InsufficientDataError` on too short a history."""
    spec = spec or SelectionSpec()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if features.is_empty():
        raise InsufficientDataError("the features frame is empty: materialize more history")
    try:
        frame = har_plus_features(features, spec.timeframe)
        windows, forward = candidate_windows(frame, spec.timeframe)
    except ValueError as exc:
        raise InsufficientDataError(f"{exc}: materialize more history") from exc
    _check_size(windows, spec)
    seconds["windows"] = time.perf_counter() - started

    started = time.perf_counter()
    block = tuning_block(windows, spec.n_folds, spec.min_train_frac)
    tuning = tune_har_plus(
        block,
        n_trials=spec.n_trials,
        n_folds=spec.tuning_folds,
        seed=spec.tuning_seed,
        on_trial=on_trial,
        timeout_s=spec.tuning_timeout_s,
    )
    if not math.isfinite(tuning.best.pooled_qlike):
        raise InsufficientDataError(
            f"no HAR+ configuration could be scored on the tuning block ({tuning.best.error}): "
            "materialize more history"
        )
    seconds["tuning"] = time.perf_counter() - started

    started = time.perf_counter()
    candidates = restrict_candidates(
        default_candidates(residual_config=spec.residual, har_plus_config=tuning.best_config),
        spec.candidates,
    )
    result = walk_forward(
        windows,
        candidates,
        n_folds=spec.n_folds,
        min_train_frac=spec.min_train_frac,
        reference=REFERENCE,
        forward_log_return=forward,
        levels=spec.levels,
        on_fold=on_fold,
        time_budget_s=spec.walk_forward_budget_s,
    )
    decision = result.decide(margin=spec.margin, candidates=spec.candidates or None)
    seconds["walk_forward"] = time.perf_counter() - started

    started = time.perf_counter()
    model = fit_on_all(candidates, decision.champion, windows)
    residuals = getattr(model, "validation_log_residuals", None)
    dispersion = None
    if residuals is not None and np.isfinite(np.asarray(residuals, dtype=np.float64)).sum() >= 20:
        dispersion = fit_dispersion(np.asarray(residuals, dtype=np.float64), spec.levels)
    seconds["refit"] = time.perf_counter() - started
    return SelectionResult(
        spec=spec,
        feature_frame=frame,
        windows=windows,
        forward_log_return=forward,
        tuning=tuning,
        har_plus_config=tuning.best_config,
        walk_forward=result,
        decision=decision,
        model=model,
        dispersion=dispersion,
        seconds=seconds,
    )
