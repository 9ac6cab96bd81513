"""Where promotion happens: when a challenger may replace the champion, and moving the alias in MLflow.

The evidence is the challenger's training run's walk-forward (`selection_tracking`: the pooled
out-of-sample forecasts of every candidate on k purged folds, `walk_forward_evidence`). The incumbent
champion is judged on the same folds through its candidate (the `candidate` version tag: a refit of
its family on this run's folds), so both sides are scored on the very same hours.

The rules (pure, `judge_challenger`). A challenger replaces the champion only if
  1. its out-of-sample forecasts pass the sanity probes: every forecast finite and positive, and
     forecasts rise with recent realized volatility (the mean forecast over the top quintile of current
     RV exceeds the bottom quintile's) — a constant or inverted model fails here whatever its loss; and
  2. it passes the gate (`gate.judge`: pooled QLIKE at least `margin` below, DM p < 0.05 in its favour,
     lower QLIKE in ≥ 3 of 4 folds) against the incumbent's candidate AND the best baseline of the
     run (`WalkForwardResult.decide_against_all`).
With no champion yet, the challenger — the gate's winner of its run — becomes the first champion if it
passes the probes. A challenger of the champion's own candidate (the same family refitted on newer
data, chosen again by its run's gate) replaces it if it passes the probes: the gate cannot tell a
family from itself. An incumbent whose candidate the run did not evaluate (an older LSTM version) is
not on these folds; the challenger must then pass the gate against the best baseline only.

The registry action (`promote`): loads the evidence, applies the rules, writes the decision onto the
challenger version's tags and moves the `champion` alias.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from crypto_platform.lib.model import registry
from crypto_platform.lib.model.baselines import BASELINE_NAMES
from crypto_platform.lib.model.gate import DEFAULT_FOLD_WIN_SHARE, DEFAULT_MAX_PVALUE
from crypto_platform.lib.model.tags import (
    BASELINE_FAMILY_PREFIX,
    CANDIDATE_TAG,
    FAMILY_TAG,
    TRAINING_RUN_TAG,
)
from crypto_platform.lib.model.walk_forward import WalkForwardResult
from crypto_platform.lib.model.walk_forward_evidence import (
    EVIDENCE_PARQUET,
    WALK_FORWARD_JSON,
    recent_realized_vol,
    result_from_evidence,
)

# Quintiles: coarse enough to be stable on a few hundred holdout windows.
PROBE_QUANTILE = 0.2


@dataclass(frozen=True)
class ProbeResult:
    finite: bool
    positive: bool
    rises_with_recent_vol: bool
    low_vol_mean_forecast: float
    high_vol_mean_forecast: float

    @property
    def passed(self) -> bool:
        return self.finite and self.positive and self.rises_with_recent_vol

    def failures(self) -> list[str]:
        failed = []
        if not self.finite:
            failed.append("non-finite forecasts")
        if not self.positive:
            failed.append("non-positive forecasts")
        if not self.rises_with_recent_vol:
            failed.append(
                "forecasts do not rise with recent realized volatility "
                f"(low-vol mean {self.low_vol_mean_forecast:.4g} ≥ "
                f"high-vol mean {self.high_vol_mean_forecast:.4g})"
            )
        return failed


def sanity_probes(forecasts: np.ndarray, recent_realized_vol: np.ndarray) -> ProbeResult:
    """Probe forecasts on the holdout against each window's current realized volatility."""
    forecasts = np.asarray(forecasts, dtype=float)
    recent = np.asarray(recent_realized_vol, dtype=float)
    if forecasts.shape != recent.shape or forecasts.ndim != 1 or forecasts.size < 10:
        raise ValueError("probes need two equal-length 1-D arrays of at least 10 holdout windows")
    finite = bool(np.all(np.isfinite(forecasts)))
    positive = bool(finite and np.all(forecasts > 0))
    low_cut, high_cut = np.quantile(recent, [PROBE_QUANTILE, 1 - PROBE_QUANTILE])
    low = forecasts[recent <= low_cut]
    high = forecasts[recent >= high_cut]
    low_mean = float(np.mean(low)) if finite else float("nan")
    high_mean = float(np.mean(high)) if finite else float("nan")
    rises = bool(finite and high_mean > low_mean)
    return ProbeResult(finite, positive, rises, low_mean, high_mean)


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger: str  # candidate names
    incumbent: str | None
    references: tuple[str, ...]  # what the challenger had to pass the gate against
    challenger_qlike: float  # pooled out-of-sample QLIKE
    champion_qlike: float | None  # the incumbent candidate's, on the same folds
    relative_improvement: float | None  # vs the incumbent candidate
    margin: float
    probes: ProbeResult
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # reference → the challenger's verdict

    def to_tags(self) -> dict[str, str]:
        """Flat string tags for an MLflow model version (and Dagster metadata)."""
        tags = {
            "promotion.decision": "promoted" if self.promote else "rejected",
            "promotion.reason": self.reason[:5000],
            "promotion.challenger_qlike": f"{self.challenger_qlike:.6g}",
            "promotion.margin": f"{self.margin:.4g}",
            "promotion.references": ",".join(self.references),
        }
        if self.champion_qlike is not None:
            tags["promotion.champion_qlike"] = f"{self.champion_qlike:.6g}"
        if self.relative_improvement is not None:
            tags["promotion.relative_improvement"] = f"{self.relative_improvement:.4g}"
        for key, value in asdict(self.probes).items():
            tags[f"promotion.probe.{key}"] = str(value)
        for ref, verdict in self.verdicts.items():
            tags[f"promotion.gate.{ref}"] = (
                "passed" if verdict["passed"] else "failed: " + "; ".join(verdict["reasons"])
            )[:5000]
        return tags


