"""MLflow side of the model lifecycle: log a training run, register its models, promote, load references.

Every registered version of `crypto-volatility` serves the same contract (raw feature windows in,
volatility out, see `packaging.py`) and carries these version tags:
    model_family      `lstm` or `baseline:<name>`
    feature_columns   JSON list: the feature order of its input windows
    training_run_id   the run whose holdout scored it and whose reference sample describes its data
A training run stores, besides the LSTM and the best servable baseline (logged, registered only when
needed), the holdout feature rows (`holdout/features.parquet`), so that any model — an older champion
trained on other features included — can be re-scored on exactly that most recent holdout, and the
training window's feature values (`reference/features.parquet`), the drift reference.

The caller owns the MLflow run (the Dagster asset gets it from dagster-mlflow) and the tracking URI:
`mlflow.pyfunc.load_model("models:/…")` resolves through the process-wide tracking URI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from crypto_platform.lib.model import registry
from crypto_platform.lib.model.baseline_serving import CLASS_PATH as BASELINE_CLASS
from crypto_platform.lib.model.baseline_serving import ServableBaseline
from crypto_platform.lib.model.metrics import qlike
from crypto_platform.lib.model.packaging import OUTPUT_COLUMN, log_forecaster, log_lstm_model
from crypto_platform.lib.model.promotion import PromotionDecision, decide_promotion, sanity_probes
from crypto_platform.lib.model.training import (
    LABEL_COLUMN,
    LSTM_NAME,
    TrainingResult,
    holdout_features,
    holdout_windows,
    reference_features,
    select_columns,
)
from crypto_platform.lib.model.windows import WindowSet

FAMILY_TAG = "model_family"
FEATURES_TAG = "feature_columns"
TRAINING_RUN_TAG = "training_run_id"
LSTM_FAMILY = "lstm"
BASELINE_FAMILY_PREFIX = "baseline:"

LSTM_MODEL = "model"  # logged-model names inside a training run
BASELINE_MODEL = "baseline_model"
EVALUATION_JSON = "evaluation/holdout.json"
EVALUATION_MD = "evaluation/holdout.md"
EVALUATION_TABLE = "evaluation/holdout_table.json"
HOLDOUT_FEATURES = "holdout/features.parquet"
HOLDOUT_META = "holdout/meta.json"
HOLDOUT_FORECASTS = "holdout/forecasts.parquet"
REFERENCE_FEATURES = "reference/features.parquet"
CANDIDATE_BASELINE_TAG = "candidate_baseline"
CANDIDATE_BASELINE_URI_TAG = "candidate_baseline_model_uri"


def baseline_family(name: str) -> str:
    return f"{BASELINE_FAMILY_PREFIX}{name}"


@dataclass(frozen=True)
class DataWindow:
    """What a model was trained on (run and version tags)."""

    symbols: tuple[str, ...]
    start: str  # first UTC day
    end: str  # last UTC day
    timeframe: str = "1h"
    code_version: str = "unknown"

    def tags(self) -> dict[str, str]:
        return {
            "data_window": f"{self.start}..{self.end}",
            "data_window_start": self.start,
            "data_window_end": self.end,
            "symbols": ",".join(self.symbols),
            "timeframe": self.timeframe,
            "code_version": self.code_version,
        }


@dataclass(frozen=True)
class LoggedTraining:
    run_id: str
    lstm_version: str
    lstm_model_uri: str
    baseline_name: str
    baseline_model_uri: str
    evaluation_records: list[dict[str, Any]]


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


def log_training(
    result: TrainingResult,
    features: pl.DataFrame,
    window: DataWindow,
    client: MlflowClient,
    figures: Mapping[str, bytes] | None = None,
    model_name: str = registry.MODEL_NAME,
) -> LoggedTraining:
    """Log a training result to the ACTIVE MLflow run and register the LSTM with alias `challenger`.

    Logs params, per-epoch losses (step metrics, via `packaging.log_lstm_model`), the holdout
    evaluation of every forecaster (metrics, a logged table, JSON and markdown), `figures` as
    artifacts, the holdout and reference feature samples, the LSTM pyfunc (+ Keras model) and the best
    servable baseline's pyfunc, both with signature and input example.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_training needs an active MLflow run")
    run_id = run.info.run_id
    spec = result.spec
    holdout = result.holdout
    feature_list = json.dumps(list(spec.feature_columns))
    holdout_start = result.split.boundaries[1]
    best_servable = result.best_baseline(servable_only=True)

    mlflow.set_tags(
        {
            **window.tags(),
            FEATURES_TAG: feature_list,
            "best_baseline": result.evaluation.best_baseline or "",
            CANDIDATE_BASELINE_TAG: best_servable,
            "holdout_start_ts": str(holdout_start),
        }
    )
    mlflow.log_params(
        {**spec.to_params(), "training_days_start": window.start, "training_days_end": window.end}
    )
    mlflow.log_dict(
        {
            "split": result.split.summary(),
            "baseline_params": {name: b.params() for name, b in result.baselines.items()},
            "skipped_baselines": result.skipped_baselines,
            "seconds": result.seconds,
        },
        "training/summary.json",
    )
    for name, forecaster in result.baselines.items():
        if name == "ewma":
            mlflow.log_param("ewma_lambda", forecaster.params()["lambda"])
    mlflow.log_metrics(
        {
            **result.metrics(),
            "windows_train": len(result.split.train),
            "windows_validation": len(result.split.validation),
            "windows_holdout": len(holdout),
        }
    )

    records = result.evaluation.to_records()
    mlflow.log_table(
        {key: [r[key] for r in records] for key in records[0]} if records else {},
        artifact_file=EVALUATION_TABLE,
    )
    mlflow.log_dict(
        {
            "primary": result.evaluation.primary,
            "best_baseline": result.evaluation.best_baseline,
            "hac_lag": result.evaluation.hac_lag,
            "rows": records,
        },
        EVALUATION_JSON,
    )
    mlflow.log_text(result.evaluation.to_markdown(), EVALUATION_MD)
    for artifact_path, png in (figures or {}).items():
        _log_bytes(png, artifact_path)

    _log_parquet(holdout_features(features, spec, holdout_start), HOLDOUT_FEATURES)
    _log_parquet(result.holdout_frame(), HOLDOUT_FORECASTS)
    _log_parquet(reference_features(features, holdout_start, spec.feature_columns), REFERENCE_FEATURES)
    mlflow.log_dict(
        {
            "holdout_start_ts": holdout_start,
            "feature_columns": list(spec.feature_columns),
            "timeframe": spec.timeframe,
            "sequence_length": spec.sequence_length,
            "horizon": spec.horizon,
        },
        HOLDOUT_META,
    )

    example = holdout.X[: min(5, len(holdout))]
    if result.lstm.trained is None:
        raise RuntimeError("the LSTM of this result was never trained")
    logged = log_lstm_model(result.lstm.trained, LSTM_MODEL, example)
    baseline_info = log_forecaster(
        ServableBaseline.from_fitted(result.baselines[best_servable], holdout),
        name=BASELINE_MODEL,
        input_example=example,
        forecaster_class=BASELINE_CLASS,
    )
    mlflow.set_tag(CANDIDATE_BASELINE_URI_TAG, baseline_info.model_uri)

    version_tags = {
        **window.tags(),
        FAMILY_TAG: LSTM_FAMILY,
        FEATURES_TAG: feature_list,
        TRAINING_RUN_TAG: run_id,
        "holdout_qlike": f"{result.evaluation.row(LSTM_NAME).qlike:.6g}",
    }
    version = registry.register_version(
        client,
        logged.model_uri,
        run_id,
        version_tags,
        model_name=model_name,
        description="LSTM next-24-bar volatility forecaster",
        model_id=logged.model_id,
    )
    registry.move_alias(client, registry.CHALLENGER, version.version, model_name)
    return LoggedTraining(
        run_id=run_id,
        lstm_version=str(version.version),
        lstm_model_uri=logged.model_uri,
        baseline_name=best_servable,
        baseline_model_uri=baseline_info.model_uri,
        evaluation_records=records,
    )


