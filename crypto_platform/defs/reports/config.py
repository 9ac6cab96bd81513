"""Run configuration of the report assets (editable in the launchpad)."""

from __future__ import annotations

from dagster import Config
from pydantic import Field

GROUP = "reports"


class DailyReportConfig(Config):
    date: str | None = Field(default=None, description="Report day (YYYY-MM-DD); empty: today (UTC).")
