"""How a training run and a promotion decision are described to people: markdown and headline numbers.

The `trained_model` and `model_promotion` assets show these as Dagster metadata (the training run's
own description is the model card, `model_card.py`). Pure: PNG bytes in, text out; the caller writes
figures wherever they go.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

from crypto_platform.lib.model.promotion import PromotionOutcome


def finite(value: float | None) -> float | None:
    """`value` as a float, or None for a missing or non-finite one (JSON metadata has no NaN/inf)."""
    return float(value) if value is not None and math.isfinite(value) else None


def inline_png(png: bytes, alt: str) -> str:
    """Markdown image with the PNG inlined, so the Dagster UI shows it without reaching the store."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def training_plot_key(run_id: str, artifact_path: str) -> str:
    """Key of a training run's figure in the data location: `ml/runs/<run id>/<file name>`."""
    return f"ml/runs/{run_id}/{Path(artifact_path).name}"


def promotion_scores(outcome: PromotionOutcome) -> dict[str, float | None]:
    """Pooled out-of-sample QLIKE of every candidate the decision read (None where it is not finite)."""
    return {name: finite(value) for name, value in outcome.pooled_qlike.items()}


def promotion_markdown(outcome: PromotionOutcome, champion_family: str, margin: float) -> str:
    """The decision and its reason, who was champion before and after, the gate verdicts, the QLIKEs."""
    decision = outcome.decision
    rows = "\n".join(
        f"| {k} | {'—' if v is None else f'{v:.5f}'} |" for k, v in promotion_scores(outcome).items()
    )
    verdicts = "\n".join(
        f"| {ref} | {'passed' if v['passed'] else 'failed'} | {v['improvement']:+.2%} | {v['folds_won']} | "
        f"{'; '.join(v['reasons']) or '—'} |"
        for ref, v in decision.verdicts.items()
    )
    gate = (
        f"\n\nGate of {decision.challenger} against each reference:\n\n"
        "| reference | verdict | pooled QLIKE vs it | folds won | why not |\n|---|---|---:|---:|---|\n"
        + verdicts
        if verdicts
        else ""
    )
    return (
        f"**Decision:** {'promoted' if decision.promote else 'rejected'} — {decision.reason}\n\n"
        f"Challenger v{outcome.challenger_version} ({outcome.challenger_family}); champion before: "
        f"{outcome.champion_before or 'none'}; champion now: v{outcome.champion_after} "
        f"({champion_family})"
        + (f"; first champion v{outcome.bootstrapped_version}" if outcome.bootstrapped_version else "")
        + f"\n\nWalk-forward evidence of run `{outcome.evidence_run_id}`, {outcome.n_windows} out-of-sample "
        f"windows, margin {margin:.2%}." + gate + "\n\n| candidate | pooled QLIKE |\n|---|---:|\n" + rows
    )