# --------------------------------------------------------------------------------------------------
# Holdout of a training run, and scoring registered models on it.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holdout:
    run_id: str
    features: pl.DataFrame
    meta: dict[str, Any]
    forecasts: (
        pl.DataFrame
    )  # in-memory forecasts of the run's forecasters (ts, symbol, realized_vol, forecast_*)

    @property
    def feature_columns(self) -> list[str]:
        return list(self.meta["feature_columns"])

    def windows(self, columns: list[str]) -> WindowSet:
        return holdout_windows(
            self.features,
            columns,
            int(self.meta["holdout_start_ts"]),
            self.meta["timeframe"],
            int(self.meta["sequence_length"]),
            int(self.meta["horizon"]),
        )

    def baseline_forecasts(self) -> dict[str, pl.Series]:
        return {
            c.removeprefix("forecast_"): self.forecasts[c]
            for c in self.forecasts.columns
            if c.startswith("forecast_") and c != f"forecast_{LSTM_NAME}"
        }


def _download(run_id: str, artifact_path: str, dst: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst))


def load_holdout(run_id: str) -> Holdout:
    with tempfile.TemporaryDirectory() as tmp:
        features = pl.read_parquet(_download(run_id, HOLDOUT_FEATURES, tmp))
        forecasts = pl.read_parquet(_download(run_id, HOLDOUT_FORECASTS, tmp))
        meta = json.loads(_download(run_id, HOLDOUT_META, tmp).read_text())
    return Holdout(run_id=run_id, features=features, meta=meta, forecasts=forecasts)


