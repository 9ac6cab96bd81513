"""Where promotion happens: when a challenger may replace the champion, and moving the alias in MLflow.

The rules (pure, first half of this module). The registry must always hold a servable champion, and the
LSTM serves only when it is the best forecaster the platform has. So a challenger is promoted only if it
  1. passes sanity probes on the holdout: every forecast finite and positive, and forecasts rise with
     recent realized volatility (the mean forecast over the top quintile of current RV exceeds the
     bottom quintile's) — a constant or inverted model fails here whatever its loss; and
  2. beats the champion on the same most recent holdout on QLIKE by at least `margin` (relative).
With no champion yet, passing the probes is enough (the caller offers the best baseline first).

The registry action (`promote`, second half): loads the holdout a training run stored (`holdout.py`),
re-scores the challenger, the champion and the run's refitted baseline on the same windows, applies the
rules, writes the decision onto the version's tags and moves the `champion` alias.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from crypto_platform.lib.model import registry
from crypto_platform.lib.model.holdout import (
    Holdout,
    load_holdout,
    predict_uri,
    safe_qlike,
    version_family,
    version_feature_columns,
)
from crypto_platform.lib.model.tags import (
    CANDIDATE_BASELINE_TAG,
    CANDIDATE_BASELINE_URI_TAG,
    FAMILY_TAG,
    FEATURES_TAG,
    LSTM_FAMILY,
    TRAINING_RUN_TAG,
    baseline_family,
)
from crypto_platform.lib.model.tracking import DATA_WINDOW_TAGS
from crypto_platform.lib.model.training import LABEL_COLUMN, select_columns
from crypto_platform.lib.model.windows import WindowSet

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


# --------------------------------------------------------------------------------------------------
# The registry action: score on the run's holdout, decide, tag, move the alias.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionOutcome:
    decision: PromotionDecision
    challenger_version: str
    challenger_family: str
    champion_before: str | None
    champion_after: str
    bootstrapped_version: str | None  # the baseline made first champion, if there was none
    rejected_lstm_version: str | None  # the LSTM challenger a refitted baseline beat on the holdout
    holdout_run_id: str
    n_holdout: int
    holdout_qlike: dict[str, float]  # challenger, champion (before) and every baseline of the run
    champion_qlike: float
    baselines_not_beaten: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.decision.promote

    @property
    def champion_beats_baselines(self) -> bool:
        return not self.baselines_not_beaten

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["decision"] = self.decision.to_tags()
        out["promoted"] = self.promoted
        out["holdout_qlike"] = {k: (v if math.isfinite(v) else None) for k, v in self.holdout_qlike.items()}
        return out


class NoChallengerError(LookupError):
    pass


def _find_or_register_baseline(
    client: MlflowClient, holdout: Holdout, run: Any, model_name: str
) -> ModelVersion:
    """The run's candidate baseline as a registered version (registered once per training run)."""
    name = run.data.tags[CANDIDATE_BASELINE_TAG]
    family = baseline_family(name)
    for mv in client.search_model_versions(f"name='{model_name}' and run_id='{holdout.run_id}'"):
        if version_family(mv) == family:
            return mv
    tags = {key: run.data.tags[key] for key in DATA_WINDOW_TAGS if key in run.data.tags}
    tags.update(
        {
            FAMILY_TAG: family,
            FEATURES_TAG: json.dumps(holdout.feature_columns),
            TRAINING_RUN_TAG: holdout.run_id,
        }
    )
    uri = run.data.tags[CANDIDATE_BASELINE_URI_TAG]
    return registry.register_version(
        client,
        uri,
        holdout.run_id,
        tags,
        model_name=model_name,
        description=f"Baseline {name}, fitted on the training block of run {holdout.run_id}",
    )


