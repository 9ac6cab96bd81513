"""Data-quality rules for OHLCV frames: each check a pure function of a single-symbol frame.

Frames may be raw (unsorted, duplicated, badly typed). Checks are split by consequence:

* blocking (schema, OHLC consistency, uniqueness): the data is wrong and must not flow downstream;
* warnings (continuity, freshness): real Binance history has outage gaps and maintenance bars that
  are facts about the market, not errors, so they are reported but never stop the pipeline.

The Dagster asset checks of `ohlcv` (defs/market/checks.py) call these; `report.py` runs them over one
UTC day and adds the day's statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from crypto_platform.lib.market.schema import OHLCV_COLUMNS, OHLCV_SCHEMA, find_gaps
from crypto_platform.lib.market.timeframes import timeframe_ms, validate_timeframe

_SAMPLE_LIMIT = 5  # offending timestamps listed in check metadata


def iso_utc(ts_ms: int) -> str:
    """`1518048000000` → `2018-02-08T00:00:00Z`."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_float(value: float | None, digits: int = 6) -> float | None:
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


def missing_on_grid(ts: pl.DataFrame, bar_ms: int, start_ms: int, end_ms: int) -> list[int]:
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
        missing_ts = missing_on_grid(aligned, bar_ms, int(start), int(end))
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
        lag_minutes=json_float(lag_minutes, 2),
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