def judge_challenger(
    result: WalkForwardResult,
    challenger: str,
    incumbent: str | None,
    probes: ProbeResult,
    margin: float,
    max_pvalue: float = DEFAULT_MAX_PVALUE,
    fold_win_share: float = DEFAULT_FOLD_WIN_SHARE,
) -> PromotionDecision:
    """The rules of the module docstring on one run's walk-forward evidence (candidate names)."""
    if margin < 0:
        raise ValueError("margin must be ≥ 0")
    if challenger not in result.names:
        raise ValueError(
            f"the challenger {challenger!r} is not in its run's walk-forward evidence {list(result.names)}"
        )
    table = result.table
    challenger_q = table.row(challenger).qlike
    evaluated = incumbent is not None and incumbent in result.names
    incumbent_q = table.row(incumbent).qlike if evaluated else None
    improvement = (incumbent_q - challenger_q) / incumbent_q if incumbent_q else None

    def decision(promote: bool, reason: str, refs: tuple[str, ...] = (), verdicts=None) -> PromotionDecision:
        return PromotionDecision(
            promote,
            reason,
            challenger,
            incumbent,
            refs,
            challenger_q,
            incumbent_q,
            improvement,
            margin,
            probes,
            verdicts or {},
        )

    if not math.isfinite(challenger_q):
        return decision(False, "the challenger's pooled QLIKE is not finite")
    if not probes.passed:
        return decision(False, "sanity probes failed: " + "; ".join(probes.failures()))
    if incumbent is None:
        return decision(True, f"first champion: {challenger}, the gate's winner of its run; probes passed")
    if incumbent == challenger:
        return decision(
            True,
            f"{challenger} is the champion's own candidate, chosen again by its run's gate and refitted on "
            "newer data; probes passed",
        )
    best = table.best_baseline
    refs = tuple(
        dict.fromkeys(r for r in ((incumbent if evaluated else None), best) if r and r != challenger)
    )
    if not refs:
        return decision(
            True,
            f"the incumbent {incumbent} was not evaluated on these folds and {challenger} is the best "
            "baseline; probes passed",
        )
    _, decisions = result.decide_against_all(list(refs), margin, max_pvalue, fold_win_share)
    verdicts = {
        ref: next(v for v in d.verdicts if v.name == challenger).to_dict() for ref, d in decisions.items()
    }
    failed = {ref: v for ref, v in verdicts.items() if not v["passed"]}
    note = "" if evaluated else f" (the incumbent {incumbent} was not evaluated on these folds)"
    if failed:
        why = "; ".join(f"vs {ref}: " + ", ".join(v["reasons"]) for ref, v in failed.items())
        return decision(False, f"{challenger} does not pass the gate{note} — {why}", refs, verdicts)
    shown = ", ".join(
        f"{v['improvement']:+.2%} vs {ref} ({v['folds_won']} folds won)" for ref, v in verdicts.items()
    )
    return decision(True, f"{challenger} passes the gate{note}: pooled QLIKE {shown}", refs, verdicts)


# --------------------------------------------------------------------------------------------------
# The registry action: read the evidence, decide, tag, move the alias.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionOutcome:
    decision: PromotionDecision
    challenger_version: str
    challenger_family: str
    champion_before: str | None
    champion_after: str
    bootstrapped_version: str | None  # the first champion, when there was none
    evidence_run_id: str
    n_windows: int  # pooled out-of-sample windows the decision read
    pooled_qlike: dict[str, float]  # every candidate of the run, pooled out of sample
    champion_qlike: float | None  # the champion's candidate after the decision (None: not evaluated)
    champion_candidate: str
    baselines_not_beaten: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.decision.promote

    @property
    def champion_beats_baselines(self) -> bool:
        return not self.baselines_not_beaten

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decision"] = self.decision.to_tags()
        out["promoted"] = self.promoted
        out["pooled_qlike"] = {k: (v if math.isfinite(v) else None) for k, v in self.pooled_qlike.items()}
        return out


