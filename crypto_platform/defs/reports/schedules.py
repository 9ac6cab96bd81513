"""Job and schedule of the reports group: the daily report, written as the UTC day starts."""

# No `from __future__ import annotations`: Dagster inspects the context annotation.

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from crypto_platform.defs.k8s_tags import REPORT_RUN_TAGS

DAILY_REPORT_JOB = "daily_report_job"
DAILY_REPORT_CRON = "30 0 * * *"  # after the 00:05 refresh has stored the previous day's last bar

daily_report_job = define_asset_job(
    DAILY_REPORT_JOB,
    selection=AssetSelection.assets(AssetKey("daily_report")),
    description="Write reports/daily/<date>.md.",
    run_tags=REPORT_RUN_TAGS,
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


REPORT_SCHEDULES = [daily_report_schedule]
REPORT_JOBS = [daily_report_job]
