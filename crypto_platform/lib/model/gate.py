"""The promotion gate as one pure function: which forecaster, if any, has earned the champion's place.

A challenger beats the reference (plain HAR in the benchmark; the current champion or the best
baseline in promotion) only if all of these hold on walk-forward out-of-sample evidence:
- its pooled QLIKE is at least `margin` (relative) below the reference's;
- the Diebold–Mariano test of its pooled loss differential against the reference rejects equal loss in
  its favour: statistic < 0 and p < `max_pvalue` (HAC variance: see `metrics.diebold_mariano`);
- it has the lower QLIKE in at least `min_fold_wins(n_folds)` of the folds (3 of 4 by default), so
  one lucky regime cannot carry the average.
Of the challengers that pass, the one with the lowest pooled QLIKE wins; if none passes, the reference
stays. No I/O, no model objects: the benchmark calls it today and `model_promotion` can call it later
with the numbers it logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

DEFAULT_MARGIN = 0.01  # 1 % of the reference's pooled QLIKE
DEFAULT_MAX_PVALUE = 0.05
DEFAULT_FOLD_WIN_SHARE = 0.75  # 3 of 4 folds


@dataclass(frozen=True)
class CandidateEvidence:
    """What the gate needs about one forecaster, all measured against the same reference."""

    name: str
    pooled_qlike: float
    dm_stat: float  # DM statistic of (candidate loss − reference loss); negative favours the candidate
    dm_pvalue: float
    fold_qlike: tuple[float, ...]


@dataclass(frozen=True)
class GateVerdict:
    name: str
    passed: bool
    improvement: float  # (reference − candidate) / reference pooled QLIKE
    folds_won: int
    reasons: tuple[str, ...]  # why it failed; empty when it passed

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    champion: str
    reference: str
    verdicts: tuple[GateVerdict, ...]
    margin: float
    max_pvalue: float
    min_fold_wins: int

    def to_dict(self) -> dict[str, object]:
        return {
            "champion": self.champion,
            "reference": self.reference,
            "rule": (
                f"pooled QLIKE ≥ {self.margin:.1%} below {self.reference}, DM stat < 0 with p < "
                f"{self.max_pvalue}, lower QLIKE in ≥ {self.min_fold_wins} folds; lowest pooled QLIKE wins"
            ),
            "verdicts": {v.name: v.to_dict() for v in self.verdicts},
        }


def min_fold_wins(n_folds: int, share: float = DEFAULT_FOLD_WIN_SHARE) -> int:
    """Folds a challenger must win: ⌈share · n_folds⌉ (3 of 4, 4 of 5), at least 1."""
    if n_folds < 1:
        raise ValueError("n_folds must be >= 1")
    return max(1, math.ceil(share * n_folds - 1e-9))


def judge(
    candidate: CandidateEvidence,
    reference: CandidateEvidence,
    margin: float = DEFAULT_MARGIN,
    max_pvalue: float = DEFAULT_MAX_PVALUE,
    fold_win_share: float = DEFAULT_FOLD_WIN_SHARE,
) -> GateVerdict:
    if len(candidate.fold_qlike) != len(reference.fold_qlike):
        raise ValueError(
            f"{candidate.name} has {len(candidate.fold_qlike)} fold scores, "
            f"{reference.name} {len(reference.fold_qlike)}: they must be scored on the same folds"
        )
    if not reference.pooled_qlike > 0:
        raise ValueError(f"the reference's pooled QLIKE must be > 0, got {reference.pooled_qlike}")
    improvement = (reference.pooled_qlike - candidate.pooled_qlike) / reference.pooled_qlike
    won = sum(c < r for c, r in zip(candidate.fold_qlike, reference.fold_qlike, strict=True))
    need = min_fold_wins(len(reference.fold_qlike), fold_win_share)
    reasons = []
    if not improvement >= margin:
        reasons.append(f"improvement {improvement:+.2%} is below the {margin:.1%} margin")
    if not (candidate.dm_stat < 0 and candidate.dm_pvalue < max_pvalue):
        reasons.append(
            f"DM stat {candidate.dm_stat:.2f}, p {candidate.dm_pvalue:.3g} (need < 0 and < {max_pvalue})"
        )
    if won < need:
        reasons.append(f"won {won} of {len(reference.fold_qlike)} folds (need {need})")
    return GateVerdict(candidate.name, not reasons, improvement, won, tuple(reasons))


def choose_champion(
    reference: CandidateEvidence,
    candidates: Sequence[CandidateEvidence],
    margin: float = DEFAULT_MARGIN,
    max_pvalue: float = DEFAULT_MAX_PVALUE,
    fold_win_share: float = DEFAULT_FOLD_WIN_SHARE,
) -> GateDecision:
    """The gate's decision: the best passing challenger, or the reference when none passes."""
    verdicts = tuple(
        judge(c, reference, margin, max_pvalue, fold_win_share)
        for c in candidates
        if c.name != reference.name
    )
    by_name: Mapping[str, CandidateEvidence] = {c.name: c for c in candidates}
    passing = [v for v in verdicts if v.passed]
    champion = (
        min(passing, key=lambda v: (by_name[v.name].pooled_qlike, v.name)).name if passing else reference.name
    )
    return GateDecision(
        champion=champion,
        reference=reference.name,
        verdicts=verdicts,
        margin=margin,
        max_pvalue=max_pvalue,
        min_fold_wins=min_fold_wins(len(reference.fold_qlike), fold_win_share),
    )
