"""The `ml` asset group (trained_model → model_promotion → feature_drift) and the `daily_report`.

None of them is partitioned: each reads a window of the partitioned `features` asset straight from the
data location (lib.storage), which is what the API will read too, instead of loading hundreds of
partitions through the IO manager. Models and their evaluation live in MLflow; the assets return
`MaterializeResult`s whose metadata is what sensors, checks and the report read back.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` / `config` annotations.
import base64
import json
import math
import os
import subprocess
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
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
from mlflow.exceptions import MlflowException

from crypto_platform.defs.market.partitions import market_partition_key
from crypto_platform.defs.ml.checks import describe_failures, failed_blocking_checks
from crypto_platform.defs.ml.config import (
    GROUP,
    REPORTS_GROUP,
    DailyReportConfig,
    DriftConfig,
    PromotionConfig,
    TrainingConfig,
)
from crypto_platform.lib.drift import detect_drift
from crypto_platform.lib.market.symbols import exchange_symbol_id, normalize_symbol
from crypto_platform.lib.market.timeframes import timeframe_ms
from crypto_platform.lib.model import registry
from crypto_platform.lib.model.holdout import load_reference, version_family
from crypto_platform.lib.model.promotion import promote
from crypto_platform.lib.model.tags import FAMILY_TAG, TRAINING_RUN_TAG
from crypto_platform.lib.model.tracking import DataWindow, log_training
from crypto_platform.lib.model.training import (
    LABEL_COLUMN,
    LSTM_NAME,
    InsufficientDataError,
    TrainingSpec,
    forecast_plot_png,
    loss_curve_png,
    train_and_evaluate,
)
from crypto_platform.lib.reports import (
    ChampionInfo,
    DailyReport,
    DriftStatus,
    QualityStatus,
    SymbolFreshness,
    build_daily_report,
    report_key,
)
from crypto_platform.lib.storage import (
    DAY_MS,
    FEATURES_ASSET,
    OHLCV_ASSET,
    ObjectNotFoundError,
    ObjectStore,
    day_start_ms,
    list_partitions,
    partition_key,
    quality_report_keys,
    read_parquet,
    read_partitioned,
)

FEATURES_KEY = AssetKey("features")
QUALITY_KEY = AssetKey("quality_report")
PLOT_FORECAST = "plots/forecast_vs_realized.png"
PLOT_LOSS = "plots/loss_curves.png"
MAX_MISSING_LISTED = 10


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _today() -> date:
    return datetime.now(UTC).date()


def _day_window(end_date: str | None, days: int) -> tuple[date, date]:
    last = date.fromisoformat(end_date) if end_date else _today()
    return last - timedelta(days=days - 1), last


def _symbols(requested: list[str], configured: list[str]) -> list[str]:
    return list(dict.fromkeys(normalize_symbol(s) for s in (requested or configured)))


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


def _missing_summary(missing: dict[str, list[str]]) -> dict[str, Any]:
    return {
        symbol: {"days": len(days), "first": days[0], "last": days[-1], "listed": days[:MAX_MISSING_LISTED]}
        for symbol, days in missing.items()
    }


def code_version() -> str:
    """The git commit the code runs from (CRYPTO_CODE_VERSION overrides; 'unknown' outside a checkout)."""
    if os.environ.get("CRYPTO_CODE_VERSION"):
        return os.environ["CRYPTO_CODE_VERSION"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _inline_png(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


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
        "LSTM forecaster of next-24-bar realized volatility, trained on the pooled feature windows of the "
        "configured symbols with a purged chronological split, evaluated with every baseline on the most "
        "recent holdout, tracked in MLflow and registered as `crypto-volatility` with alias `challenger`."
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
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    return result


def _train(context: AssetExecutionContext, config: TrainingConfig, ml: Any) -> MaterializeResult:
    store = context.resources.data_store.store()
    symbols = _symbols(config.symbols, ml.symbols)
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
    spec = TrainingSpec(timeframe=ml.timeframe, lstm=config.lstm_config())
    try:
        result = train_and_evaluate(features, spec)
    except InsufficientDataError as exc:
        raise Failure(f"cannot train on {first}…{last} for {', '.join(symbols)}: {exc}") from exc
    for name, reason in result.skipped_baselines.items():
        context.log.warning(f"baseline {name} skipped: {reason}")

    trained = result.lstm.trained
    assert trained is not None
    figures = {
        PLOT_FORECAST: forecast_plot_png(result),
        PLOT_LOSS: loss_curve_png(trained.history, trained.best_epoch),
    }
    window = DataWindow(tuple(symbols), first.isoformat(), last.isoformat(), ml.timeframe, code_version())
    client = ml.client()
    if mlflow.active_run() is None:  # the resource's run is active in this process; be robust anyway
        mlflow.start_run(run_id=getattr(context.resources.mlflow, "mlflow_run_id", None))
    mlflow.set_tags({"dagster_asset": "trained_model", "promotion_margin": f"{config.margin:g}"})
    mlflow.log_params({"fast_preset": config.fast, "training_days": config.training_days})
    logged = log_training(result, features, window, client, figures, model_name=ml.model_name)

    plot_paths = {}
    for artifact_path, png in figures.items():
        key = f"ml/runs/{logged.run_id}/{Path(artifact_path).name}"
        store.write_bytes(key, png)
        plot_paths[artifact_path] = store.uri(key)

    table = result.evaluation
    lstm_q = table.row(LSTM_NAME).qlike
    best = table.best_baseline
    best_q = table.row(best).qlike if best else math.nan
    markdown = "\n\n".join(
        [
            f"**MLflow run** `{logged.run_id}` · registered `{ml.model_name}` v{logged.lstm_version} "
            f"(alias `challenger`) · holdout {len(result.holdout)} windows from "
            f"{datetime.fromtimestamp(result.split.boundaries[1] / 1000, UTC):%Y-%m-%d %H:%M} UTC",
            table.to_markdown(),
            f"Forecast vs realized ({plot_paths[PLOT_FORECAST]}):\n\n"
            + _inline_png(figures[PLOT_FORECAST], "forecast"),
            f"Loss curves ({plot_paths[PLOT_LOSS]}):\n\n" + _inline_png(figures[PLOT_LOSS], "loss"),
        ]
    )
    return MaterializeResult(
        metadata={
            "evaluation": MetadataValue.md(markdown),
            "evaluation_records": MetadataValue.json(logged.evaluation_records),
            "mlflow_run_id": logged.run_id,
            "model_version": logged.lstm_version,
            "model_uri": logged.lstm_model_uri,
            "candidate_baseline": logged.baseline_name,
            "best_baseline": best or "none",
            "lstm_holdout_qlike": _finite(lstm_q),
            "best_baseline_holdout_qlike": _finite(best_q),
            "lstm_vs_best_baseline": _finite((best_q - lstm_q) / best_q) if best else None,
            "windows": MetadataValue.json(result.split.summary()),
            "symbols": ", ".join(symbols),
            "data_window": f"{first}..{last}",
            "missing_feature_days": MetadataValue.json(_missing_summary(missing)),
            "epochs_run": trained.epochs_run,
            "best_epoch": trained.best_epoch,
            "seconds": MetadataValue.json({k: round(v, 2) for k, v in result.seconds.items()}),
            "plot_forecast_vs_realized": MetadataValue.path(plot_paths[PLOT_FORECAST]),
            "plot_loss_curves": MetadataValue.path(plot_paths[PLOT_LOSS]),
        }
    )


# --------------------------------------------------------------------------------------------------
# model_promotion
# --------------------------------------------------------------------------------------------------


def promotion_margin(client: Any, run_id: str, override: float | None) -> float:
    if override is not None:
        return override
    tag = client.get_run(run_id).data.tags.get("promotion_margin")
    return float(tag) if tag else TrainingConfig().margin


@asset(
    name="model_promotion",
    group_name=GROUP,
    deps=[AssetKey("trained_model")],
    required_resource_keys={"ml"},
    kinds={"mlflow"},
    description=(
        "Keeps a servable champion in the registry: the first champion is the best servable baseline; "
        "afterwards the challenger replaces the champion only if it passes the sanity probes and beats "
        "the champion, re-scored on the same most recent holdout, on QLIKE by the configured margin."
    ),
)
def model_promotion(context: AssetExecutionContext, config: PromotionConfig) -> MaterializeResult:
    ml = context.resources.ml
    client = ml.client()
    challenger = registry.alias_version(client, registry.CHALLENGER, ml.model_name)
    if challenger is None:
        raise Failure(f"{ml.model_name} has no `challenger` version: materialize trained_model first")
    holdout_run = (challenger.tags or {}).get(TRAINING_RUN_TAG) or challenger.run_id
    margin = promotion_margin(client, holdout_run, config.margin)
    outcome = promote(client, holdout_run, margin, ml.model_name)
    champion = client.get_model_version(ml.model_name, outcome.champion_after)
    decision = outcome.decision
    context.log.info(f"promotion: {'PROMOTED' if decision.promote else 'rejected'} — {decision.reason}")

    scores = {k: _finite(v) for k, v in outcome.holdout_qlike.items()}
    rows = "\n".join(f"| {k} | {'—' if v is None else f'{v:.5f}'} |" for k, v in scores.items())
    markdown = (
        f"**Decision:** {'promoted' if decision.promote else 'rejected'} — {decision.reason}\n\n"
        f"Challenger v{outcome.challenger_version} ({outcome.challenger_family}); champion before: "
        f"{outcome.champion_before or 'none'}; champion now: v{outcome.champion_after} "
        f"({version_family(champion)})"
        + (f"; bootstrapped v{outcome.bootstrapped_version}" if outcome.bootstrapped_version else "")
        + f"\n\nHoldout of run `{outcome.holdout_run_id}`, {outcome.n_holdout} windows, "
        f"margin {margin:.2%}.\n\n"
        "| forecaster | holdout QLIKE |\n|---|---:|\n" + rows
    )
    return MaterializeResult(
        metadata={
            "decision": MetadataValue.md(markdown),
            "promoted": decision.promote,
            "reason": decision.reason,
            "promotion_tags": MetadataValue.json(decision.to_tags()),
            "challenger_version": outcome.challenger_version,
            "challenger_family": outcome.challenger_family,
            "champion_version": outcome.champion_after,
            "champion_family": version_family(champion),
            "champion_before": outcome.champion_before or "none",
            "bootstrapped_version": outcome.bootstrapped_version or "none",
            "rejected_lstm_version": outcome.rejected_lstm_version or "none",
            "champion_holdout_qlike": _finite(outcome.champion_qlike),
            "holdout_qlike": MetadataValue.json(scores),
            "champion_beats_baselines": outcome.champion_beats_baselines,
            "baselines_not_beaten": MetadataValue.json(outcome.baselines_not_beaten),
            "margin": margin,
            "holdout_run_id": outcome.holdout_run_id,
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
        "KS + PSI per model feature between the champion's training window (its reference sample in "
        "MLflow) and the latest days of features; label drift (realized volatility) reported apart."
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
    symbols = _symbols(config.symbols, ml.symbols)
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
    )
    payload = {
        **report.to_dict(),
        "champion_version": reference.version,
        "reference_run_id": reference.run_id,
        "current_window": f"{first}..{last}",
        "symbols": symbols,
    }
    key = f"ml/drift/{last.isoformat()}.json"
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


# --------------------------------------------------------------------------------------------------
# daily_report
# --------------------------------------------------------------------------------------------------


def _freshness(store: ObjectStore, symbol: str, bar_ms: int, now_ms: int) -> SymbolFreshness:
    days = list_partitions(store, OHLCV_ASSET, symbol)
    for _, day in reversed(days):  # an empty file (a day materialised with no bars) says nothing
        frame = read_parquet(store, partition_key(OHLCV_ASSET, exchange_symbol_id(symbol), day))
        if frame.height:
            last_ts = int(frame["ts"].max())
            sources = frame["source"].unique().to_list() if "source" in frame.columns else []
            return SymbolFreshness(
                symbol,
                datetime.fromtimestamp(last_ts / 1000, UTC).isoformat(timespec="minutes"),
                (now_ms - (last_ts + bar_ms)) / 3_600_000,
                ", ".join(sorted(str(s) for s in sources if s)) or None,
            )
    return SymbolFreshness(symbol, None, None)


def _quality(store: ObjectStore, symbol: str) -> QualityStatus:
    for _, day in reversed(list_partitions(store, "quality_report", symbol)):
        try:
            report = json.loads(store.read_bytes(quality_report_keys(symbol, day)[1]))
        except ObjectNotFoundError:
            continue
        return QualityStatus(
            symbol, day, report.get("status"), report.get("failed_checks") or (), report.get("warnings") or ()
        )
    return QualityStatus(symbol, None, None)


def _champion(ml: Any) -> tuple[ChampionInfo | None, str | None]:
    try:
        client = ml.client()
        champion = registry.alias_version(client, registry.CHAMPION, ml.model_name)
    except (MlflowException, OSError) as exc:
        return None, f"registry unreachable: {str(exc).splitlines()[0][:200]}"
    if champion is None:
        return None, None
    tags = champion.tags or {}
    qlike = tags.get("promotion.challenger_qlike") or tags.get("holdout_qlike")
    beats = tags.get("champion_beats_baselines")
    return (
        ChampionInfo(
            version=str(champion.version),
            family=tags.get(FAMILY_TAG, "unknown"),
            created=datetime.fromtimestamp((champion.creation_timestamp or 0) / 1000, UTC).isoformat(
                timespec="minutes"
            ),
            holdout_qlike=float(qlike) if qlike else None,
            beats_baselines=None if beats is None else beats == "True",
            data_window=tags.get("data_window"),
            last_decision=tags.get("promotion.reason"),
        ),
        None,
    )


def _drift(context: AssetExecutionContext) -> DriftStatus | None:
    event = context.instance.get_latest_materialization_event(AssetKey("feature_drift"))
    if event is None or event.asset_materialization is None:
        return None
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return DriftStatus(
        evaluated_at=datetime.fromtimestamp(event.timestamp, UTC).isoformat(timespec="minutes"),
        feature_drift=bool(meta.get("feature_drift_detected")),
        label_drift=bool(meta.get("label_drift_detected")),
        drifted_features=list(meta.get("drifted_features") or []),
        champion_version=str(meta.get("champion_version")) if meta.get("champion_version") else None,
    )


def _signals_served(store: ObjectStore, day: str) -> int | None:
    """Serving's per-day counter, `serving/stats/<day>.json` {"signals_served": n}, when it writes one."""
    try:
        return int(json.loads(store.read_bytes(f"serving/stats/{day}.json"))["signals_served"])
    except (ObjectNotFoundError, KeyError, ValueError, TypeError):
        return None


