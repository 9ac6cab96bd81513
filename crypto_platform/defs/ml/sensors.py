"""Automation of the model lifecycle.

`ml_retrain_sensor` is an asset sensor on `feature_drift` and `forecast_track_record`: it requests
`ml_retrain_job` when a new `feature_drift` materialization found feature drift, when a new track record
says the champion's live QLIKE is worse than the best baseline's on the same bars, when there is no
champion, or when the champion is older than CHAMPION_MAX_AGE_DAYS. It is a `multi_asset_sensor`, not
declarative automation, because the retrain needs run config (the fast preset of the demo), reasons as
run tags and a cooldown. The cursor (Dagster's, per monitored asset) marks the materializations already
answered; the cooldown is read from the instance: no request within RETRAIN_COOLDOWN_S of the newest
retrain run (its REQUESTED_AT_TAG, else its creation time — a weekly or manual retrain counts too), nor
while one is queued or running. While a cooldown holds, the verdicts stay unconsumed and are answered
once it has passed, so a drift that retraining cannot cure asks for at most one retrain per cooldown.
A verdict older than the last retrain is ignored (that retrain re-evaluated drift itself).

`ml_model_reload_sensor` watches `model_promotion` materialisations and, after a promotion, POSTs
/v1/ml/model/reload on the serving API with the admin key so the new champion is picked up at once.
Serving also polls the `champion` alias, so this only shortens the delay; without CRYPTO_SERVING_URL /
CRYPTO_ADMIN_API_KEY it does nothing.
"""

# No `from __future__ import annotations`: Dagster inspects the context and resource annotations.

import time
from dataclasses import dataclass
from typing import Any

import requests
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterRunStatus,
    DefaultSensorStatus,
    MultiAssetSensorEvaluationContext,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    multi_asset_sensor,
    sensor,
)
from mlflow.exceptions import MlflowException

from crypto_platform.defs.ml.config import (
    CHAMPION_MAX_AGE_DAYS,
    RELOAD_PATH,
    RELOAD_SENSOR_INTERVAL_S,
    RETRAIN_COOLDOWN_S,
    RETRAIN_JOB,
    RETRAIN_SENSOR_INTERVAL_S,
)
from crypto_platform.defs.resources import MLPlatformResource
from crypto_platform.lib.model import registry

DRIFT_KEY = AssetKey("feature_drift")
PROMOTION_KEY = AssetKey("model_promotion")
TRACK_RECORD_KEY = AssetKey("forecast_track_record")
TRIGGER_TAG = "crypto_platform/trigger"
REASONS_TAG = "crypto_platform/retrain_reasons"
REQUESTED_AT_TAG = "crypto_platform/requested_at"  # epoch s of the sensor's request (the cooldown's clock)
_IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class RetrainInputs:
    now: float
    last_request: float | None  # from the cursor
    drift_detected: bool | None  # latest feature_drift verdict, None when never evaluated
    drift_at: float | None  # when that verdict was recorded
    drifted_features: tuple[str, ...]
    champion_age_s: float | None  # None: no champion
    registry_error: str | None  # the registry could not be read: champion state unknown
    runs_in_flight: int
    live_worse: bool | None = None  # newest unanswered track record: champion worse than best baseline
    live_at: float | None = None  # when that track record was recorded
    live_detail: str = ""  # e.g. "QLIKE 0.61 vs har 0.55 over 2026-04-01..2026-04-07"


def retrain_reasons(inputs: RetrainInputs, max_age_s: float) -> list[str]:
    reasons = []
    fresh_drift = inputs.drift_at is not None and (
        inputs.last_request is None or inputs.drift_at > inputs.last_request
    )
    if inputs.drift_detected and fresh_drift:
        reasons.append("feature drift in " + (", ".join(inputs.drifted_features) or "features"))
    fresh_live = inputs.live_at is not None and (
        inputs.last_request is None or inputs.live_at > inputs.last_request
    )
    if inputs.live_worse and fresh_live:
        reasons.append(
            "live QLIKE of the champion worse than the best baseline's"
            + (f" ({inputs.live_detail})" if inputs.live_detail else "")
        )
    if inputs.registry_error is None:
        if inputs.champion_age_s is None:
            reasons.append("no champion in the registry")
        elif inputs.champion_age_s > max_age_s:
            reasons.append(
                f"champion is {inputs.champion_age_s / 86400:.1f} days old (max {max_age_s / 86400:g})"
            )
    return reasons