def promote(
    client: MlflowClient,
    holdout_run_id: str,
    margin: float,
    model_name: str = registry.MODEL_NAME,
    consider_baseline: bool = True,
) -> PromotionOutcome:
    """Decide whether the `challenger` version replaces the `champion`, on the holdout of `holdout_run_id`.

    1. With `consider_baseline`, the run's refitted best servable baseline takes the challenger's place
       when its holdout QLIKE is at least as good as an LSTM challenger's (the LSTM version is tagged
       rejected with that reason).
    2. No champion yet: the baseline (or, for a run without one, the challenger) becomes champion if it
       passes the probes — the registry must always hold a servable champion.
    3. The champion is loaded from the registry and re-scored on the same holdout windows; the
       challenger replaces it only if it passes `sanity_probes` and beats it on QLIKE by `margin`.
    The decision goes onto the challenger version's tags; the champion alias moves only on promotion.
    """
    holdout = load_holdout(holdout_run_id)
    run = client.get_run(holdout_run_id)
    challenger = registry.alias_version(client, registry.CHALLENGER, model_name)
    if challenger is None:
        raise NoChallengerError(f"{model_name} has no `{registry.CHALLENGER}` version: train a model first")
    champion = registry.alias_version(client, registry.CHAMPION, model_name)
    champion_before = str(champion.version) if champion else None

    # One set of windows over every column any model needs, so all are scored on the same samples.
    needed = [*holdout.feature_columns, LABEL_COLUMN]
    for mv in (challenger, champion):
        if mv is not None:
            needed += version_feature_columns(mv, holdout.feature_columns)
    missing = [c for c in dict.fromkeys(needed) if c not in holdout.features.columns]
    usable = [c for c in dict.fromkeys(needed) if c in holdout.features.columns]
    base = holdout.windows(usable)
    recent_vol = base.last(LABEL_COLUMN)
    y = base.y

    def forecasts_of(mv: ModelVersion) -> np.ndarray | None:
        cols = version_feature_columns(mv, holdout.feature_columns)
        if any(c in missing for c in cols):
            return None
        return predict_uri(f"models:/{model_name}/{mv.version}", select_columns(base, cols))

    challenger_f = forecasts_of(challenger)
    if challenger_f is None:
        raise ValueError(f"challenger v{challenger.version} needs features {missing} this holdout lacks")
    scores = {"challenger": safe_qlike(y, challenger_f)}
    rejected_lstm: str | None = None

    has_baseline = CANDIDATE_BASELINE_URI_TAG in run.data.tags
    if consider_baseline and has_baseline and version_family(challenger) == LSTM_FAMILY:
        baseline_f = predict_uri(
            run.data.tags[CANDIDATE_BASELINE_URI_TAG], select_columns(base, holdout.feature_columns)
        )
        baseline_q = safe_qlike(y, baseline_f)
        scores[f"candidate_{run.data.tags[CANDIDATE_BASELINE_TAG]}"] = baseline_q
        if baseline_q <= scores["challenger"]:
            baseline_mv = _find_or_register_baseline(client, holdout, run, model_name)
            reason = (
                f"the refitted baseline {run.data.tags[CANDIDATE_BASELINE_TAG]} has a holdout QLIKE "
                f"{baseline_q:.5g} ≤ the LSTM's {scores['challenger']:.5g}; it is the challenger instead"
            )
            registry.tag_version(
                client,
                challenger.version,
                {
                    "promotion.decision": "rejected",
                    "promotion.reason": reason,
                    "promotion.holdout_run_id": holdout_run_id,
                },
                model_name,
            )
            rejected_lstm = str(challenger.version)
            registry.move_alias(client, registry.CHALLENGER, baseline_mv.version, model_name)
            challenger, challenger_f = baseline_mv, baseline_f
            scores["challenger"] = baseline_q

    bootstrapped: str | None = None
    if champion is None:
        first = _find_or_register_baseline(client, holdout, run, model_name) if has_baseline else challenger
        first_f = challenger_f if first.version == challenger.version else forecasts_of(first)
        assert first_f is not None  # the run's own baseline reads the run's own feature columns
        first_q = safe_qlike(y, first_f)
        boot = decide_promotion(first_q, None, sanity_probes(first_f, recent_vol), margin)
        boot = dataclasses.replace(
            boot, reason=f"first champion: {version_family(first)}, the best servable baseline; {boot.reason}"
        )
        registry.tag_version(
            client, first.version, {**boot.to_tags(), "promotion.holdout_run_id": holdout_run_id}, model_name
        )
        if not boot.promote:
            raise RuntimeError(f"no servable champion: the bootstrap candidate failed ({boot.reason})")
        registry.move_alias(client, registry.CHAMPION, first.version, model_name)
        champion, bootstrapped = first, str(first.version)
        if first.version == challenger.version:
            return _finish(
                client,
                holdout,
                base,
                boot,
                challenger,
                champion_before,
                champion,
                bootstrapped,
                rejected_lstm,
                {**scores, "champion": first_q},
                challenger_f,
                model_name,
            )

    assert champion is not None
    probes = sanity_probes(challenger_f, recent_vol)
    if champion.version == challenger.version:
        decision = dataclasses.replace(
            decide_promotion(scores["challenger"], scores["challenger"], probes, margin),
            promote=False,
            reason="the challenger is already the champion",
        )
        champion_f = challenger_f
    else:
        champion_f = forecasts_of(champion)
        if champion_f is None:
            # The champion reads features this holdout no longer has: it cannot be compared, only replaced.
            decision = dataclasses.replace(
                decide_promotion(scores["challenger"], None, probes, margin),
                reason=f"champion v{champion.version} needs features {missing} the current holdout lacks; "
                "the challenger replaces it if it passes the probes",
            )
        else:
            scores["champion"] = safe_qlike(y, champion_f)
            champion_q = scores["champion"] if math.isfinite(scores["champion"]) else None
            decision = decide_promotion(scores["challenger"], champion_q, probes, margin)
    registry.tag_version(
        client,
        challenger.version,
        {
            **decision.to_tags(),
            "promotion.champion_version": str(champion.version),
            "promotion.holdout_run_id": holdout_run_id,
            "promotion.n_holdout": str(len(base)),
            "promotion.decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        model_name,
    )
    if decision.promote:
        registry.move_alias(client, registry.CHAMPION, challenger.version, model_name)
        champion, champion_f = challenger, challenger_f
    assert champion_f is not None
    return _finish(
        client,
        holdout,
        base,
        decision,
        challenger,
        champion_before,
        champion,
        bootstrapped,
        rejected_lstm,
        scores,
        champion_f,
        model_name,
    )


def is_own_family(version: ModelVersion, baseline_name: str) -> bool:
    """True when `version` is the baseline `baseline_name` itself (family tag `baseline:<name>`)."""
    return version_family(version) == baseline_family(baseline_name)


def _finish(
    client: MlflowClient,
    holdout: Holdout,
    base: WindowSet,
    decision: PromotionDecision,
    challenger: ModelVersion,
    champion_before: str | None,
    champion: ModelVersion,
    bootstrapped: str | None,
    rejected_lstm: str | None,
    scores: dict[str, float],
    champion_f: np.ndarray,
    model_name: str,
) -> PromotionOutcome:
    """Score the (new) champion against every baseline of the run on the holdout windows."""
    keys = pl.DataFrame({"ts": base.ts, "symbol": base.symbol.astype(str), "champion": champion_f})
    joined = keys.join(holdout.forecasts, on=["ts", "symbol"], how="left")
    baselines = holdout.baseline_forecasts()
    cols = [f"forecast_{n}" for n in baselines]
    complete = joined.drop_nulls(cols) if cols else joined
    realized = complete["realized_vol"].to_numpy()
    champion_q = safe_qlike(realized, complete["champion"].to_numpy())
    not_beaten = []
    for name in baselines:
        q = safe_qlike(realized, complete[f"forecast_{name}"].to_numpy())
        scores[f"baseline_{name}"] = q
        # A baseline champion is not judged against its own family: on the run that fitted it the two
        # forecasts are the same numbers, and "the champion does not beat ewma" would be about itself.
        if not champion_q < q and not is_own_family(champion, name):
            not_beaten.append(name)
    registry.tag_version(
        client, champion.version, {"champion_beats_baselines": str(not not_beaten)}, model_name
    )
    return PromotionOutcome(
        decision=decision,
        challenger_version=str(challenger.version),
        challenger_family=version_family(challenger),
        champion_before=champion_before,
        champion_after=str(champion.version),
        bootstrapped_version=bootstrapped,
        rejected_lstm_version=rejected_lstm,
        holdout_run_id=holdout.run_id,
        n_holdout=len(base),
        holdout_qlike=scores,
        champion_qlike=champion_q,
        baselines_not_beaten=not_beaten,
    )