@asset(
    name="daily_report",
    group_name=REPORTS_GROUP,
    deps=[QUALITY_KEY, AssetKey("model_promotion"), AssetKey("feature_drift")],
    required_resource_keys={"ml", "data_store"},
    kinds={"markdown"},
    description=(
        "One markdown page per day under reports/daily/<date>.md in the data location: data freshness per "
        "symbol, the latest quality result, the champion and its metrics, drift status, signals served."
    ),
)
def daily_report(context: AssetExecutionContext, config: DailyReportConfig) -> MaterializeResult:
    ml = context.resources.ml
    store = context.resources.data_store.store()
    day = config.date or _today().isoformat()
    now_ms = int(time.time() * 1000)
    bar_ms = timeframe_ms(ml.timeframe)
    symbols = _symbols([], ml.symbols)
    champion, champion_error = _champion(ml)
    report = DailyReport(
        day=day,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        freshness=[_freshness(store, s, bar_ms, now_ms) for s in symbols],
        quality=[_quality(store, s) for s in symbols],
        champion=champion,
        champion_error=champion_error,
        drift=_drift(context),
        signals_served=_signals_served(store, day),
    )
    markdown = build_daily_report(report)
    key = report_key(day)
    store.write_bytes(key, markdown.encode("utf-8"))
    return MaterializeResult(
        metadata={
            "report": MetadataValue.md(markdown),
            "path": MetadataValue.path(store.uri(key)),
            "day": day,
        }
    )


ML_ASSETS = [trained_model, model_promotion, feature_drift, daily_report]