def decide_retrain(
    inputs: RetrainInputs,
    cooldown_s: float = RETRAIN_COOLDOWN_S,
    max_age_s: float = CHAMPION_MAX_AGE_DAYS * 86400,
    run_config: dict[str, Any] | None = None,
) -> RunRequest | SkipReason:
    reasons = retrain_reasons(inputs, max_age_s)
    if not reasons:
        unknown = f" (registry unknown: {inputs.registry_error})" if inputs.registry_error else ""
        return SkipReason(
            f"no retrain due: no fresh drift, live forecasts not worse than the baselines, champion present "
            f"and recent{unknown}"
        )
    if inputs.last_request is not None and inputs.now - inputs.last_request < cooldown_s:
        wait = cooldown_s - (inputs.now - inputs.last_request)
        ago = (inputs.now - inputs.last_request) / 60
        return SkipReason(
            f"cooldown: retrain due ({'; '.join(reasons)}) but the last request was {ago:.0f} min ago; "
            f"next possible in {wait / 60:.0f} min"
        )
    if inputs.runs_in_flight:
        return SkipReason(
            f"retrain due ({'; '.join(reasons)}) but {inputs.runs_in_flight} retrain run(s) in flight"
        )
    if reasons[0].startswith("feature drift"):
        trigger = "drift"
    elif reasons[0].startswith("live QLIKE"):
        trigger = "track_record"
    else:
        trigger = "due"
    return RunRequest(
        run_key=f"retrain-{int(inputs.now)}",
        run_config=run_config or {},
        tags={
            TRIGGER_TAG: trigger,
            REASONS_TAG: "; ".join(reasons)[:500],
            REQUESTED_AT_TAG: f"{inputs.now:.3f}",
        },
    )


def _metadata(record: Any) -> dict[str, Any]:
    if record is None or record.asset_materialization is None:
        return {}
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def _last_retrain_request(context: MultiAssetSensorEvaluationContext) -> float | None:
    """When the newest ml_retrain_job run was asked for: the sensor's tag, else the run's creation."""
    records = context.instance.get_run_records(RunsFilter(job_name=RETRAIN_JOB), limit=1)
    if not records:
        return None
    tagged = records[0].dagster_run.tags.get(REQUESTED_AT_TAG)
    return float(tagged) if tagged else records[0].create_timestamp.timestamp()


def retrain_inputs(
    context: MultiAssetSensorEvaluationContext, ml: MLPlatformResource, now: float
) -> RetrainInputs:
    """What `decide_retrain` needs, read from the unanswered materializations, the registry and the runs."""
    latest = context.latest_materialization_records_by_key()
    drift_record, track_record = latest.get(DRIFT_KEY), latest.get(TRACK_RECORD_KEY)
    drift, live = _metadata(drift_record), _metadata(track_record)
    age: float | None = None
    error: str | None = None
    try:
        age = registry.champion_age_seconds(ml.client(), ml.model_name, now)
    except (MlflowException, OSError, requests.RequestException) as exc:
        error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    in_flight = len(
        context.instance.get_run_ids(RunsFilter(job_name=RETRAIN_JOB, statuses=_IN_FLIGHT), limit=5)
    )
    qlike = live.get("live_qlike") or {}
    best = live.get("best_baseline")
    detail = ""
    if qlike.get("champion") is not None and qlike.get(best) is not None:
        detail = f"{qlike['champion']:.4g} vs {best} {qlike[best]:.4g} over {live.get('window')}"
    return RetrainInputs(
        now=now,
        last_request=_last_retrain_request(context),
        drift_detected=bool(drift["feature_drift_detected"]) if "feature_drift_detected" in drift else None,
        drift_at=drift_record.timestamp if drift_record is not None else None,
        drifted_features=tuple(drift.get("drifted_features") or ()),
        champion_age_s=age,
        registry_error=error,
        runs_in_flight=in_flight,
        live_worse=live.get("champion_worse_than_best_baseline"),
        live_at=track_record.timestamp if track_record is not None else None,
        live_detail=detail,
    )


