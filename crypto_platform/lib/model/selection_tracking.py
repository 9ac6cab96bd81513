"""Logging a model selection (`selection.select_and_fit`) to MLflow and registering its champion.

What a training run holds after `log_selection` (the caller owns the active run; the artifact paths
below are the contract with `promotion.promote` and `holdout.load_reference`):
- nested runs, one per HAR+ tuning trial (`trial_logger`), with the trial's params and QLIKE;
- params (selection settings, the tuned HAR+ configuration), metrics (pooled QLIKE of every
  candidate, per-fold QLIKE, DM p vs HAR, interval coverage) and tags (data window, fingerprint);
- `evaluation/holdout.json`: the pooled out-of-sample table (the format the API's evidence reads);
- `walk_forward.json` (`WalkForwardResult.summary()` + the gate's decision + the chosen configuration)
  and `walk_forward/out_of_sample.parquet` (`walk_forward_evidence.evidence_frame`: the pooled
  out-of-sample forecasts of every candidate, from which promotion re-runs the gate on the same folds);
- `model_card.md` and `mincer_zarnowitz.png` (`model_card`);
- `reference/features.parquet`, the drift reference (the stored feature rows trained on);
- `selection/champion_forecasts.parquet`: the refitted champion's in-memory forecasts of every
  window, so a test can check the registered model reproduces them as serving runs it;
- the champion's model, registered as a version of `crypto-volatility` with alias `challenger`.

Packaging: a window-only baseline (naive, EWMA, HAR) keeps the window-array contract
(`baseline_serving.ServableBaseline` on MODEL_FEATURES); every other candidate — HAR+, its residual,
the combination, GARCH and the expanding mean (per-symbol state) — speaks the feature-frame contract
(`FrameForecaster.from_fitted`, `packaging.log_frame_forecaster`, with a `LogResidualDispersion`
fitted on the refit's validation residuals). Every version carries `input_contract`.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
from mlflow import MlflowClient

from crypto_platform.lib.features import MODEL_FEATURES
from crypto_platform.lib.model import registry
from crypto_platform.lib.model.baseline_serving import CLASS_PATH as BASELINE_CLASS
from crypto_platform.lib.model.baseline_serving import SERVABLE_BASELINES, ServableBaseline
from crypto_platform.lib.model.baselines import BASELINES
from crypto_platform.lib.model.frame_serving import (
    FRAME_CONTRACT,
    INPUT_CONTRACT_TAG,
    WINDOW_CONTRACT,
    FrameForecaster,
)
from crypto_platform.lib.model.model_card import (
    CARD_ARTIFACT,
    MZ_PLOT_ARTIFACT,
    mincer_zarnowitz_png,
    version_description,
)
from crypto_platform.lib.model.model_card import model_card_markdown as card_markdown
from crypto_platform.lib.model.packaging import log_forecaster, log_frame_forecaster
from crypto_platform.lib.model.selection import SelectionResult
from crypto_platform.lib.model.tags import (
    CANDIDATE_TAG,
    FAMILY_TAG,
    FEATURES_TAG,
    TRAINING_RUN_TAG,
    baseline_family,
)
from crypto_platform.lib.model.tracking import EVALUATION_JSON, REFERENCE_FEATURES, DataWindow
from crypto_platform.lib.model.training import LABEL_COLUMN, reference_features, select_columns
from crypto_platform.lib.model.tuning import TrialRecord
from crypto_platform.lib.model.walk_forward_evidence import (
    EVIDENCE_PARQUET,
    WALK_FORWARD_JSON,
    evidence_frame,
)

MODEL_ARTIFACT = "model"
CHAMPION_FORECASTS = "selection/champion_forecasts.parquet"
TRIAL_RUN_TAG = "tuning_trial"
EXAMPLE_ROWS_PER_SYMBOL = 30  # ≥ the residual's 24-bar sequence, so the example is scorable


def family_of(candidate: str) -> str:
    """The version's `model_family` tag: `baseline:<name>` for a baseline, else the candidate name."""
    return baseline_family(candidate) if candidate in BASELINES else candidate


def trial_logger(parent_run_id: str | None = None) -> Callable[[TrialRecord], None]:
    """`on_trial` for `tune_har_plus`: each trial a nested run of the ACTIVE run (params + QLIKE)."""

    def log(trial: TrialRecord) -> None:
        with mlflow.start_run(run_name=f"har_plus-trial-{trial.number}", nested=True):
            mlflow.set_tags(
                {TRIAL_RUN_TAG: str(trial.number), **({"parent_run": parent_run_id} if parent_run_id else {})}
            )
            mlflow.log_params({k: str(v) if isinstance(v, bool) else v for k, v in trial.params.items()})
            metrics = {"trial_seconds": trial.seconds}
            if math.isfinite(trial.pooled_qlike):
                metrics["tuning_pooled_qlike"] = trial.pooled_qlike
            metrics.update({f"tuning_fold_{k}_qlike": q for k, q in enumerate(trial.fold_qlike)})
            mlflow.log_metrics(metrics)
            if trial.error:
                mlflow.set_tag("trial_error", trial.error[:500])

    return log


