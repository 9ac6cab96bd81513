"""Jobs and schedules of the ML group: the weekly retrain and the daily drift verdict."""

# No `from __future__ import annotations`: Dagster inspects the context and resource annotations.

from datetime import timedelta

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from crypto_platform.defs.k8s_tags import INGESTION_RUN_TAGS, TRAINING_RUN_TAGS
from crypto_platform.defs.ml.config import DAILY_DRIFT_CRON, DRIFT_JOB, RETRAIN_JOB, WEEKLY_RETRAIN_CRON
from crypto_platform.defs.ml.sensors import DRIFT_KEY, TRIGGER_TAG
from crypto_platform.defs.resources import MLPlatformResource
from crypto_platform.lib.model import registry

ml_retrain_job = define_asset_job(
    RETRAIN_JOB,
    selection=AssetSelection.assets(AssetKey("trained_model"), AssetKey("model_promotion"), DRIFT_KEY),
    description="Train a challenger, run the promotion gate, re-evaluate drift against the champion.",
    run_tags=TRAINING_RUN_TAGS,
)

# The verdict alone: no training. A fresh verdict each day is what the drift gauge and the retrain
# asset sensor read; the sensor launches ml_retrain_job only when that verdict says drift.
ml_drift_job = define_asset_job(
    DRIFT_JOB,
    selection=AssetSelection.assets(DRIFT_KEY),
    description="Judge the last days of features against the champion's reference (no training).",
    # A polars pass over a week of features and the reference: the ingestion class's pod, and not
    # the training class, whose run queue admits one at a time (a retrain must not hold the verdict).
    run_tags=INGESTION_RUN_TAGS,
)


@schedule(
    name="ml_weekly_retrain",
    cron_schedule=WEEKLY_RETRAIN_CRON,
    execution_timezone="UTC",
    job=ml_retrain_job,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every Monday 03:00 UTC: retrain on the latest window, whatever drift says.",
)
def ml_weekly_retrain(context: ScheduleEvaluationContext, ml: MLPlatformResource) -> RunRequest:
    return RunRequest(
        run_key=f"weekly-{context.scheduled_execution_time:%Y-%m-%d}",
        run_config=ml.retrain_run_config(),
        tags={TRIGGER_TAG: "weekly"},
    )


def drift_run_config(last_day: str) -> dict:
    """Run config of `feature_drift` judging the window that ends with the UTC day `last_day`."""
    return {"ops": {"feature_drift": {"config": {"end_date": last_day}}}}


@schedule(
    name="ml_daily_drift",
    cron_schedule=DAILY_DRIFT_CRON,
    execution_timezone="UTC",
    job=ml_drift_job,
    default_status=DefaultScheduleStatus.RUNNING,
    description=(
        "Daily 00:20 UTC: the drift verdict on the last full UTC days (no retrain; the retrain sensor "
        "answers a verdict that says drift). Skipped while there is no champion to judge against."
    ),
)
def ml_daily_drift(context: ScheduleEvaluationContext, ml: MLPlatformResource) -> RunRequest | SkipReason:
    if registry.alias_version(ml.client(), registry.CHAMPION, ml.model_name) is None:
        # Nothing to compare with yet; the retrain sensor trains the first champion (a due retrain).
        return SkipReason(f"no champion of {ml.model_name} yet: no reference to judge drift against")
    # The day that just ended is the last full one: the window is whole days, as the benchmark judges.
    last_day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
    return RunRequest(
        run_key=f"drift-{last_day}",
        run_config=drift_run_config(last_day),
        tags={TRIGGER_TAG: "daily-drift"},
    )


ML_SCHEDULES = [ml_weekly_retrain, ml_daily_drift]
ML_JOBS = [ml_retrain_job, ml_drift_job]