def version_feature_columns(mv: ModelVersion, default: list[str]) -> list[str]:
    raw = (mv.tags or {}).get(FEATURES_TAG)
    return list(json.loads(raw)) if raw else list(default)


def version_family(mv: ModelVersion) -> str:
    return (mv.tags or {}).get(FAMILY_TAG, "unknown")


def predict_uri(model_uri: str, windows: WindowSet) -> np.ndarray:
    """Forecasts of a logged/registered pyfunc for these windows, as serving would compute them."""
    model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict(np.ascontiguousarray(windows.X, dtype=np.float32))
    return np.asarray(out[OUTPUT_COLUMN], dtype=np.float64).reshape(-1)


def safe_qlike(realized_vol: np.ndarray, forecast_vol: np.ndarray) -> float:
    """Holdout QLIKE, or +inf for forecasts QLIKE cannot score (non-finite or non-positive)."""
    if (
        forecast_vol.shape != realized_vol.shape
        or not np.all(np.isfinite(forecast_vol))
        or np.any(forecast_vol <= 0)
    ):
        return math.inf
    return qlike(realized_vol**2, forecast_vol**2)


# --------------------------------------------------------------------------------------------------
# Promotion.
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
    tags = {
        key: run.data.tags[key]
        for key in (
            "data_window",
            "data_window_start",
            "data_window_end",
            "symbols",
            "timeframe",
            "code_version",
        )
        if key in run.data.tags
    }
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
        if not champion_q < q:
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


# --------------------------------------------------------------------------------------------------
# Champion lookups for drift, sensors and reports.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    version: str
    run_id: str
    feature_columns: list[str]
    frame: pl.DataFrame


def load_reference(client: MlflowClient, model_name: str = registry.MODEL_NAME) -> Reference | None:
    """The champion's drift reference (training-window feature values), or None when it has none."""
    champion = registry.alias_version(client, registry.CHAMPION, model_name)
    if champion is None or not champion.run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            frame = pl.read_parquet(_download(champion.run_id, REFERENCE_FEATURES, tmp))
    except (MlflowException, OSError):
        return None
    columns = version_feature_columns(champion, [c for c in frame.columns if c not in ("ts", "symbol")])
    return Reference(str(champion.version), champion.run_id, columns, frame)


def champion_age_seconds(
    client: MlflowClient, model_name: str = registry.MODEL_NAME, now: float | None = None
) -> float | None:
    """Seconds since the champion version was created, None without a champion."""
    champion = registry.alias_version(client, registry.CHAMPION, model_name)
    if champion is None:
        return None
    created = (champion.creation_timestamp or 0) / 1000.0
    return (time.time() if now is None else now) - created
