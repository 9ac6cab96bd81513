"""How a training run and a promotion decision are described to people: plots, markdown, headline numbers.

The `trained_model` and `model_promotion` assets show these as Dagster metadata; the plots are also
logged to the MLflow run (`tracking.log_training`) and stored in the data location. Pure: the figures
are PNG bytes, the caller writes them wherever they go.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from crypto_platform.lib.model.promotion import PromotionOutcome
from crypto_platform.lib.model.tracking import LoggedTraining
from crypto_platform.lib.model.training import (
    LSTM_NAME,
    TrainingResult,
    forecast_plot_png,
    loss_curve_png,
)

# Artifact paths of the figures inside the MLflow run (and their file names in the data location).
PLOT_FORECAST = "plots/forecast_vs_realized.png"
PLOT_LOSS = "plots/loss_curves.png"


def finite(value: float | None) -> float | None:
    """`value` as a float, or None for a missing or non-finite one (JSON metadata has no NaN/inf)."""
    return float(value) if value is not None and math.isfinite(value) else None


def inline_png(png: bytes, alt: str) -> str:
    """Markdown image with the PNG inlined, so the Dagster UI shows it without reaching the store."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def training_figures(result: TrainingResult) -> dict[str, bytes]:
    """The run's figures by artifact path: forecast vs realized on the holdout, and the LSTM loss curves."""
    trained = result.lstm.trained
    if trained is None:
        raise RuntimeError("the LSTM of this result was never trained")
    return {
        PLOT_FORECAST: forecast_plot_png(result),
        PLOT_LOSS: loss_curve_png(trained.history, trained.best_epoch),
    }


def training_plot_key(run_id: str, artifact_path: str) -> str:
    """Key of a training run's figure in the data location: `ml/runs/<run id>/<file name>`."""
    return f"ml/runs/{run_id}/{Path(artifact_path).name}"


def holdout_headline(result: TrainingResult) -> dict[str, str | float | None]:
    """The LSTM against the best baseline on the holdout (QLIKE; None where it is not finite)."""
    table = result.evaluation
    lstm_q = table.row(LSTM_NAME).qlike
    best = table.best_baseline
    best_q = table.row(best).qlike if best else math.nan
    return {
        "best_baseline": best or "none",
        "lstm_holdout_qlike": finite(lstm_q),
        "best_baseline_holdout_qlike": finite(best_q),
        "lstm_vs_best_baseline": finite((best_q - lstm_q) / best_q) if best else None,
    }


def training_markdown(
    result: TrainingResult,
    logged: LoggedTraining,
    model_name: str,
    figures: Mapping[str, bytes],
    plot_uris: Mapping[str, str],
) -> str:
    """Run and registered version, the holdout evaluation table, both figures (inlined, with their URI)."""
    holdout_start = datetime.fromtimestamp(result.split.boundaries[1] / 1000, UTC)
    return "\n\n".join(
        [
            f"**MLflow run** `{logged.run_id}` · registered `{model_name}` v{logged.lstm_version} "
            f"(alias `challenger`) · holdout {len(result.holdout)} windows from "
            f"{holdout_start:%Y-%m-%d %H:%M} UTC",
            result.evaluation.to_markdown(),
            f"Forecast vs realized ({plot_uris[PLOT_FORECAST]}):\n\n"
            + inline_png(figures[PLOT_FORECAST], "forecast"),
            f"Loss curves ({plot_uris[PLOT_LOSS]}):\n\n" + inline_png(figures[PLOT_LOSS], "loss"),
        ]
    )


def promotion_scores(outcome: PromotionOutcome) -> dict[str, float | None]:
    """Holdout QLIKE of every model the decision compared (None where it is not finite)."""
    return {name: finite(value) for name, value in outcome.holdout_qlike.items()}


def promotion_markdown(outcome: PromotionOutcome, champion_family: str, margin: float) -> str:
    """The decision and its reason, who was champion before and after, and the QLIKE table."""
    decision = outcome.decision
    rows = "\n".join(
        f"| {k} | {'—' if v is None else f'{v:.5f}'} |" for k, v in promotion_scores(outcome).items()
    )
    return (
        f"**Decision:** {'promoted' if decision.promote else 'rejected'} — {decision.reason}\n\n"
        f"Challenger v{outcome.challenger_version} ({outcome.challenger_family}); champion before: "
        f"{outcome.champion_before or 'none'}; champion now: v{outcome.champion_after} "
        f"({champion_family})"
        + (f"; bootstrapped v{outcome.bootstrapped_version}" if outcome.bootstrapped_version else "")
        + f"\n\nHoldout of run `{outcome.holdout_run_id}`, {outcome.n_holdout} windows, "
        f"margin {margin:.2%}.\n\n"
        "| forecaster | holdout QLIKE |\n|---|---:|\n" + rows
    )
