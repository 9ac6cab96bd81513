"""Data-quality rules for OHLCV frames, and the per-symbol, per-UTC-day quality report.

Everything here is a pure function of a single-symbol OHLCV frame that may be raw (unsorted,
duplicated, badly typed). Checks are split by consequence:

* blocking (schema, OHLC consistency, uniqueness): the data is wrong and must not flow downstream;
* warnings (continuity, freshness): real Binance history has outage gaps and maintenance bars that
  are facts about the market, not errors, so they are reported but never stop the pipeline.

Statistics that judge a bar against "normal" (return outliers, volume anomalies) use robust
estimates (median and MAD) over the day plus an optional `context` frame of earlier bars, so one
quiet or one wild day does not define its own yardstick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from crypto_platform.lib.market.schema import OHLCV_COLUMNS, OHLCV_SCHEMA, find_gaps
from crypto_platform.lib.market.timeframes import timeframe_ms, validate_timeframe

DAY_MS = 86_400_000
PRICE_COLUMNS = ("open", "high", "low", "close")
# |log return − median| beyond this many robust sigmas is reported as an outlier. Hourly crypto
# returns have excess kurtosis ~20–40, so a normal-theory 3–4σ would flag hundreds of genuine moves a
# year. With 7 days of context, 10 robust σ flags 7–36 bars a year of real BTC/USDT (2018–2025; 8σ:
# 24–64), among them the 2020-03-12 crash hours: few enough to be read.
OUTLIER_K = 10.0
# Log-volume robust z-score beyond which a bar's volume is reported as anomalous (1–10 bars a year on
# real BTC/USDT with 7 days of context; mostly near-empty bars around exchange maintenance).
VOLUME_Z = 5.0
# 1.4826 · MAD estimates σ for normal data.
MAD_TO_SIGMA = 1.4826
# Floors for the robust scales, so a flat market (stablecoin pair, halted trading) does not turn a
# 0.01 % tick into a "100-sigma" event: 1 bp of log return per hour of bar, 0.05 of log volume.
RETURN_SIGMA_FLOOR_PER_HOUR = 1e-4
LOG_VOLUME_SIGMA_FLOOR = 0.05
# Fewer returns than this (day + context) and the robust scale is too noisy to judge outliers.
MIN_ROBUST_SAMPLE = 24
_SAMPLE_LIMIT = 5  # offending timestamps listed in check metadata


def iso_utc(ts_ms: int) -> str:
    """`1518048000000` → `2018-02-08T00:00:00Z`."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_float(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


@dataclass(frozen=True)
class CheckOutcome:
    """One rule's verdict. `metadata` holds only JSON-safe values (str, int, float, bool, None, lists)."""

    name: str
    passed: bool
    blocking: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return "error" if self.blocking else "warning"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "blocking": self.blocking,
            "severity": self.severity,
            "description": self.description,
            "metadata": self.metadata,
        }


# --- individual checks -------------------------------------------------------------------------------


def check_schema(frame: pl.DataFrame) -> CheckOutcome:
    """Blocking: the OHLCV columns exist with the typed schema and hold no null or NaN."""
    missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
    wrong = {
        c: str(frame.schema[c])
        for c, t in OHLCV_SCHEMA.items()
        if c in frame.columns and frame.schema[c] != t
    }
    present = [c for c in OHLCV_COLUMNS if c in frame.columns]
    nulls = {c: int(n) for c, n in zip(present, frame.select(present).null_count().row(0), strict=True) if n}
    floats = [c for c in present if frame.schema[c].is_float()]
    nans = {}
    if floats and frame.height:
        counts = frame.select(pl.col(c).is_nan().sum() for c in floats).row(0)
        nans = {c: int(n) for c, n in zip(floats, counts, strict=True) if n}
    passed = not (missing or wrong or nulls or nans)
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if wrong:
        problems.append(
            "wrong dtypes " + ", ".join(f"{c}: {t} (want {OHLCV_SCHEMA[c]})" for c, t in wrong.items())
        )
    if nulls:
        problems.append(f"nulls {nulls}")
    if nans:
        problems.append(f"NaN {nans}")
    return CheckOutcome(
        name="schema",
        passed=passed,
        blocking=True,
        description="columns and dtypes match the OHLCV schema, no nulls/NaN"
        if passed
        else "; ".join(problems),
        metadata={
            "rows": frame.height,
            "missing_columns": missing,
            "wrong_dtypes": wrong,
            "null_counts": nulls,
            "nan_counts": nans,
        },
    )