class NoChallengerError(LookupError):
    pass


def version_candidate(mv: ModelVersion) -> str:
    """The walk-forward candidate a version is a refit of (its `candidate` tag; else from its family)."""
    tags = mv.tags or {}
    if tags.get(CANDIDATE_TAG):
        return tags[CANDIDATE_TAG]
    return tags.get(FAMILY_TAG, "unknown").removeprefix(BASELINE_FAMILY_PREFIX)


def load_evidence(run_id: str) -> tuple[WalkForwardResult, np.ndarray]:
    """(walk-forward result, recent realized vol per pooled row) a training run stored."""
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=WALK_FORWARD_JSON, dst_path=tmp
        )
        frame_path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=EVIDENCE_PARQUET, dst_path=tmp
        )
        summary = json.loads(Path(summary_path).read_text())
        frame = pl.read_parquet(frame_path)
    return result_from_evidence(frame, summary), recent_realized_vol(frame)


def baselines_not_beaten(result: WalkForwardResult, champion: str) -> list[str]:
    """Baselines of the run whose pooled QLIKE the champion's candidate does not beat (never itself);
    every baseline when the champion's candidate was not evaluated on these folds."""
    baselines = [n for n in result.names if n in BASELINE_NAMES and n != champion]
    if champion not in result.names:
        return baselines
    q = result.table.row(champion).qlike
    return [b for b in baselines if not q < result.table.row(b).qlike]


def promote(client: MlflowClient, margin: float, model_name: str = registry.MODEL_NAME) -> PromotionOutcome:
    """Decide whether the `challenger` version replaces the `champion` on its run's walk-forward evidence
    (module docstring); tag the challenger with the decision; move the `champion` alias on promotion."""
    challenger = registry.alias_version(client, registry.CHALLENGER, model_name)
    if challenger is None:
        raise NoChallengerError(f"{model_name} has no `{registry.CHALLENGER}` version: train a model first")
    run_id = (challenger.tags or {}).get(TRAINING_RUN_TAG) or challenger.run_id
    result, recent = load_evidence(run_id)
    champion = registry.alias_version(client, registry.CHAMPION, model_name)
    champion_before = str(champion.version) if champion else None
    name = version_candidate(challenger)
    if name not in result.forecasts:
        raise ValueError(f"challenger v{challenger.version} ({name}) is not in run {run_id}'s evidence")
    probes = sanity_probes(result.forecasts[name], recent)

    if champion is not None and str(champion.version) == str(challenger.version):
        decision = replace(
            judge_challenger(result, name, name, probes, margin),
            promote=False,
            reason="the challenger is already the champion",
        )
    else:
        incumbent = version_candidate(champion) if champion is not None else None
        decision = judge_challenger(result, name, incumbent, probes, margin)
    registry.tag_version(
        client,
        challenger.version,
        {
            **decision.to_tags(),
            "promotion.champion_version": champion_before or "none",
            "promotion.evidence_run_id": run_id,
            "promotion.n_windows": str(result.y.size),
            "promotion.decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        model_name,
    )
    bootstrapped = None
    if decision.promote:
        registry.move_alias(client, registry.CHAMPION, challenger.version, model_name)
        if champion is None:
            bootstrapped = str(challenger.version)
        champion = challenger
    elif champion is None:
        raise RuntimeError(f"no servable champion: the first candidate failed ({decision.reason})")
    champion_name = version_candidate(champion)
    not_beaten = baselines_not_beaten(result, champion_name)
    registry.tag_version(
        client, champion.version, {"champion_beats_baselines": str(not not_beaten)}, model_name
    )
    return PromotionOutcome(
        decision=decision,
        challenger_version=str(challenger.version),
        challenger_family=(challenger.tags or {}).get(FAMILY_TAG, "unknown"),
        champion_before=champion_before,
        champion_after=str(champion.version),
        bootstrapped_version=bootstrapped,
        evidence_run_id=run_id,
        n_windows=int(result.y.size),
        pooled_qlike={n: float(result.table.row(n).qlike) for n in result.names},
        champion_qlike=float(result.table.row(champion_name).qlike)
        if champion_name in result.names
        else None,
        champion_candidate=champion_name,
        baselines_not_beaten=not_beaten,
    )