@multi_asset_sensor(
    monitored_assets=[DRIFT_KEY, TRACK_RECORD_KEY],
    name="ml_retrain_sensor",
    job_name=RETRAIN_JOB,
    minimum_interval_seconds=RETRAIN_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Asset sensor on feature_drift and forecast_track_record: requests ml_retrain_job on feature drift, "
        "a champion worse than the best baseline on live data, a missing or stale champion; with a cooldown."
    ),
)
def ml_retrain_sensor(
    context: MultiAssetSensorEvaluationContext, ml: MLPlatformResource
) -> RunRequest | SkipReason:
    result = decide_retrain(retrain_inputs(context, ml, time.time()), run_config=ml.retrain_run_config())
    # Answered (a request, or nothing due): the verdicts seen are consumed. Held back by the cooldown or
    # a run in flight: they stay unconsumed and are judged again on the next tick.
    if isinstance(result, RunRequest) or result.skip_message.startswith("no retrain due"):
        context.advance_all_cursors()
    return result


def post_reload(serving_url: str, admin_api_key: str, timeout_s: float = 10.0) -> requests.Response:
    return requests.post(
        serving_url.rstrip("/") + RELOAD_PATH, headers={"X-API-Key": admin_api_key}, timeout=timeout_s
    )


@sensor(
    name="ml_model_reload_sensor",
    minimum_interval_seconds=RELOAD_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="After a promotion, asks the serving API to reload the champion (POST /v1/ml/model/reload).",
)
def ml_model_reload_sensor(context: SensorEvaluationContext, ml: MLPlatformResource) -> SkipReason:
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=PROMOTION_KEY, after_storage_id=after), limit=50, ascending=True
    ).records
    if not records:
        return SkipReason("no new model_promotion materialization")
    latest = records[-1].storage_id
    promoted = [r for r in records if r.asset_materialization and _promoted(r.asset_materialization.metadata)]
    if not promoted:
        context.update_cursor(str(latest))
        return SkipReason(f"{len(records)} promotion evaluation(s), none promoted a new champion")
    if not (ml.serving_url and ml.admin_api_key):
        context.update_cursor(str(latest))
        return SkipReason(
            "champion promoted; CRYPTO_SERVING_URL / CRYPTO_ADMIN_API_KEY unset, serving polls the alias"
        )
    try:
        response = post_reload(ml.serving_url, ml.admin_api_key)
    except requests.RequestException as exc:
        # Cursor not advanced: the next tick retries (serving's own alias poll covers a long outage).
        return SkipReason(f"champion promoted; reload request failed, will retry: {exc}")
    context.update_cursor(str(latest))
    return SkipReason(f"champion promoted; POST {RELOAD_PATH} → HTTP {response.status_code}")


def _promoted(metadata: Any) -> bool:
    value = metadata.get("promoted")
    return bool(value.value) if value is not None else False


# Declarative automation of the ML group (the daily track record's AutomationCondition) needs a running
# automation-condition sensor. The implicit `default_automation_condition_sensor` Dagster adds is built with
# the class default, STOPPED (dagster/_core/definitions/utils.py), so the track record could silently
# never run after `make run`; this one is declared, and RUNNING.
ml_automation_sensor = AutomationConditionSensorDefinition(
    "ml_automation_sensor",
    target=AssetSelection.assets(TRACK_RECORD_KEY),
    default_status=DefaultSensorStatus.RUNNING,
    description="Evaluates the automation conditions of the ML group: the daily forecast track record.",
)

ML_SENSORS = [ml_retrain_sensor, ml_model_reload_sensor, ml_automation_sensor]
