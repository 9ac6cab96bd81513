"""When a challenger may replace the champion.

The registry must always hold a servable champion, and the LSTM serves only when it is the best
forecaster the platform has. So a challenger is promoted only if it
  1. passes sanity probes on the holdout: every forecast finite and positive, and forecasts rise with
     recent realized volatility (the mean forecast over the top quintile of current RV exceeds the
     bottom quintile's) — a constant or inverted model fails here whatever its loss; and
  2. beats the champion on the same most recent holdout on QLIKE by at least `margin` (relative).
With no champion yet, passing the probes is enough (the caller offers the best baseline first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

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
    challenger_qlike: float
    champion_qlike: float | None
    relative_improvement: float | None
    margin: float
    probes: ProbeResult

    def to_tags(self) -> dict[str, str]:
        """Flat string tags for an MLflow model version (and Dagster metadata)."""
        tags = {
            "promotion.decision": "promoted" if self.promote else "rejected",
            "promotion.reason": self.reason,
            "promotion.challenger_qlike": f"{self.challenger_qlike:.6g}",
            "promotion.margin": f"{self.margin:.4g}",
        }
        if self.champion_qlike is not None:
            tags["promotion.champion_qlike"] = f"{self.champion_qlike:.6g}"
        if self.relative_improvement is not None:
            tags["promotion.relative_improvement"] = f"{self.relative_improvement:.4g}"
        for key, value in asdict(self.probes).items():
            tags[f"promotion.probe.{key}"] = str(value)
        return tags


def decide_promotion(
    challenger_qlike: float,
    champion_qlike: float | None,
    probes: ProbeResult,
    margin: float = 0.0,
) -> PromotionDecision:
    """Promote only a challenger that passes the probes and beats the champion by `margin` on QLIKE."""
    if margin < 0:
        raise ValueError("margin must be ≥ 0")
    if not np.isfinite(challenger_qlike):
        return PromotionDecision(
            False, "challenger QLIKE is not finite", challenger_qlike, champion_qlike, None, margin, probes
        )
    if not probes.passed:
        reason = "sanity probes failed: " + "; ".join(probes.failures())
        return PromotionDecision(False, reason, challenger_qlike, champion_qlike, None, margin, probes)
    if champion_qlike is None:
        return PromotionDecision(
            True, "no champion yet; probes passed", challenger_qlike, None, None, margin, probes
        )
    improvement = (champion_qlike - challenger_qlike) / champion_qlike if champion_qlike > 0 else 0.0
    if improvement > margin:
        reason = f"QLIKE {challenger_qlike:.5g} beats champion {champion_qlike:.5g} by {improvement:.2%}"
        return PromotionDecision(True, reason, challenger_qlike, champion_qlike, improvement, margin, probes)
    reason = (
        f"QLIKE {challenger_qlike:.5g} does not beat champion {champion_qlike:.5g} "
        f"by more than the {margin:.2%} margin (improvement {improvement:.2%})"
    )
    return PromotionDecision(False, reason, challenger_qlike, champion_qlike, improvement, margin, probes)
