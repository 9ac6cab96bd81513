"""The per-symbol, per-UTC-day quality report: the checks run over the day, its statistics, and their
rendering (JSON-safe dict, markdown per day, one summary table for Dagster metadata).

Statistics that judge a bar against "normal" (return outliers, volume anomalies) use robust
estimates (median and MAD) over the day plus an optional `context` frame of earlier bars, so one
quiet or one wild day does not define its own yardstick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from crypto_platform.lib.market.schema import OHLCV_COLUMNS, OHLCV_SCHEMA
from crypto_platform.lib.market.timeframes import timeframe_ms, validate_timeframe
from crypto_platform.lib.quality.checks import (
    CheckOutcome,
    check_continuity,
    check_freshness,
    check_ohlc_consistency,
    check_schema,
    check_uniqueness,
    iso_utc,
    json_float,
    missing_on_grid,
)

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
        {"ts": iso_utc(t), "log_return": json_float(r), "robust_z": json_float(z, 2)}
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
        {"ts": iso_utc(t), "volume": json_float(v), "robust_z": json_float(z, 2)}
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
            "robust_return_sigma": json_float(self.robust_return_sigma, 8),
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
    stats["missing_ts"] = missing_on_grid(bars.select("ts"), bar_ms, start_ms, closed_end)
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
