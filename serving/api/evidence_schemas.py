"""Response bodies of the read-only evidence endpoints (`/v1/evidence/...`) the web UI's views read.

Every number says its unit in its name or its docstring; every piece that can be missing (no model,
no served forecasts yet, no drift artifact, no reports) is None or empty with a `note` saying why, so
the UI can show an explained empty state instead of an error.
"""

from __future__ import annotations

import msgspec


class Interval(msgspec.Struct, kw_only=True):
    """A forecast's interval on the next-24-bar realized volatility (log return / 24 bars)."""

    lower: float
    upper: float
    level: float | None = None  # central coverage, e.g. 0.8; None when the payload does not say


class OverviewForecast(msgspec.Struct, kw_only=True):
    """The champion's forecast at the newest closed bar (computed for the view; not recorded)."""

    model_version: str
    predicted_volatility: float  # realized vol of the next 24 bars, log return / 24 bars
    volatility_regime: str
    risk_level: str
    confidence: float
    interval: Interval | None = None


class OverviewRow(msgspec.Struct, kw_only=True):
    symbol: str
    timeframe: str
    source: str | None = None  # "exchange" | "simulated" | "unknown"
    origin: str | None = None  # "store" | "live"
    last_bar_ts: int | None = None  # open time, epoch ms
    last_bar_time: str | None = None
    age_s: float | None = None  # seconds since the newest bar closed, on the server's market clock
    stale: bool = False
    price: float | None = None  # last close, quote currency
    change_24h: float | None = None  # fraction: close / close 24 h earlier − 1
    realized_vol_24: float | None = None  # log return / 24 bars, the last 24 bars
    vol_regime: str | None = None  # the heuristic's regime of vol24
    risk_score: float | None = None  # heuristic, 0..1
    forecast: OverviewForecast | None = None
    forecast_note: str | None = None  # why there is no forecast
    sparkline: list[float] = msgspec.field(default_factory=list)  # closes, oldest first
    sparkline_bars: int = 0
    error: str | None = None  # the whole row could not be computed (market unavailable, ...)


class Overview(msgspec.Struct, kw_only=True):
    generated_at: str
    timeframe: str
    model_version: str | None
    model_note: str | None
    poll_s: float  # how often the UI should refresh (at most every bar close)
    rows: list[OverviewRow]


class Bar(msgspec.Struct, kw_only=True):
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    realized_vol_24: float | None = None


class RegimeSpan(msgspec.Struct, kw_only=True):
    """Consecutive bars with one heuristic regime: [start_ts, end_ts] open times, epoch ms."""

    start_ts: int
    end_ts: int
    regime: str


class ServedForecast(msgspec.Struct, kw_only=True):
    """A forecast that was served (history DB), against what happened in the 24 bars after it."""

    made_at_ts: int  # open time of the bar the forecast was made at, epoch ms
    target_ts: int  # open time of the last bar the forecast covers (made_at + 24 bars)
    model_version: str
    predicted_volatility: float
    realized_volatility: float | None  # realized_vol_24 at target_ts; None until those bars closed
    qlike: float | None  # per-forecast QLIKE on variances; None without a realized value
    interval: Interval | None = None  # the narrowest of `intervals`, the one the table shows
    intervals: list[Interval] = []  # every level it was served with, narrowest first
    served_at: str  # when it was first served (UTC)
    times_served: int  # how often this (bar, version) forecast was served


class RollingQlike(msgspec.Struct, kw_only=True):
    """Mean QLIKE over the last `window` matched forecasts, at each matched forecast's target time."""

    target_ts: int
    champion: float
    baseline: float


class IntervalCoverage(msgspec.Struct, kw_only=True):
    """How often the realized volatility fell inside the served interval of one level."""

    level: float | None  # None: intervals whose payload did not say their level
    n: int  # matched forecasts that carried an interval of this level
    inside: int  # … whose realized volatility was within it (bounds inclusive)


