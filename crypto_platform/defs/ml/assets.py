"""The `ml` asset group: trained_model → model_promotion → feature_drift.

None of them is partitioned: each reads a window of the partitioned `features` asset straight from the
data location (lib.storage), which is what the API will read too, instead of loading hundreds of
partitions through the IO manager. Models and their evaluation live in MLflow; the assets return
`MaterializeResult`s whose metadata is what sensors, checks and the report read back.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` / `config` annotations.
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import mlflow
import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from crypto_platform.defs.market.partitions import market_partition_key
from crypto_platform.defs.ml.checks import describe_failures, failed_blocking_checks
from crypto_platform.defs.ml.config import GROUP, DriftConfig, PromotionConfig, TrainingConfig
from crypto_platform.lib.drift import detect_drift
from crypto_platform.lib.model import registry
from crypto_platform.lib.model.holdout import load_reference, version_family
from crypto_platform.lib.model.model_card import MZ_PLOT_ARTIFACT
from crypto_platform.lib.model.promotion import promote
from crypto_platform.lib.model.report import (
    finite,
    inline_png,
    promotion_markdown,
    promotion_scores,
    training_plot_key,
)
from crypto_platform.lib.model.selection import select_and_fit
from crypto_platform.lib.model.selection_tracking import family_of, log_selection, trial_logger
from crypto_platform.lib.model.tags import TRAINING_RUN_TAG
from crypto_platform.lib.model.tracking import (
    DataWindow,
    code_version,
    log_training_request,
    recorded_margin,
    window_fingerprint,
)
from crypto_platform.lib.model.training import LABEL_COLUMN, InsufficientDataError
from crypto_platform.lib.model.walk_forward import FoldResult
from crypto_platform.lib.storage import (
    DAY_MS,
    FEATURES_ASSET,
    ObjectStore,
    day_start_ms,
    drift_report_key,
    read_partitioned,
)

FEATURES_KEY = AssetKey("features")
MAX_MISSING_LISTED = 10


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _day_window(end_date: str | None, days: int) -> tuple[date, date]:
    last = date.fromisoformat(end_date) if end_date else datetime.now(UTC).date()
    return last - timedelta(days=days - 1), last


def load_feature_window(
    store: ObjectStore, symbols: list[str], first: date, last: date
) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """Stored `features` rows of the symbols for UTC days first … last, and the days with no file."""
    frames, missing = [], {}
    for symbol in symbols:
        frame, absent = read_partitioned(
            store, FEATURES_ASSET, symbol, day_start_ms(first), day_start_ms(last) + DAY_MS
        )
        if absent:
            missing[symbol] = absent
        if frame is not None and frame.height:
            if "symbol" not in frame.columns:
                frame = frame.with_columns(pl.lit(symbol).alias("symbol"))
            frames.append(frame)
    if not frames:
        return pl.DataFrame(), missing
    return pl.concat(frames, how="diagonal_relaxed").sort("symbol", "ts"), missing


def _bar_source(features: pl.DataFrame) -> str:
    """Where the stored bars came from (the ohlcv asset's `source` column: exchange or simulated)."""
    if "source" not in features.columns:
        return "source not recorded"
    return ", ".join(sorted(str(s) for s in features["source"].drop_nulls().unique().to_list())) or "unknown"


def _missing_summary(missing: dict[str, list[str]]) -> dict[str, Any]:
    return {
        symbol: {"days": len(days), "first": days[0], "last": days[-1], "listed": days[:MAX_MISSING_LISTED]}
        for symbol, days in missing.items()
    }


# --------------------------------------------------------------------------------------------------
# trained_model
# --------------------------------------------------------------------------------------------------


@asset(
    name="trained_model",
    group_name=GROUP,
    deps=[FEATURES_KEY],
    required_resource_keys={"mlflow", "ml", "data_store"},
    kinds={"tensorflow", "mlflow"},
    description=(
        "Every candidate forecaster (the baselines, HAR+ tuned by a small Optuna study whose trials are "
        "nested MLflow runs, the TensorFlow residual on HAR+, their combination) walked forward on k purged "
        "folds of the pooled feature windows; the walk-forward gate's choice is refitted on every window, "
        "registered as `crypto-volatility` with alias `challenger` and described by a model card."
    ),
)
def trained_model(context: AssetExecutionContext, config: TrainingConfig) -> MaterializeResult:
    ml = context.resources.ml
    # dagster-mlflow opened (or resumed) this Dagster run's MLflow run when the resource was built; it
    # never ends it unless the job carries its end hook, and an un-ended active run would swallow the
    # next in-process Dagster run's logging (tests, `crypto-platform materialize`). So end it here.
    try:
        result = _train(context, config, ml)
    except BaseException:
        while mlflow.active_run() is not None:  # a nested trial run first, then the parent
            mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    return result


def _train(context: AssetExecutionContext, config: TrainingConfig, ml: Any) -> MaterializeResult:
    store = context.resources.data_store.store()
    symbols = ml.selected_symbols(config.symbols)
    first, last = _day_window(config.end_date, config.training_days)
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    partitions = [str(market_partition_key(day, symbol)) for symbol in symbols for day in days]

    failures = failed_blocking_checks(context.instance, partitions)
    if failures:
        raise Failure(
            description=(
                f"refusing to train: {len(failures)} ohlcv partition(s) in the training window "
                f"{first}…{last} "
                f"hold bars whose latest blocking quality check failed: {describe_failures(failures)}. "
                "Re-materialize them from a good source first."
            ),
            metadata={"failed_partitions": MetadataValue.json([f.partition for f in failures[:200]])},
        )

    features, missing = load_feature_window(store, symbols, first, last)
    if features.is_empty():
        raise Failure(
            f"no stored features for {', '.join(symbols)} in {first}…{last}: materialize the market group "
            "(ohlcv, features) for that window first"
        )
    if missing:
        context.log.warning(f"feature days without a file (never materialised): {_missing_summary(missing)}")

    from crypto_platform.lib.model.lstm import limit_tf_threads

    limit_tf_threads()
    if mlflow.active_run() is None:  # the resource's run is active in this process; be robust anyway
        mlflow.start_run(run_id=getattr(context.resources.mlflow, "mlflow_run_id", None))
    parent_run = mlflow.active_run()
    assert parent_run is not None
    log_training_request("trained_model", config.margin, config.fast, config.training_days)
    try:
        spec = config.selection_spec(ml.timeframe)
    except ValueError as exc:  # an unknown candidate name: say which field, train nothing
        raise Failure(f"trained_model config: {exc}") from exc

    def on_fold(fold: FoldResult) -> None:
        context.log.info(
            f"fold {fold.fold}: {fold.test_windows} test windows, QLIKE "
            + ", ".join(f"{n} {fold.qlike(n):.4f}" for n in fold.forecasts)
        )

    try:
        selection = select_and_fit(
            features, spec, on_trial=trial_logger(parent_run.info.run_id), on_fold=on_fold
        )
    except InsufficientDataError as exc:
        raise Failure(f"cannot train on {first}…{last} for {', '.join(symbols)}: {exc}") from exc
    for fold in selection.walk_forward.folds:
        for name, reason in fold.skipped.items():
            context.log.warning(f"fold {fold.fold}: candidate {name} skipped: {reason}")

    window = DataWindow(
        tuple(symbols),
        first.isoformat(),
        last.isoformat(),
        ml.timeframe,
        code_version(ml.code_version),
        fingerprint=window_fingerprint(features),
    )
    logged = log_selection(
        selection, features, window, ml.client(), model_name=ml.model_name, source=_bar_source(features)
    )
    plot_key = training_plot_key(logged.run_id, MZ_PLOT_ARTIFACT)
    store.write_bytes(plot_key, logged.mz_png)
    result = selection.walk_forward
    champion = selection.champion
    best = result.table.best_baseline
    return MaterializeResult(
        metadata={
            "model_card": MetadataValue.md(
                logged.model_card
                + f"\n\n{inline_png(logged.mz_png, 'Mincer–Zarnowitz')}\n\n({store.uri(plot_key)})"
            ),
            "mlflow_run_id": logged.run_id,
            "model_version": logged.version,
            "model_uri": logged.model_uri,
            "gate_winner": champion,
            "model_family": family_of(champion),
            "input_contract": logged.input_contract,
            "gate": MetadataValue.json(selection.decision.to_dict()),
            "walk_forward": MetadataValue.json(result.summary()),
            "champion_pooled_qlike": finite(result.table.row(champion).qlike),
            "har_pooled_qlike": finite(result.table.row(result.reference).qlike),
            "best_baseline": best or "none",
            "best_baseline_pooled_qlike": finite(result.table.row(best).qlike) if best else None,
            "intervals": MetadataValue.json(result.interval_report()),
            "tuning": MetadataValue.json(selection.tuning.to_dict()),
            "tuning_trials": len(selection.tuning.trials),
            "folds": len(result.folds),
            "symbols": ", ".join(symbols),
            "data_window": f"{first}..{last}",
            "data_fingerprint": window.fingerprint,
            "windows_fingerprint": result.fingerprint,
            "missing_feature_days": MetadataValue.json(_missing_summary(missing)),
            "seconds": MetadataValue.json({k: round(v, 2) for k, v in selection.seconds.items()}),
            "plot_mincer_zarnowitz": MetadataValue.path(store.uri(plot_key)),
        }
    )


# --------------------------------------------------------------------------------------------------
# model_promotion
# --------------------------------------------------------------------------------------------------


@asset(
    name="model_promotion",
    group_name=GROUP,
    deps=[AssetKey("trained_model")],
    required_resource_keys={"ml"},
    kinds={"mlflow"},
    description=(
        "Keeps a servable champion in the registry: the first champion is the walk-forward gate's winner; "
        "afterwards the challenger replaces the champion only if it passes the sanity probes and the gate "
        "(margin, Diebold–Mariano p < 0.05, fold wins) against the incumbent's candidate and the best "
        "baseline on the same out-of-sample folds of its training run."
    ),
)
def model_promotion(context: AssetExecutionContext, config: PromotionConfig) -> MaterializeResult:
    ml = context.resources.ml
    client = ml.client()
    challenger = registry.alias_version(client, registry.CHALLENGER, ml.model_name)
    if challenger is None:
        raise Failure(f"{ml.model_name} has no `challenger` version: materialize trained_model first")
    evidence_run = (challenger.tags or {}).get(TRAINING_RUN_TAG) or challenger.run_id
    # The margin the training request recorded, unless this run's config overrides it.
    margin = config.margin
    if margin is None:
        recorded = recorded_margin(client, evidence_run)
        margin = TrainingConfig().margin if recorded is None else recorded
    outcome = promote(client, margin, ml.model_name)
    champion = client.get_model_version(ml.model_name, outcome.champion_after)
    decision = outcome.decision
    context.log.info(f"promotion: {'PROMOTED' if decision.promote else 'rejected'} — {decision.reason}")

    champion_family = version_family(champion)
    markdown = promotion_markdown(outcome, champion_family, margin)
    return MaterializeResult(
        metadata={
            "decision": MetadataValue.md(markdown),
            "promoted": decision.promote,
            "reason": decision.reason,
            "promotion_tags": MetadataValue.json(decision.to_tags()),
            "challenger_version": outcome.challenger_version,
            "challenger_family": outcome.challenger_family,
            "champion_version": outcome.champion_after,
            "champion_family": champion_family,
            "champion_candidate": outcome.champion_candidate,
            "champion_before": outcome.champion_before or "none",
            "bootstrapped_version": outcome.bootstrapped_version or "none",
            "champion_pooled_qlike": finite(outcome.champion_qlike),
            "pooled_qlike": MetadataValue.json(promotion_scores(outcome)),
            "champion_beats_baselines": outcome.champion_beats_baselines,
            "baselines_not_beaten": MetadataValue.json(outcome.baselines_not_beaten),
            "margin": margin,
            "evidence_run_id": outcome.evidence_run_id,
        }
    )


# --------------------------------------------------------------------------------------------------
# feature_drift
# --------------------------------------------------------------------------------------------------


@asset(
    name="feature_drift",
    group_name=GROUP,
    deps=[FEATURES_KEY, AssetKey("model_promotion")],
    required_resource_keys={"ml", "data_store"},
    kinds={"polars"},
    description=(
        "The latest days of features ranked among same-length stretches of the champion's training "
        "window (its reference sample in MLflow): KS per feature and the scale of volatility-like ones, "
        "Westfall-Young max-T; label drift (realized volatility) reported apart. Daily (ml_daily_drift) "
        "and after each retrain."
    ),
)
def feature_drift(context: AssetExecutionContext, config: DriftConfig) -> MaterializeResult:
    ml = context.resources.ml
    store = context.resources.data_store.store()
    client = ml.client()
    reference = load_reference(client, ml.model_name)
    if reference is None:
        raise Failure(
            f"{ml.model_name} has no champion with a reference feature sample: materialize trained_model and "
            "model_promotion first"
        )
    symbols = ml.selected_symbols(config.symbols)
    first, last = _day_window(config.end_date, config.current_days)
    current, _ = load_feature_window(store, symbols, first, last)
    columns = [
        c
        for c in reference.feature_columns
        if c != LABEL_COLUMN and c in reference.frame.columns and c in current.columns
    ]
    if current.is_empty() or not columns:
        raise Failure(f"no stored features for {', '.join(symbols)} in {first}…{last} to compare")
    report = detect_drift(
        reference.frame,
        current,
        columns,
        label_column=LABEL_COLUMN if LABEL_COLUMN in current.columns else None,
        alpha=config.alpha,
        ks_floor=config.ks_floor,
        psi_floor=config.psi_floor,
        scale_floor=config.scale_floor,
    )
    payload = {
        **report.to_dict(),
        "champion_version": reference.version,
        "reference_run_id": reference.run_id,
        "current_window": f"{first}..{last}",
        "symbols": symbols,
    }
    key = drift_report_key(last.isoformat())
    store.write_bytes(key, json.dumps(payload, indent=2, default=str).encode())
    return MaterializeResult(
        metadata={
            "report": MetadataValue.md(report.to_markdown()),
            "feature_drift_detected": report.feature_drift_detected,
            "label_drift_detected": report.label_drift_detected,
            "drifted_features": MetadataValue.json(report.drifted_features),
            "champion_version": reference.version,
            "n_reference": reference.frame.height,
            "n_current": current.height,
            "current_window": f"{first}..{last}",
            "report_path": MetadataValue.path(store.uri(key)),
        }
    )


ML_ASSETS = [trained_model, model_promotion, feature_drift]