@dataclass(frozen=True)
class LoggedSelection:
    run_id: str
    version: str
    model_uri: str
    champion: str
    input_contract: str
    model_card: str
    mz_png: bytes
    summary: dict[str, Any]


def _log_bytes(data: bytes, artifact_path: str) -> None:
    directory, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=directory or None)


def _log_parquet(frame: pl.DataFrame, artifact_path: str) -> None:
    directory, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.write_parquet(path, compression="zstd")
        mlflow.log_artifact(str(path), artifact_path=directory or None)


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def selection_metrics(selection: SelectionResult) -> dict[str, float]:
    """Flat run metrics: pooled / per-fold QLIKE and DM p vs HAR per candidate, interval coverage."""
    result = selection.walk_forward
    out: dict[str, float] = {}
    for name in result.names:
        out[f"wf_pooled_qlike_{name}"] = result.table.row(name).qlike
        out.update({f"wf_fold_{k}_qlike_{name}": q for k, q in enumerate(result.fold_qlike(name))})
        dm = result.dm_vs_reference.get(name)
        if dm is not None:
            out[f"wf_dm_pvalue_vs_har_{name}"] = dm.pvalue
    for name, report in result.interval_report().items():
        out.update({f"wf_{k}_{name}": v for k, v in report.items() if isinstance(v, float)})
    out["tuning_best_pooled_qlike"] = selection.tuning.best.pooled_qlike
    out["windows"] = float(len(selection.windows))
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def walk_forward_payload(selection: SelectionResult) -> dict[str, Any]:
    """`walk_forward.json`: the result's summary, the gate's decision, DM p vs HAR, the configuration."""
    result = selection.walk_forward
    return {
        **result.summary(),
        "best_baseline": result.table.best_baseline,
        "gate": selection.decision.to_dict(),
        "champion": selection.champion,
        "configuration": selection.configuration(),
        "interval_report": result.interval_report(),
        "hac_lag": result.table.hac_lag,
    }


def _package(selection: SelectionResult) -> tuple[Any, str, list[str]]:
    """(logged model info, input contract, feature columns) of the champion, logged to the active run."""
    name, model, windows = selection.champion, selection.model, selection.windows
    if name in SERVABLE_BASELINES:
        # A window-only baseline keeps the window contract: explanations (occlusion) and older serving
        # builds read it, and it needs nothing a window lacks.
        served = select_columns(windows, MODEL_FEATURES)
        info = log_forecaster(
            ServableBaseline.from_fitted(model, served),
            name=MODEL_ARTIFACT,
            input_example=served.X[-5:],
            forecaster_class=BASELINE_CLASS,
        )
        return info, WINDOW_CONTRACT, list(MODEL_FEATURES)
    # Everything else (HAR+, its residual, the combination, GARCH and the expanding mean with their
    # per-symbol state) needs the symbol and time a window lacks: the feature-frame contract. A model it
    # cannot package (the plain LSTM) raises ValueError: never a silent substitute.
    forecaster = FrameForecaster.from_fitted(
        name, model, windows.feature_columns, selection.dispersion, selection.spec.timeframe
    )
    frame = selection.feature_frame.sort("symbol", "ts")
    rows = max(EXAMPLE_ROWS_PER_SYMBOL, forecaster.sequence_length + 6)  # EWMA / GARCH read 48 bars
    example = frame.group_by("symbol", maintain_order=True).tail(rows)
    info = log_frame_forecaster(forecaster, MODEL_ARTIFACT, example.to_pandas())
    return info, FRAME_CONTRACT, list(forecaster.feature_columns)


def _champion_forecasts(selection: SelectionResult) -> pl.DataFrame:
    w = selection.windows
    return pl.DataFrame(
        {
            "symbol": w.symbol.astype(str),
            "ts": w.ts.astype(np.int64),
            "forecast": np.asarray(selection.model.predict(w), dtype=np.float64),
        }
    )


