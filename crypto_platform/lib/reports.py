"""The daily platform report: markdown from what the caller gathered (pure; no I/O here).

Every section degrades to an explicit 'unknown' when its source is missing or unreachable, so a
report is always produced and never pretends to know more than it does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

UNKNOWN = "unknown"


@dataclass(frozen=True)
class SymbolFreshness:
    symbol: str
    last_bar: str | None  # ISO UTC open time of the newest stored bar
    age_hours: float | None  # hours between the end of that bar and the report time
    source: str | None = None


@dataclass(frozen=True)
class QualityStatus:
    symbol: str
    day: str | None
    status: str | None  # OK / WARN / FAIL as the quality report says
    failed_checks: Sequence[str] = ()
    warnings: Sequence[str] = ()


@dataclass(frozen=True)
class ChampionInfo:
    version: str
    family: str
    created: str | None
    holdout_qlike: float | None
    beats_baselines: bool | None
    data_window: str | None = None
    last_decision: str | None = None  # the latest promotion decision recorded on any version


@dataclass(frozen=True)
class DriftStatus:
    evaluated_at: str
    feature_drift: bool
    label_drift: bool
    drifted_features: Sequence[str] = ()
    champion_version: str | None = None


@dataclass(frozen=True)
class DailyReport:
    day: str
    generated_at: str
    freshness: Sequence[SymbolFreshness] = ()
    quality: Sequence[QualityStatus] = ()
    champion: ChampionInfo | None = None
    champion_error: str | None = None  # why the registry could not be read, if it could not
    drift: DriftStatus | None = None
    served: ServedToday | None = None  # None: the history DB could not be read
    served_error: str | None = None
    track_record_markdown: str | None = None  # the newest forecast_track_record's table
    notes: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class ServedToday:
    """What the history DB holds for the report's UTC day (rows by their `created_at`)."""

    signals: int  # heuristic signals served by the API
    ml_predictions: int  # ML predictions served by the API (REST, GraphQL, gRPC)
    stream_forecasts: int  # the Kafka scorer's per-bar forecasts stored by the prediction sink


# Data older than this many bar lengths is called stale (the hourly refresh runs at minute 5).
STALE_AFTER_HOURS = 3.0


def _fmt_float(value: float | None, spec: str) -> str:
    return UNKNOWN if value is None or not math.isfinite(value) else format(value, spec)


def _freshness_section(items: Sequence[SymbolFreshness]) -> list[str]:
    lines = ["## Data freshness", ""]
    if not items:
        return [*lines, f"No symbols configured or no stored bars: {UNKNOWN}.", ""]
    lines += ["| symbol | last bar (UTC) | age (h) | source | status |", "|---|---|---:|---|---|"]
    for f in items:
        if f.last_bar is None or f.age_hours is None:
            status = "no data"
        else:
            status = "fresh" if f.age_hours <= STALE_AFTER_HOURS else "STALE"
        lines.append(
            f"| {f.symbol} | {f.last_bar or UNKNOWN} | {_fmt_float(f.age_hours, '.1f')} | "
            f"{f.source or UNKNOWN} | {status} |"
        )
    return [*lines, ""]


def _quality_section(items: Sequence[QualityStatus]) -> list[str]:
    lines = ["## Data quality (latest report per symbol)", ""]
    if not items:
        return [*lines, f"No quality report stored: {UNKNOWN}.", ""]
    lines += ["| symbol | day | status | failed checks | warnings |", "|---|---|---|---|---|"]
    for q in items:
        lines.append(
            f"| {q.symbol} | {q.day or UNKNOWN} | {q.status or UNKNOWN} | "
            f"{', '.join(q.failed_checks) or '—'} | {', '.join(q.warnings) or '—'} |"
        )
    return [*lines, ""]


def _champion_section(champion: ChampionInfo | None, error: str | None) -> list[str]:
    lines = ["## Model", ""]
    if champion is None:
        why = f" ({error})" if error else ""
        return [*lines, f"Champion: {UNKNOWN if error else 'none registered yet'}{why}.", ""]
    beats = {True: "yes", False: "NO", None: UNKNOWN}[champion.beats_baselines]
    lines += [
        f"- Champion: version **{champion.version}** ({champion.family})",
        f"- Registered: {champion.created or UNKNOWN}; trained on {champion.data_window or UNKNOWN}",
        f"- Holdout QLIKE: {_fmt_float(champion.holdout_qlike, '.4f')}",
        f"- Beats every baseline on its holdout: {beats}",
    ]
    if champion.last_decision:
        lines.append(f"- Last promotion decision: {champion.last_decision}")
    return [*lines, ""]


def _drift_section(drift: DriftStatus | None) -> list[str]:
    lines = ["## Drift", ""]
    if drift is None:
        return [*lines, f"No drift evaluation yet: {UNKNOWN}.", ""]
    features = "DETECTED in " + ", ".join(drift.drifted_features) if drift.feature_drift else "none"
    lines += [
        f"- Evaluated: {drift.evaluated_at} (against champion v{drift.champion_version or UNKNOWN})",
        f"- Feature drift: {features}",
        f"- Label drift (realized volatility): {'detected' if drift.label_drift else 'none'}",
    ]
    return [*lines, ""]


def _serving_section(served: ServedToday | None, error: str | None) -> list[str]:
    lines = ["## Serving (history DB, this UTC day)", ""]
    if served is None:
        return [*lines, f"Signals served: {UNKNOWN}" + (f" ({error})" if error else "") + ".", ""]
    return [
        *lines,
        f"Signals served: {served.signals}.",
        f"ML predictions served: {served.ml_predictions}.",
        f"Scorer forecasts stored (one per symbol, bar and model version): {served.stream_forecasts}.",
        "",
    ]


def build_daily_report(report: DailyReport) -> str:
    """The markdown document written to `reports/daily/<day>.md`."""
    lines = [f"# Daily platform report — {report.day}", "", f"Generated {report.generated_at}.", ""]
    lines += _freshness_section(report.freshness)
    lines += _quality_section(report.quality)
    lines += _champion_section(report.champion, report.champion_error)
    lines += _drift_section(report.drift)
    lines += _serving_section(report.served, report.served_error)
    lines += ["## Forecast track record", ""]
    lines += [report.track_record_markdown or f"No track record yet: {UNKNOWN}.", ""]
    if report.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    return "\n".join(lines)


def report_key(day: str) -> str:
    """Key of the report in the data location."""
    return f"reports/daily/{day}.md"
