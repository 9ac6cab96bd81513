"""Jobs and schedules of the ML group: a weekly retrain and the daily report."""

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

from crypto_platform.defs.ml.config import RETRAIN_JOB, WEEKLY_RETRAIN_CRON
from crypto_platform.defs.ml.resources import MLPlatformResource

DAILY_REPORT_JOB = "daily_report_job"
DAILY_REPORT_CRON = "30 0 * * *"  # after the 00:05 refresh has stored the previous day's last bar

ml_retrain_job = define_asset_job(
    RETRAIN_JOB,
    selection=AssetSelection.assets(
        AssetKey("trained_model"), AssetKey("model_promotion"), AssetKey("feature_drift")
    ),
    description="Train a challenger, run the promotion gate, re-evaluate drift against the champion.",
)

daily_report_job = define_asset_job(
    DAILY_REPORT_JOB,
    selection=AssetSelection.assets(AssetKey("daily_report")),
    description="Write reports/daily/<date>.md.",
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


@schedule(
    name="daily_report_schedule",
    cron_schedule=DAILY_REPORT_CRON,
    execution_timezone="UTC",
    job=daily_report_job,
    default_status=DefaultScheduleStatus.RUNNING,
    description="00:30 UTC: the state of the platform as the day starts (reports/daily/<today>.md).",
)
def daily_report_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    day = context.scheduled_execution_time.date().isoformat()
    return RunRequest(
        run_key=f"daily-report-{day}",
        run_config={"ops": {"daily_report": {"config": {"date": day}}}},
    )


ML_SCHEDULES = [ml_weekly_retrain, daily_report_schedule]
ML_JOBS = [ml_retrain_job, daily_report_job]