def log_selection(
    selection: SelectionResult,
    features: pl.DataFrame,
    window: DataWindow,
    client: MlflowClient,
    model_name: str = registry.MODEL_NAME,
    source: str = "exchange",
) -> LoggedSelection:
    """Log `selection` to the ACTIVE run and register its champion as `challenger` (module docstring)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_selection needs an active MLflow run")
    run_id = run.info.run_id
    result, decision = selection.walk_forward, selection.decision
    champion = selection.champion
    payload = walk_forward_payload(selection)

    mlflow.set_tags(
        {**window.tags(), "gate_winner": champion, "best_baseline": result.table.best_baseline or ""}
    )
    mlflow.log_params(
        {
            **selection.spec.to_params(),
            **{
                f"har_plus_{k}": json.dumps(v) if isinstance(v, list) else v
                for k, v in selection.har_plus_config.to_dict().items()
            },
            "candidates": ",".join(result.names),
            "training_days_start": window.start,
            "training_days_end": window.end,
        }
    )
    mlflow.log_metrics(selection_metrics(selection))
    mlflow.log_dict(payload, WALK_FORWARD_JSON)
    # The pooled out-of-sample table in the evaluation artifact's format, which the API's evidence
    # endpoint reads from the champion's run.
    mlflow.log_dict(
        {
            "primary": result.table.primary,
            "best_baseline": result.table.best_baseline,
            "hac_lag": result.table.hac_lag,
            "scope": f"walk-forward, {len(result.folds)} purged folds, pooled out of sample",
            "rows": result.table.to_records(),
        },
        EVALUATION_JSON,
    )
    recent = result.y * np.nan
    if LABEL_COLUMN in selection.windows.feature_columns:
        keys = pl.DataFrame(
            {
                "symbol": selection.windows.symbol.astype(str),
                "ts": selection.windows.ts.astype(np.int64),
                "recent": selection.windows.last(LABEL_COLUMN),
            }
        )
        pooled = pl.DataFrame({"symbol": result.symbol.astype(str), "ts": result.ts.astype(np.int64)})
        recent = pooled.join(keys, on=["symbol", "ts"], how="left", maintain_order="left")[
            "recent"
        ].to_numpy()
    _log_parquet(evidence_frame(result, recent), EVIDENCE_PARQUET)
    _log_parquet(_champion_forecasts(selection), CHAMPION_FORECASTS)
    _log_parquet(
        reference_features(features, int(features["ts"].max()) + 1, MODEL_FEATURES), REFERENCE_FEATURES
    )

    mz_png = mincer_zarnowitz_png(result, list(dict.fromkeys([result.reference, champion])))
    _log_bytes(mz_png, MZ_PLOT_ARTIFACT)
    info, contract, columns = _package(selection)

    verdict = next((v for v in decision.verdicts if v.name == champion), None)
    dm = result.dm_vs_reference.get(champion)
    version_tags = {
        **window.tags(),
        FAMILY_TAG: family_of(champion),
        CANDIDATE_TAG: champion,
        INPUT_CONTRACT_TAG: contract,
        FEATURES_TAG: json.dumps(columns),
        TRAINING_RUN_TAG: run_id,
        "har_plus_config": json.dumps(selection.har_plus_config.to_dict()),
        "residual_config": json.dumps(selection.spec.residual.to_dict()),
        "pooled_qlike": json.dumps({n: _finite(result.table.row(n).qlike) for n in result.names}),
        "fold_qlike": json.dumps({n: [_finite(q) for q in result.fold_qlike(n)] for n in result.names}),
        "dm_pvalue_vs_har": json.dumps(
            {n: _finite(d.pvalue) for n, d in result.dm_vs_reference.items() if n != result.reference}
        ),
        "gate_reason": _gate_reason(selection, verdict is not None and verdict.passed, dm),
    }
    version = registry.register_version(
        client,
        info.model_uri,
        run_id,
        version_tags,
        model_name=model_name,
        description=f"{champion}: the walk-forward gate's choice (model card follows)",
        model_id=getattr(info, "model_id", None),
    )
    card = card_markdown(
        result, decision, model_name, str(version.version), _card_configuration(selection), source
    )
    mlflow.log_text(card, CARD_ARTIFACT)
    client.update_model_version(model_name, str(version.version), description=version_description(card))
    registry.move_alias(client, registry.CHALLENGER, version.version, model_name)
    return LoggedSelection(
        run_id=run_id,
        version=str(version.version),
        model_uri=info.model_uri,
        champion=champion,
        input_contract=contract,
        model_card=card,
        mz_png=mz_png,
        summary=payload,
    )


def _card_configuration(selection: SelectionResult) -> dict[str, Any]:
    config = selection.configuration()
    return {
        "champion": config["champion"],
        "har_plus (tuned)": json.dumps(config["har_plus"]),
        "tuning": json.dumps(config["tuning"]),
        "residual": json.dumps(config["residual"]),
        "folds": config["folds"],
        "gate margin vs har": config["gate_margin"],
        "challengers considered": ", ".join(config["candidates"])
        if isinstance(config["candidates"], list)
        else config["candidates"],
    }


def _gate_reason(selection: SelectionResult, passed: bool, dm: Any) -> str:
    decision = selection.decision
    if not passed:
        return f"no challenger passed the gate against {decision.reference}: {decision.reference} stays"
    verdict = next(v for v in decision.verdicts if v.name == decision.champion)
    return (
        f"{decision.champion}: pooled QLIKE {verdict.improvement:+.2%} vs {decision.reference}, DM p "
        f"{dm.pvalue:.3g}, won {verdict.folds_won} of {len(selection.walk_forward.folds)} folds"
    )
