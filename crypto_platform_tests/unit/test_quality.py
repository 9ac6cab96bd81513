"""Data-quality rules and the per-day report, on hand-made frames with obvious answers and on real data."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from crypto_platform.lib.market.schema import OHLCV_SCHEMA
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.quality.checks import (
    check_continuity,
    check_freshness,
    check_ohlc_consistency,
    check_schema,
    check_uniqueness,
    iso_utc,
)
from crypto_platform.lib.quality.report import OUTLIER_K, build_quality_report, render_markdown_summary

H = 3_600_000
D = 24 * H
DAY = date(2024, 1, 1)
DAY_MS = 1_704_067_200_000  # 2024-01-01T00:00Z
STEP = 0.002  # size of the calm bars' log returns: r_i = STEP · cos(i·φ), whose median |r| is STEP/√2
JUMP = 0.05  # ≈ 24 robust σ
GOLDEN = (1 + math.sqrt(5)) / 2  # an irrational step spreads cos(i·φ) evenly over [-1, 1]


def _bars(start_ms: int, hours: int, jump_at: int | None = None, first_index: int = 0) -> list[dict]:
    """Calm hourly bars: returns STEP·cos(i·φ), volume 10·e^(0.1·sin(i·φ)) — continuous, no ties,
    so the robust scales are well defined; bar `jump_at` adds JUMP to its return."""
    rows, lp = [], math.log(100.0)
    for i in range(first_index, first_index + hours):
        open_ = math.exp(lp)
        lp += STEP * math.cos(i * GOLDEN) + (JUMP if i == jump_at else 0.0)
        close = math.exp(lp)
        rows.append(
            {
                "ts": start_ms + (i - first_index) * H,
                "open": open_,
                "high": max(open_, close) * 1.001,
                "low": min(open_, close) * 0.999,
                "close": close,
                "volume": 10.0 * math.exp(0.1 * math.sin(i * GOLDEN)),
            }
        )
    return rows


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=OHLCV_SCHEMA)


@pytest.fixture
def context() -> pl.DataFrame:
    """Two calm days before DAY (their own price path: only the robust scales matter)."""
    return _frame(_bars(DAY_MS - 2 * D, 48, first_index=1000))


@pytest.fixture
def dirty_day() -> pl.DataFrame:
    """DAY with every problem once: 2 duplicate rows (1 conflicting), 1 bar with high < low,
    a 3-hour gap (10:00–12:00), a zero-volume flat bar at 15:00, a ~24σ jump at 20:00,
    a 10× volume spike at 21:00, shuffled."""
    rows = _bars(DAY_MS, 24, jump_at=20)
    rows[7]["high"], rows[7]["low"] = rows[7]["low"], rows[7]["high"]  # high < low
    prev_close = rows[14]["close"]
    rows[15].update(open=prev_close, high=prev_close, low=prev_close, close=prev_close, volume=0.0)
    rows[21]["volume"] = 120.0  # log-volume σ̂ ≈ 0.1: a 12× spike is ~25 robust σ
    rows = [r for r in rows if not 10 <= (r["ts"] - DAY_MS) // H <= 12]
    rows.append(dict(rows[3]))  # identical duplicate of 03:00
    rows.append({**rows[4], "volume": 11.0})  # conflicting duplicate of 04:00
    random.Random(1).shuffle(rows)
    return _frame(rows)


def test_clean_frame_passes_every_check(context: pl.DataFrame) -> None:
    day = _frame(_bars(DAY_MS, 24))
    for outcome in (
        check_schema(day),
        check_ohlc_consistency(day),
        check_uniqueness(day),
        check_continuity(day, "1h"),
        check_freshness(day, "1h", now_ms=DAY_MS + 2 * D, expected_end_ms=DAY_MS + D),
    ):
        assert outcome.passed, outcome
    report = build_quality_report(day, "1h", DAY_MS + 2 * D, "BTC/USDT", DAY, context=context)
    assert report.status == "OK"
    assert report.return_outliers == [] and report.volume_anomalies == []


# --- schema ------------------------------------------------------------------------------------------


def test_schema_reports_missing_columns_wrong_dtypes_nulls_and_nan() -> None:
    frame = pl.DataFrame(
        {
            "ts": [1.0, 2.0, 3.0],  # float, not Int64
            "open": [1.0, None, 1.0],
            "high": [1.0, 2.0, float("nan")],
            "low": [1.0, 1.0, 1.0],
            "close": [1.0, 1.0, 1.0],
        }
    )
    outcome = check_schema(frame)
    assert not outcome.passed and outcome.blocking
    assert outcome.metadata["missing_columns"] == ["volume"]
    assert outcome.metadata["wrong_dtypes"] == {"ts": "Float64"}
    assert outcome.metadata["null_counts"] == {"open": 1}
    assert outcome.metadata["nan_counts"] == {"high": 1}
    json.dumps(outcome.to_dict())


def test_schema_allows_a_symbol_column() -> None:
    frame = _frame(_bars(DAY_MS, 3)).with_columns(pl.lit("BTC/USDT").alias("symbol"))
    assert check_schema(frame).passed


# --- OHLC consistency ----------------------------------------------------------------------------------


def test_ohlc_rules_are_counted_separately() -> None:
    rows = _bars(DAY_MS, 6)
    rows[1].update(open=100.0, high=100.5, low=99.5, close=101.0)  # high below close
    rows[2].update(open=100.0, high=101.0, low=99.5, close=99.0)  # low above close
    rows[3].update(open=0.0, low=0.0)  # non-positive price
    rows[4]["volume"] = -1.0
    outcome = check_ohlc_consistency(_frame(rows))
    assert not outcome.passed and outcome.blocking
    assert outcome.metadata["violations"] == 4
    assert outcome.metadata["by_rule"] == {
        "high_below_open_or_close": 1,
        "low_above_open_or_close": 1,
        "high_below_low": 0,
        "non_positive_price": 1,
        "negative_volume": 1,
    }
    assert outcome.metadata["first_offending_ts"] == [
        "2024-01-01T01:00:00Z",
        "2024-01-01T02:00:00Z",
        "2024-01-01T03:00:00Z",
        "2024-01-01T04:00:00Z",
    ]


def test_ohlc_check_is_not_evaluated_without_its_columns() -> None:
    outcome = check_ohlc_consistency(pl.DataFrame({"ts": [1]}))
    assert not outcome.passed and outcome.metadata == {"evaluated": False}


# --- uniqueness / continuity ---------------------------------------------------------------------------


def test_uniqueness_counts_duplicates_and_conflicts(dirty_day: pl.DataFrame) -> None:
    outcome = check_uniqueness(dirty_day)
    assert not outcome.passed and outcome.blocking
    assert outcome.metadata["duplicate_rows"] == 2
    assert outcome.metadata["duplicated_timestamps"] == 2
    assert outcome.metadata["conflicting_timestamps"] == 1
    assert outcome.metadata["first_duplicated_ts"] == ["2024-01-01T03:00:00Z", "2024-01-01T04:00:00Z"]


def test_continuity_reports_gaps_as_a_warning(dirty_day: pl.DataFrame) -> None:
    outcome = check_continuity(dirty_day, "1h")
    assert not outcome.passed and not outcome.blocking
    assert outcome.metadata["missing_bars"] == 3
    assert outcome.metadata["gaps"] == [{"after": "2024-01-01T09:00:00Z", "missing_bars": 3}]


def test_continuity_counts_bars_missing_at_the_window_edges() -> None:
    day = _frame(_bars(DAY_MS + 2 * H, 20))  # 02:00 … 21:00
    assert check_continuity(day, "1h").passed  # no hole between first and last bar
    outcome = check_continuity(day, "1h", expected_start_ms=DAY_MS, expected_end_ms=DAY_MS + D)
    assert not outcome.passed
    assert outcome.metadata["missing_bars"] == 4
    assert outcome.metadata["missing_at_edges"] == {"at_start": 2, "at_end": 2}


def test_continuity_flags_misaligned_bars() -> None:
    rows = _bars(DAY_MS, 4)
    rows[2]["ts"] += 30 * 60_000
    outcome = check_continuity(_frame(rows), "1h")
    assert not outcome.passed
    assert outcome.metadata["misaligned_bars"] == 1
    assert outcome.metadata["first_misaligned_ts"] == ["2024-01-01T02:30:00Z"]


def test_continuity_of_an_empty_window() -> None:
    outcome = check_continuity(_frame([]), "4h", expected_start_ms=DAY_MS, expected_end_ms=DAY_MS + D)
    assert outcome.metadata["missing_bars"] == 6


# --- freshness -----------------------------------------------------------------------------------------


def test_freshness_of_a_live_window() -> None:
    day = _frame(_bars(DAY_MS, 10))  # 00:00 … 09:00, closed at 10:00
    now = DAY_MS + 10 * H + 37 * 60_000
    fresh = check_freshness(day, "1h", now, expected_end_ms=DAY_MS + D)
    assert fresh.passed and not fresh.blocking
    assert fresh.metadata["lag_bars"] == 0 and fresh.metadata["lag_minutes"] == 37.0
    stale = check_freshness(day.head(7), "1h", now)  # newest bar 06:00: 07, 08, 09 missing
    assert not stale.passed
    assert stale.metadata["lag_bars"] == 3 and stale.metadata["lag_minutes"] == 217.0
    assert check_freshness(day.head(8), "1h", now).passed  # two bars behind is tolerated
    assert not check_freshness(day.head(8), "1h", now, max_lag_bars=1).passed


def test_freshness_of_a_past_day_means_complete() -> None:
    day = _frame(_bars(DAY_MS, 24))
    now = DAY_MS + 5 * D
    complete = check_freshness(day, "1h", now, expected_end_ms=DAY_MS + D)
    assert complete.passed and complete.metadata["window_closed"]
    assert complete.metadata["lag_minutes"] == 0.0
    short = check_freshness(day.head(23), "1h", now, expected_end_ms=DAY_MS + D)
    assert not short.passed and short.metadata["lag_bars"] == 1  # no lag tolerated once the day is over


def test_freshness_before_any_bar_is_due() -> None:
    empty = _frame([])
    now = DAY_MS + 20 * 60_000
    assert check_freshness(empty, "1h", now, expected_end_ms=DAY_MS + D, expected_start_ms=DAY_MS).passed
    later = check_freshness(empty, "1h", DAY_MS + 5 * H, expected_end_ms=DAY_MS + D, expected_start_ms=DAY_MS)
    assert not later.passed and later.metadata["lag_bars"] == 5
    assert not check_freshness(empty, "1h", now).passed  # no window: nothing at all is stale


def test_freshness_ignores_the_forming_bar() -> None:
    day = _frame(_bars(DAY_MS, 11))  # includes 10:00, still open at 10:37
    outcome = check_freshness(day, "1h", DAY_MS + 10 * H + 37 * 60_000)
    assert outcome.passed
    assert outcome.metadata["last_bar"] == "2024-01-01T09:00:00Z"
    assert outcome.metadata["bars_after_reference"] == 1


# --- the day report ------------------------------------------------------------------------------------


def test_report_of_a_dirty_day(dirty_day: pl.DataFrame, context: pl.DataFrame) -> None:
    report = build_quality_report(dirty_day, "1h", DAY_MS + 3 * D, "BTC/USDT", DAY, context=context)
    assert report.expected_rows == 24
    assert report.rows == 23 and report.unique_bars == 21
    assert [iso_utc(t) for t in report.missing_ts] == [
        "2024-01-01T10:00:00Z",
        "2024-01-01T11:00:00Z",
        "2024-01-01T12:00:00Z",
    ]
    assert report.duplicate_rows == 2
    assert report.ohlc_violations == 1
    assert report.non_positive_prices == 0
    assert [iso_utc(t) for t in report.zero_volume_ts] == ["2024-01-01T15:00:00Z"]
    assert [o["ts"] for o in report.return_outliers] == ["2024-01-01T20:00:00Z"]
    assert report.robust_return_sigma == pytest.approx(1.4826 * STEP / math.sqrt(2), rel=0.15)
    assert report.return_outliers[0]["robust_z"] > 15
    assert [a["ts"] for a in report.volume_anomalies] == ["2024-01-01T21:00:00Z"]
    assert not report.passed and report.status == "FAIL"
    assert report.failed_checks == ["ohlc_consistency", "uniqueness"]
    assert report.warnings == ["continuity"]  # the day ends with its 23:00 bar: fresh


def test_outlier_threshold_is_a_parameter(dirty_day: pl.DataFrame, context: pl.DataFrame) -> None:
    strict = build_quality_report(dirty_day, "1h", DAY_MS + 3 * D, "BTC", DAY, context=context, outlier_k=25)
    assert strict.return_outliers == [] and strict.outlier_k == 25


def test_outliers_need_context(dirty_day: pl.DataFrame) -> None:
    """One day alone has < 24 returns: too few for a robust scale, so no outlier is claimed."""
    report = build_quality_report(dirty_day, "1h", DAY_MS + 3 * D, "BTC/USDT", DAY)
    assert report.robust_return_sigma is None and report.return_outliers == []


def test_report_of_todays_partition_counts_only_closed_bars() -> None:
    now = DAY_MS + 10 * H + 37 * 60_000
    day = _frame(_bars(DAY_MS, 11))  # 00:00 … 10:00 (10:00 still forming)
    report = build_quality_report(day, "1h", now, "BTC/USDT", "2024-01-01")
    assert report.expected_rows == 10
    assert report.missing_ts == []
    assert report.status == "OK"
    assert report.freshness_lag_minutes == 37.0
    partial = build_quality_report(day.head(6), "1h", now, "BTC/USDT", DAY)
    assert len(partial.missing_ts) == 4 and partial.warnings == ["continuity", "freshness"]


def test_report_ignores_rows_outside_the_day(context: pl.DataFrame) -> None:
    day = pl.concat([context, _frame(_bars(DAY_MS, 24))])
    report = build_quality_report(day, "1h", DAY_MS + 2 * D, "BTC/USDT", DAY)
    assert report.rows_outside_day == 48 and report.unique_bars == 24 and report.status == "OK"


def test_report_survives_a_broken_schema() -> None:
    frame = _frame(_bars(DAY_MS, 24)).drop("volume")
    report = build_quality_report(frame, "1h", DAY_MS + 2 * D, "BTC/USDT", DAY)
    assert not report.passed
    assert report.failed_checks == ["schema", "ohlc_consistency"]
    json.dumps(report.to_dict())


def test_report_serialises(dirty_day: pl.DataFrame, context: pl.DataFrame) -> None:
    report = build_quality_report(dirty_day, "1h", DAY_MS + 3 * D, "BTC/USDT", DAY, context=context)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["day"] == "2024-01-01" and data["generated_at"] == "2024-01-04T00:00:00Z"
    assert data["missing_bars"] == 3 and data["missing_ts"][0] == "2024-01-01T10:00:00Z"
    assert data["zero_volume_ts"] == ["2024-01-01T15:00:00Z"]
    assert data["outlier_k"] == OUTLIER_K
    assert {c["name"]: c["passed"] for c in data["checks"]} == {
        "schema": True,
        "ohlc_consistency": False,
        "uniqueness": False,
        "continuity": False,
        "freshness": True,
    }
    md = report.to_markdown()
    assert md.startswith("### BTC/USDT 2024-01-01 (1h): FAIL")
    assert "| missing bars | 3 (10:00, 11:00, 12:00) |" in md
    assert "| zero-volume bars | 1 (15:00) |" in md
    assert "| uniqueness | error | FAIL |" in md


def test_markdown_summary_has_a_row_per_symbol_day(dirty_day: pl.DataFrame, context: pl.DataFrame) -> None:
    now = DAY_MS + 3 * D
    reports = [
        build_quality_report(dirty_day, "1h", now, "BTC/USDT", DAY, context=context),
        build_quality_report(context.head(24), "1h", now, "ETH/USDT", date(2023, 12, 30)),
    ]
    md = render_markdown_summary(reports)
    assert md.startswith("**2 symbol-day(s)**: 1 OK, 0 with warnings, 1 failing blocking checks.")
    assert "Missing bars 3 · duplicate rows 2 · OHLC violations 1 · zero-volume bars 1" in md
    rows = [line for line in md.splitlines() if line.startswith("| BTC") or line.startswith("| ETH")]
    assert len(rows) == 2
    assert rows[0].startswith("| BTC/USDT | 2024-01-01 | FAIL | 21/24 | 3 | 2 | 1 | 1 | 1 | 1 |")
    assert render_markdown_summary([]) == "No quality reports.\n"


def test_simulated_days_are_clean() -> None:
    bars = simulate_ohlcv("BTC/USDT", "1h", DAY_MS - 7 * D, DAY_MS + D)
    day = bars.filter(pl.col("ts") >= DAY_MS)
    report = build_quality_report(day, "1h", DAY_MS + 2 * D, "BTC/USDT", DAY, context=bars)
    assert report.passed and report.warnings == []
    assert report.unique_bars == 24 and report.zero_volume_ts == []


# --- real Binance data ---------------------------------------------------------------------------------


def _real(shared_ohlcv_dir: Path, symbol: str, start: date, days: int) -> pl.DataFrame:
    start_ms = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() * 1000)
    return (
        pl.scan_csv(shared_ohlcv_dir / f"binance_{symbol}_1h.csv.gz", schema=OHLCV_SCHEMA)
        .filter(pl.col("ts").is_between(start_ms, start_ms + days * D, closed="left"))
        .collect()
    )


@pytest.mark.real_data
def test_real_btc_outage_of_2018_02_08(shared_ohlcv_dir: Path) -> None:
    bars = _real(shared_ohlcv_dir, "BTCUSDT", date(2018, 2, 7), 4)
    assert check_schema(bars).passed
    assert check_ohlc_consistency(bars).passed
    assert check_uniqueness(bars).passed
    continuity = check_continuity(bars, "1h")
    assert not continuity.passed and not continuity.blocking
    assert continuity.metadata["missing_bars"] == 33
    assert continuity.metadata["gaps"] == [{"after": "2018-02-08T00:00:00Z", "missing_bars": 33}]

    now = int(1e13)
    reports = [
        build_quality_report(bars.filter(pl.col("ts") // D == day_ms // D), "1h", now, "BTC/USDT", day, bars)
        for day, day_ms in ((date(2018, 2, 8), 1_518_048_000_000), (date(2018, 2, 9), 1_518_134_400_000))
    ]
    assert [len(r.missing_ts) for r in reports] == [23, 10]
    assert all(r.passed and "continuity" in r.warnings for r in reports)


@pytest.mark.real_data
def test_real_btc_maintenance_bar_is_zero_volume(shared_ohlcv_dir: Path) -> None:
    bars = _real(shared_ohlcv_dir, "BTCUSDT", date(2019, 5, 31), 8)
    day = bars.filter(pl.col("ts") >= 1_559_865_600_000)  # 2019-06-07
    report = build_quality_report(day, "1h", int(1e13), "BTC/USDT", date(2019, 6, 7), context=bars)
    assert [iso_utc(t) for t in report.zero_volume_ts] == ["2019-06-07T21:00:00Z"]
    assert report.status == "OK"


@pytest.mark.real_data
def test_real_btc_crash_hours_are_outliers(shared_ohlcv_dir: Path) -> None:
    bars = _real(shared_ohlcv_dir, "BTCUSDT", date(2020, 3, 5), 8)
    day = bars.filter(pl.col("ts") >= 1_583_971_200_000)  # 2020-03-12
    report = build_quality_report(day, "1h", int(1e13), "BTC/USDT", date(2020, 3, 12), context=bars)
    flagged = {o["ts"] for o in report.return_outliers}
    assert {"2020-03-12T10:00:00Z", "2020-03-12T23:00:00Z"} <= flagged