def _unusable(name: str, blocking: bool, reason: str) -> CheckOutcome:
    return CheckOutcome(name, False, blocking, f"not evaluated: {reason}", {"evaluated": False})


def _columns_missing(frame: pl.DataFrame, needed: tuple[str, ...]) -> str | None:
    missing = [c for c in needed if c not in frame.columns]
    return f"missing columns {missing}" if missing else None


def _sample_ts(frame: pl.DataFrame, mask: pl.Expr) -> list[str]:
    hits = frame.filter(mask)["ts"].cast(pl.Int64, strict=False).drop_nulls().sort().head(_SAMPLE_LIMIT)
    return [iso_utc(int(t)) for t in hits.to_list()]


def check_ohlc_consistency(frame: pl.DataFrame) -> CheckOutcome:
    """Blocking: high ≥ max(open, close), low ≤ min(open, close), high ≥ low, prices > 0, volume ≥ 0."""
    reason = _columns_missing(frame, OHLCV_COLUMNS)
    if reason:
        return _unusable("ohlc_consistency", True, reason)
    o, h, lo, c, v = (
        pl.col(x).cast(pl.Float64, strict=False) for x in ("open", "high", "low", "close", "volume")
    )
    rules = {
        "high_below_open_or_close": h < pl.max_horizontal(o, c),
        "low_above_open_or_close": lo > pl.min_horizontal(o, c),
        "high_below_low": h < lo,
        "non_positive_price": pl.min_horizontal(o, h, lo, c) <= 0,
        "negative_volume": v < 0,
    }
    counts = frame.select(expr.fill_null(False).sum().alias(name) for name, expr in rules.items()).row(
        0, named=True
    )
    any_bad = pl.any_horizontal(expr.fill_null(False) for expr in rules.values())
    violations = int(frame.select(any_bad.sum()).item()) if frame.height else 0
    by_rule = {k: int(n or 0) for k, n in counts.items()} if frame.height else dict.fromkeys(rules, 0)
    return CheckOutcome(
        name="ohlc_consistency",
        passed=violations == 0,
        blocking=True,
        description="every bar has a consistent open/high/low/close and non-negative volume"
        if violations == 0
        else f"{violations} bar(s) with inconsistent OHLC or volume",
        metadata={
            "violations": violations,
            "by_rule": by_rule,
            "first_offending_ts": _sample_ts(frame, any_bad),
        },
    )


def check_uniqueness(frame: pl.DataFrame) -> CheckOutcome:
    """Blocking: each bar timestamp appears once (duplicates that disagree are counted separately)."""
    reason = _columns_missing(frame, ("ts",))
    if reason:
        return _unusable("uniqueness", True, reason)
    dup_rows = frame.height - frame["ts"].n_unique()
    dupes = frame.filter(pl.col("ts").is_duplicated())
    value_cols = [c for c in OHLCV_COLUMNS if c in frame.columns and c != "ts"]
    conflicting = 0
    if dupes.height and value_cols:
        conflicting = (
            dupes.group_by("ts")
            .agg(pl.struct(value_cols).n_unique().alias("versions"))
            .filter(pl.col("versions") > 1)
            .height
        )
    dup_ts = sorted({int(t) for t in dupes["ts"].drop_nulls().to_list()})
    return CheckOutcome(
        name="uniqueness",
        passed=dup_rows == 0,
        blocking=True,
        description="no duplicate bar timestamps"
        if dup_rows == 0
        else f"{dup_rows} duplicate row(s) over {len(dup_ts)} timestamp(s), {conflicting} conflicting",
        metadata={
            "duplicate_rows": dup_rows,
            "duplicated_timestamps": len(dup_ts),
            "conflicting_timestamps": conflicting,
            "first_duplicated_ts": [iso_utc(t) for t in dup_ts[:_SAMPLE_LIMIT]],
        },
    )


