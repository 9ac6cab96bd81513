"""Job and schedule of the ML group: the weekly retrain."""

# No `from __future__ import annotations`: Dagster inspects the context and resource annotations.

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from crypto_platform.defs.k8s_tags import TRAINING_RUN_TAGS
from crypto_platform.defs.ml.config import RETRAIN_JOB, WEEKLY_RETRAIN_CRON
from crypto_platform.defs.resources import MLPlatformResource

ml_retrain_job = define_asset_job(
    RETRAIN_JOB,
    selection=AssetSelection.assets(
        AssetKey("trained_model"), AssetKey("model_promotion"), AssetKey("feature_drift")
    ),
    description="Train a challenger, run the promotion gate, re-evaluate drift against the champion.",
    run_tags=TRAINING_RUN_TAGS,
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
        tags={"crypto_platform/trigger": "weekly"},
    )


ML_SCHEDULES = [ml_weekly_retrain]
ML_JOBS = [ml_retrain_job]