class TrackRecord(msgspec.Struct, kw_only=True):
    matched: int  # served forecasts whose 24 bars have all closed
    pending: int  # served forecasts still waiting for their bars
    champion_qlike: float | None
    baseline_qlike: dict[str, float]  # each persistence baseline over the same matched forecasts
    best_baseline: str | None
    window: int
    rolling: list[RollingQlike]
    note: str | None = None
    interval_coverage: list[IntervalCoverage] = []


class SymbolSeries(msgspec.Struct, kw_only=True):
    symbol: str
    timeframe: str
    source: str
    origin: str
    horizon_bars: int
    calm_below: float  # forecast scale (log return / 24 bars): regime thresholds of lib.forecast
    turbulent_from: float
    bars: list[Bar]
    regimes: list[RegimeSpan]
    forecasts: list[ServedForecast]
    track_record: TrackRecord
    note: str | None = None


class VersionCard(msgspec.Struct, kw_only=True):
    version: str
    aliases: list[str]
    family: str | None
    created: str | None
    run_id: str | None
    training_run_id: str | None
    data_window: str | None
    symbols: str | None
    timeframe: str | None
    run_url: str | None  # the MLflow UI's page of the run, when the tracking URI is an http(s) server


class EvaluationRow(msgspec.Struct, kw_only=True):
    """One forecaster on the training run's holdout (lib.model.evaluation)."""

    name: str
    kind: str | None = None
    qlike: float | None = None
    mse_var: float | None = None
    rmse_vol: float | None = None
    mz_b: float | None = None
    mz_r2: float | None = None
    dm_stat: float | None = None
    dm_pvalue: float | None = None
    n: int | None = None


class Evaluation(msgspec.Struct, kw_only=True):
    run_id: str | None
    source: str  # the artifact path it was read from, or "run metrics"
    primary: str | None
    best_baseline: str | None
    rows: list[EvaluationRow]
    metrics: dict[str, float]  # the run's metrics (holdout_qlike, ...)
    note: str | None = None


class PromotionEntry(msgspec.Struct, kw_only=True):
    version: str
    family: str | None
    created: str | None
    decision: str | None  # promoted | rejected | None (no decision recorded)
    reason: str | None
    decided_at: str | None
    challenger_qlike: float | None
    champion_qlike: float | None
    relative_improvement: float | None
    champion_version: str | None


class DriftFeature(msgspec.Struct, kw_only=True):
    feature: str
    ks_statistic: float | None = None
    p_value_adjusted: float | None = None
    psi: float | None = None
    drifted: bool | None = None
    is_label: bool = False


class DriftStatus(msgspec.Struct, kw_only=True):
    key: str  # where it was read from in the data location
    current_window: str | None
    champion_version: str | None
    feature_drift_detected: bool | None
    label_drift_detected: bool | None
    features: list[DriftFeature]


class ModelView(msgspec.Struct, kw_only=True):
    model_name: str
    tracking_uri: str  # the MLflow server (credentials removed)
    served_version: str | None
    champion: VersionCard | None
    challenger: VersionCard | None
    evaluation: Evaluation | None
    promotions: list[PromotionEntry]
    drift: DriftStatus | None
    drift_note: str | None
    registry_error: str | None  # MLflow could not be asked (everything registry-side is then empty)
    generated_at: str


class DailyReportEntry(msgspec.Struct, kw_only=True):
    day: str
    key: str


class QualityEntry(msgspec.Struct, kw_only=True):
    symbol: str
    day: str | None
    status: str | None  # OK | WARN | FAIL
    failed_checks: list[str]
    warnings: list[str]
    rows: int | None = None
    expected_rows: int | None = None
    missing_bars: int | None = None
    duplicate_rows: int | None = None
    markdown: str | None = None
    note: str | None = None


class ReportsView(msgspec.Struct, kw_only=True):
    daily: list[DailyReportEntry]
    quality: list[QualityEntry]
    note: str | None = None


class DailyReportText(msgspec.Struct, kw_only=True):
    day: str
    key: str
    markdown: str
