"""Automation of the model lifecycle.

`ml_retrain_sensor` requests `ml_retrain_job` when the latest `feature_drift` evaluation found feature
drift, when there is no champion, or when the champion is older than CHAMPION_MAX_AGE_DAYS. Its cursor
holds the time of its last request; no new request is made within RETRAIN_COOLDOWN_S of it, nor while
a retrain run is queued or running, so a drift that retraining cannot cure asks for at most one
retrain per cooldown instead of looping. A drift verdict older than the last request is ignored (the
retrain it triggered re-evaluates drift against the new champion).

`ml_model_reload_sensor` watches `model_promotion` materialisations and, after a promotion, POSTs
/v1/ml/model/reload on the serving API with the admin key so the new champion is picked up at once.
Serving also polls the `champion` alias, so this only shortens the delay; without CRYPTO_SERVING_URL /
CRYPTO_ADMIN_API_KEY it does nothing.
"""

# No `from __future__ import annotations`: Dagster inspects the context and resource annotations.

import json
import time
from dataclasses import dataclass
from typing import Any

import requests
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
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
TRIGGER_TAG = "crypto_platform/trigger"
REASONS_TAG = "crypto_platform/retrain_reasons"
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


def retrain_reasons(inputs: RetrainInputs, max_age_s: float) -> list[str]:
    reasons = []
    fresh_drift = inputs.drift_at is not None and (
        inputs.last_request is None or inputs.drift_at > inputs.last_request
    )
    if inputs.drift_detected and fresh_drift:
        reasons.append("feature drift in " + (", ".join(inputs.drifted_features) or "features"))
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
        return SkipReason(f"no retrain due: no fresh drift, champion present and recent{unknown}")
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
    trigger = "drift" if reasons[0].startswith("feature drift") else "due"
    return RunRequest(
        run_key=f"retrain-{int(inputs.now)}",
        run_config=run_config or {},
        tags={TRIGGER_TAG: trigger, REASONS_TAG: "; ".join(reasons)[:500]},
    )


def _latest_drift(context: SensorEvaluationContext) -> tuple[bool | None, float | None, tuple[str, ...]]:
    event = context.instance.get_latest_materialization_event(DRIFT_KEY)
    if event is None or event.asset_materialization is None:
        return None, None, ()
    meta = event.asset_materialization.metadata
    detected = meta.get("feature_drift_detected")
    drifted = meta.get("drifted_features")
    return (
        bool(detected.value) if detected is not None else None,
        event.timestamp,
        tuple(drifted.value) if drifted is not None and drifted.value else (),
    )


@sensor(
    name="ml_retrain_sensor",
    job_name=RETRAIN_JOB,
    minimum_interval_seconds=RETRAIN_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests ml_retrain_job on feature drift, a missing or stale champion; with a cooldown.",
)
def ml_retrain_sensor(context: SensorEvaluationContext, ml: MLPlatformResource) -> RunRequest | SkipReason:
    now = time.time()
    cursor = json.loads(context.cursor) if context.cursor else {}
    drift, drift_at, drifted = _latest_drift(context)
    age: float | None = None
    error: str | None = None
    try:
        age = registry.champion_age_seconds(ml.client(), ml.model_name, now)
    except (MlflowException, OSError, requests.RequestException) as exc:
        error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    in_flight = len(
        context.instance.get_run_ids(RunsFilter(job_name=RETRAIN_JOB, statuses=_IN_FLIGHT), limit=5)
    )
    result = decide_retrain(
        RetrainInputs(now, cursor.get("last_request_ts"), drift, drift_at, drifted, age, error, in_flight),
        run_config=ml.retrain_run_config(),
    )
    if isinstance(result, RunRequest):
        context.update_cursor(json.dumps({"last_request_ts": now}))
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


ML_SENSORS = [ml_retrain_sensor, ml_model_reload_sensor]