def _clean_ts(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(pl.col("ts").cast(pl.Int64, strict=False)).drop_nulls().unique().sort("ts")


def _missing_on_grid(ts: pl.DataFrame, bar_ms: int, start_ms: int, end_ms: int) -> list[int]:
    """Aligned bar opens in [start_ms, end_ms) with no bar in `ts`."""
    first = -(-start_ms // bar_ms) * bar_ms
    if end_ms <= first:
        return []
    grid = pl.DataFrame({"ts": pl.int_range(first, end_ms, bar_ms, eager=True, dtype=pl.Int64)})
    return grid.join(ts, on="ts", how="anti")["ts"].to_list()


def check_continuity(
    frame: pl.DataFrame,
    timeframe: str,
    expected_start_ms: int | None = None,
    expected_end_ms: int | None = None,
) -> CheckOutcome:
    """Warning: bars are aligned to the bar length and none is missing.

    Without an expected window only holes between the first and last bar count; with
    [expected_start_ms, expected_end_ms) bars missing at either edge count too (a day whose first
    six hours are absent). Gaps are reported, not failed on: Binance outages (up to 33 h) are real.
    """
    tf = validate_timeframe(timeframe)
    bar_ms = timeframe_ms(tf)
    reason = _columns_missing(frame, ("ts",))
    if reason:
        return _unusable("continuity", False, reason)
    ts = _clean_ts(frame)
    misaligned = ts.filter(pl.col("ts") % bar_ms != 0)
    aligned = ts.filter(pl.col("ts") % bar_ms == 0)
    gaps = [g.to_dict() for g in find_gaps(aligned, bar_ms)]
    missing = sum(g["missing_bars"] for g in gaps)
    edge: dict[str, int] = {}
    if expected_start_ms is not None or expected_end_ms is not None:
        first, last = aligned["ts"].min(), aligned["ts"].max()
        # With one side of the window open and no bar at all there is nothing to count against.
        start = expected_start_ms if expected_start_ms is not None else (first if first is not None else 0)
        end = expected_end_ms if expected_end_ms is not None else (last + bar_ms if last is not None else 0)
        missing_ts = _missing_on_grid(aligned, bar_ms, int(start), int(end))
        # Count bars missing at the edges without double-counting holes find_gaps already saw.
        if first is None:
            edge = {"at_start": len(missing_ts), "at_end": 0}
        else:
            edge = {
                "at_start": sum(1 for t in missing_ts if t < first),
                "at_end": sum(1 for t in missing_ts if t > last),
            }
        missing += edge["at_start"] + edge["at_end"]
    passed = missing == 0 and misaligned.height == 0
    parts = []
    if missing:
        where = [f"{missing - sum(edge.values())} in {len(gaps)} internal gap(s)"] if gaps else []
        where += [f"{edge[k]} {k.replace('_', ' the ')}" for k in ("at_start", "at_end") if edge.get(k)]
        parts.append(f"{missing} missing {tf} bar(s) ({', '.join(where)})")
    if misaligned.height:
        parts.append(f"{misaligned.height} bar(s) not aligned to {tf}")
    return CheckOutcome(
        name="continuity",
        passed=passed,
        blocking=False,
        description="; ".join(parts) if parts else f"no missing or misaligned {tf} bars",
        metadata={
            "timeframe": tf,
            "missing_bars": missing,
            "gaps": [{"after": iso_utc(g["after_ts"]), "missing_bars": g["missing_bars"]} for g in gaps],
            "missing_at_edges": edge,
            "misaligned_bars": misaligned.height,
            "first_misaligned_ts": [iso_utc(int(t)) for t in misaligned["ts"].head(_SAMPLE_LIMIT).to_list()],
        },
    )


def check_freshness(
    frame: pl.DataFrame,
    timeframe: str,
    now_ms: int,
    max_lag_bars: int = 2,
    expected_end_ms: int | None = None,
    expected_start_ms: int | None = None,
) -> CheckOutcome:
    """Warning: the newest closed bar is recent enough.

    The reference is `now_ms`, or `expected_end_ms` when that is earlier: pass the end of the
    partition window (exclusive) and one rule serves both kinds of partition —
    * today's (window still open): at most `max_lag_bars` closed bars may be missing at the end;
    * a past day (window closed by `now_ms`): the day must be complete up to its last bar (lag 0).
    A bar counts as closed once its open + bar length ≤ reference. With `expected_start_ms` (the
    window's start) a window with no bar due yet passes, and an empty window lags by all its due bars.
    Metadata: `lag_bars` (closed bars missing at the end) and `lag_minutes` (reference − close time of
    the newest bar present, or of the window start when there is none).
    """
    tf = validate_timeframe(timeframe)
    bar_ms = timeframe_ms(tf)
    reason = _columns_missing(frame, ("ts",))
    if reason:
        return _unusable("freshness", False, reason)
    reference = now_ms if expected_end_ms is None else min(now_ms, expected_end_ms)
    window_closed = expected_end_ms is not None and expected_end_ms <= now_ms
    allowed = 0 if window_closed else max_lag_bars
    closed_until = reference // bar_ms * bar_ms  # exclusive end of the closed bars
    ts = _clean_ts(frame).filter(pl.col("ts") + bar_ms <= reference)
    open_bars = frame.filter(pl.col("ts").cast(pl.Int64, strict=False) + bar_ms > reference).height
    meta: dict[str, Any] = {
        "timeframe": tf,
        "reference": iso_utc(reference),
        "window_closed": window_closed,
        "max_lag_bars": allowed,
        "expected_last_bar": iso_utc(closed_until - bar_ms),
        "bars_after_reference": open_bars,
    }
    if ts.height and expected_start_ms is None:
        last = int(ts["ts"].max())
    elif ts.height:
        last = max(int(ts["ts"].max()), expected_start_ms - bar_ms)
    elif expected_start_ms is not None:
        last = expected_start_ms - bar_ms  # lag counted from the window start
    else:
        meta.update(last_bar=None, lag_bars=None, lag_minutes=None)
        return CheckOutcome("freshness", False, False, "no closed bar at all", meta)
    lag_bars = (closed_until - (last + bar_ms)) // bar_ms
    lag_minutes = (reference - (last + bar_ms)) / 60_000
    lag_bars, lag_minutes = max(lag_bars, 0), max(lag_minutes, 0.0)
    meta.update(
        last_bar=iso_utc(int(ts["ts"].max())) if ts.height else None,
        lag_bars=int(lag_bars),
        lag_minutes=_json_float(lag_minutes, 2),
    )
    passed = lag_bars <= allowed
    if expected_start_ms is not None and closed_until <= expected_start_ms:
        text = "no bar due yet"
    elif passed:
        text = "window complete" if window_closed else f"newest closed bar {lag_minutes:.0f} min old"
    elif window_closed:
        text = f"window incomplete: last {lag_bars} bar(s) missing"
    else:
        text = f"stale: {lag_bars} closed bar(s) missing at the end (allowed {allowed})"
    return CheckOutcome("freshness", passed, False, text, meta)


# --- statistics for the day report -------------------------------------------------------------------


def _robust_scale(values: pl.Series, floor: float) -> tuple[float, float] | None:
    """(median, σ̂ = max(1.4826·MAD, floor)), or None with too little data."""
    vals = values.drop_nulls().drop_nans()
    if vals.len() < MIN_ROBUST_SAMPLE:
        return None
    median = float(vals.median())
    mad = float((vals - median).abs().median())
    return median, max(MAD_TO_SIGMA * mad, floor)


def _return_outliers(
    bars: pl.DataFrame, bar_ms: int, start_ms: int, end_ms: int, k: float
) -> tuple[list[dict[str, Any]], float | None]:
    """Close-to-close log returns of bars opening in the window whose robust z exceeds k.

    A return across a gap of n bars is divided by √n, so an outage does not fake an outlier.
    """
    rets = bars.select(
        "ts",
        (
            (pl.col("close") / pl.col("close").shift(1)).log()
            / ((pl.col("ts") - pl.col("ts").shift(1)) / bar_ms).sqrt()
        ).alias("r"),
    ).filter(pl.col("r").is_finite())
    scale = _robust_scale(rets["r"], RETURN_SIGMA_FLOOR_PER_HOUR * math.sqrt(bar_ms / 3_600_000))
    if scale is None:
        return [], None
    median, sigma = scale
    hits = rets.filter(pl.col("ts").is_between(start_ms, end_ms, closed="left")).with_columns(
        ((pl.col("r") - median) / sigma).alias("z")
    )
    hits = hits.filter(pl.col("z").abs() > k)
    return [
        {"ts": iso_utc(t), "log_return": _json_float(r), "robust_z": _json_float(z, 2)}
        for t, r, z in hits.iter_rows()
    ], sigma


def _volume_anomalies(bars: pl.DataFrame, start_ms: int, end_ms: int, z_max: float) -> list[dict[str, Any]]:
    """Bars in the window whose log volume is more than z_max robust sigmas from the median.

    Zero-volume bars are excluded (log undefined); they are reported on their own.
    """
    logv = bars.filter(pl.col("volume") > 0).select("ts", "volume", pl.col("volume").log().alias("lv"))
    scale = _robust_scale(logv["lv"], LOG_VOLUME_SIGMA_FLOOR)
    if scale is None:
        return []
    median, sigma = scale
    hits = (
        logv.filter(pl.col("ts").is_between(start_ms, end_ms, closed="left"))
        .with_columns(((pl.col("lv") - median) / sigma).alias("z"))
        .filter(pl.col("z").abs() > z_max)
    )
    return [
        {"ts": iso_utc(t), "volume": _json_float(v), "robust_z": _json_float(z, 2)}
        for t, v, _, z in hits.iter_rows()
    ]


# --- the day report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityReport:
    """Data quality of one symbol's bars for one UTC day."""

    symbol: str
    day: date
    timeframe: str
    generated_at_ms: int
    expected_rows: int  # closed bars the day should have by `generated_at` (24 for a past 1h day)
    rows: int  # rows received for the day, duplicates included
    unique_bars: int
    missing_ts: list[int]  # aligned bar opens in the expected range with no bar
    duplicate_rows: int
    ohlc_violations: int
    non_positive_prices: int
    zero_volume_ts: list[int]
    return_outliers: list[dict[str, Any]]
    volume_anomalies: list[dict[str, Any]]
    robust_return_sigma: float | None  # None: too little history to judge outliers
    freshness_lag_minutes: float | None
    checks: list[CheckOutcome]
    outlier_k: float = OUTLIER_K
    volume_z: float = VOLUME_Z
    rows_outside_day: int = 0

    @property
    def passed(self) -> bool:
        """All blocking checks passed (warnings do not fail a day)."""
        return all(c.passed for c in self.checks if c.blocking)

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if c.blocking and not c.passed]

    @property
    def warnings(self) -> list[str]:
        return [c.name for c in self.checks if not c.blocking and not c.passed]

    @property
    def status(self) -> str:
        return "FAIL" if not self.passed else ("WARN" if self.warnings else "OK")

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "day": self.day.isoformat(),
            "timeframe": self.timeframe,
            "generated_at": iso_utc(self.generated_at_ms),
            "status": self.status,
            "passed": self.passed,
            "failed_checks": self.failed_checks,
            "warnings": self.warnings,
            "expected_rows": self.expected_rows,
            "rows": self.rows,
            "unique_bars": self.unique_bars,
            "rows_outside_day": self.rows_outside_day,
            "missing_bars": len(self.missing_ts),
            "missing_ts": [iso_utc(t) for t in self.missing_ts],
            "duplicate_rows": self.duplicate_rows,
            "ohlc_violations": self.ohlc_violations,
            "non_positive_prices": self.non_positive_prices,
            "zero_volume_bars": len(self.zero_volume_ts),
            "zero_volume_ts": [iso_utc(t) for t in self.zero_volume_ts],
            "return_outliers": self.return_outliers,
            "volume_anomalies": self.volume_anomalies,
            "outlier_k": self.outlier_k,
            "volume_z": self.volume_z,
            "robust_return_sigma": _json_float(self.robust_return_sigma, 8),
            "freshness_lag_minutes": self.freshness_lag_minutes,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_markdown(self) -> str:
        def times(ts: list[int]) -> str:
            return ", ".join(iso_utc(t)[11:16] for t in ts) if ts else "none"

        lines = [
            f"### {self.symbol} {self.day.isoformat()} ({self.timeframe}): {self.status}",
            "",
            "| metric | value |",
            "|---|---|",
            f"| bars (received / expected) | {self.unique_bars} / {self.expected_rows} |",
            f"| missing bars | {len(self.missing_ts)} ({times(self.missing_ts)}) |",
            f"| duplicate rows | {self.duplicate_rows} |",
            f"| OHLC violations | {self.ohlc_violations} |",
            f"| non-positive prices | {self.non_positive_prices} |",
            f"| zero-volume bars | {len(self.zero_volume_ts)} ({times(self.zero_volume_ts)}) |",
            f"| return outliers (>{self.outlier_k:g} robust σ) | "
            f"{_describe_hits(self.return_outliers, 'log_return')} |",
            f"| volume anomalies (robust \\|z\\|>{self.volume_z:g}) | "
            f"{_describe_hits(self.volume_anomalies, 'volume')} |",
            f"| freshness lag (min) | {_fmt(self.freshness_lag_minutes)} |",
            "",
            "| check | severity | result | detail |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {c.name} | {c.severity} | {'pass' if c.passed else 'FAIL'} | {c.description} |"
            for c in self.checks
        ]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def _describe_hits(hits: list[dict[str, Any]], key: str) -> str:
    if not hits:
        return "0"
    shown = ", ".join(f"{h['ts'][11:16]} ({h[key]:.4g}, z={h['robust_z']:g})" for h in hits[:3])
    return f"{len(hits)}: {shown}" + (" …" if len(hits) > 3 else "")


def _as_day(day: date | datetime | str) -> date:
    if isinstance(day, datetime):
        return day.astimezone(UTC).date() if day.tzinfo else day.date()
    if isinstance(day, date):
        return day
    return date.fromisoformat(str(day))


def build_quality_report(
    frame: pl.DataFrame,
    timeframe: str,
    now_ms: int,
    symbol: str,
    day: date | datetime | str,
    context: pl.DataFrame | None = None,
    outlier_k: float = OUTLIER_K,
    volume_z: float = VOLUME_Z,
    max_lag_bars: int = 2,
) -> QualityReport:
    """The quality report of `symbol`'s bars for the UTC `day`.

    `frame` holds the day's bars (rows outside the day are counted and ignored; a `symbol` column, if
    any, is ignored — pass one symbol). `context` holds earlier bars (e.g. the previous days) used only
    to estimate the robust return/volume scales and the day's first return. Bars the day should have
    are those closed by `now_ms`, so today's partition is judged on the hours elapsed so far.
    """
    tf = validate_timeframe(timeframe)
    bar_ms = timeframe_ms(tf)
    the_day = _as_day(day)
    start_ms = int(datetime(the_day.year, the_day.month, the_day.day, tzinfo=UTC).timestamp() * 1000)
    end_ms = start_ms + DAY_MS
    closed_end = min(end_ms, now_ms // bar_ms * bar_ms)
    expected_rows = max(0, (closed_end - start_ms) // bar_ms)

    schema = check_schema(frame)
    in_day = frame
    outside = 0
    if "ts" in frame.columns:
        in_day = frame.filter(
            pl.col("ts").cast(pl.Int64, strict=False).is_between(start_ms, end_ms, closed="left")
        )
        outside = frame.height - in_day.height
    checks = [
        schema,
        check_ohlc_consistency(in_day),
        check_uniqueness(in_day),
        check_continuity(in_day, tf, start_ms, closed_end),
        check_freshness(in_day, tf, now_ms, max_lag_bars, expected_end_ms=end_ms, expected_start_ms=start_ms),
    ]
    stats = _day_statistics(in_day, context, bar_ms, start_ms, end_ms, closed_end, outlier_k, volume_z)
    ohlc_meta = checks[1].metadata
    return QualityReport(
        symbol=symbol,
        day=the_day,
        timeframe=tf,
        generated_at_ms=int(now_ms),
        expected_rows=expected_rows,
        rows=in_day.height,
        unique_bars=stats["unique_bars"],
        missing_ts=stats["missing_ts"],
        duplicate_rows=int(checks[2].metadata.get("duplicate_rows", 0)),
        ohlc_violations=int(ohlc_meta.get("violations", 0)),
        non_positive_prices=int(ohlc_meta.get("by_rule", {}).get("non_positive_price", 0)),
        zero_volume_ts=stats["zero_volume_ts"],
        return_outliers=stats["return_outliers"],
        volume_anomalies=stats["volume_anomalies"],
        robust_return_sigma=stats["sigma"],
        freshness_lag_minutes=checks[4].metadata.get("lag_minutes"),
        checks=checks,
        outlier_k=outlier_k,
        volume_z=volume_z,
        rows_outside_day=outside,
    )


def _day_statistics(
    in_day: pl.DataFrame,
    context: pl.DataFrame | None,
    bar_ms: int,
    start_ms: int,
    end_ms: int,
    closed_end: int,
    outlier_k: float,
    volume_z: float,
) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "unique_bars": 0,
        "missing_ts": [],
        "zero_volume_ts": [],
        "return_outliers": [],
        "volume_anomalies": [],
        "sigma": None,
    }
    try:
        bars = _typed(in_day)
    except (pl.exceptions.PolarsError, ValueError):
        return stats  # the schema check already says why
    stats["unique_bars"] = bars.height
    stats["missing_ts"] = _missing_on_grid(bars.select("ts"), bar_ms, start_ms, closed_end)
    stats["zero_volume_ts"] = bars.filter(pl.col("volume") == 0)["ts"].to_list()
    history = bars
    if context is not None and context.height:
        try:
            before = _typed(context).filter(pl.col("ts") < start_ms)
            history = pl.concat([before, bars])
        except (pl.exceptions.PolarsError, ValueError):
            history = bars
    history = history.filter(
        pl.all_horizontal(pl.col(PRICE_COLUMNS).is_finite() & (pl.col(PRICE_COLUMNS) > 0))
    )
    stats["return_outliers"], stats["sigma"] = _return_outliers(history, bar_ms, start_ms, end_ms, outlier_k)
    stats["volume_anomalies"] = _volume_anomalies(history, start_ms, end_ms, volume_z)
    return stats


def _typed(frame: pl.DataFrame) -> pl.DataFrame:
    """Typed, de-duplicated (last wins), sorted OHLCV columns with null-ts rows dropped."""
    cols = frame.select(OHLCV_COLUMNS).with_columns(pl.col(c).cast(t) for c, t in OHLCV_SCHEMA.items())
    return cols.drop_nulls("ts").unique("ts", keep="last", maintain_order=True).sort("ts")


def render_markdown_summary(reports: list[QualityReport]) -> str:
    """One markdown table for Dagster metadata: headline counts, then a row per symbol/day."""
    if not reports:
        return "No quality reports.\n"
    failing = [r for r in reports if not r.passed]
    warned = [r for r in reports if r.passed and r.warnings]
    total = {
        "missing": sum(len(r.missing_ts) for r in reports),
        "dups": sum(r.duplicate_rows for r in reports),
        "ohlc": sum(r.ohlc_violations for r in reports),
        "zero": sum(len(r.zero_volume_ts) for r in reports),
        "outliers": sum(len(r.return_outliers) for r in reports),
        "volume": sum(len(r.volume_anomalies) for r in reports),
    }
    lines = [
        f"**{len(reports)} symbol-day(s)**: {len(reports) - len(failing) - len(warned)} OK, "
        f"{len(warned)} with warnings, {len(failing)} failing blocking checks.",
        "",
        f"Missing bars {total['missing']} · duplicate rows {total['dups']} · "
        f"OHLC violations {total['ohlc']} · zero-volume bars {total['zero']} · "
        f"return outliers {total['outliers']} · volume anomalies {total['volume']}",
        "",
        "| symbol | day | status | bars | missing | dups | OHLC viol. | zero-vol | outliers | vol. anom. "
        "| lag (min) | issues |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(reports, key=lambda r: (r.symbol, r.day)):
        issues = ", ".join(r.failed_checks + r.warnings) or "–"
        lines.append(
            f"| {r.symbol} | {r.day.isoformat()} | {r.status} | {r.unique_bars}/{r.expected_rows} | "
            f"{len(r.missing_ts)} | {r.duplicate_rows} | {r.ohlc_violations} | {len(r.zero_volume_ts)} | "
            f"{len(r.return_outliers)} | {len(r.volume_anomalies)} | {_fmt(r.freshness_lag_minutes)} | "
            f"{issues} |"
        )
    return "\n".join(lines) + "\n"
