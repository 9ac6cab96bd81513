"""The daily report builder: every section present, unknowns said as such."""

from __future__ import annotations

from crypto_platform.lib.reports import (
    ChampionInfo,
    DailyReport,
    DriftStatus,
    QualityStatus,
    ServedToday,
    SymbolFreshness,
    build_daily_report,
    report_key,
)


def test_full_report_lists_every_section():
    text = build_daily_report(
        DailyReport(
            day="2026-04-15",
            generated_at="2026-04-15T00:30:00+00:00",
            freshness=[
                SymbolFreshness("BTC/USDT", "2026-04-14T23:00+00:00", 0.5, "exchange"),
                SymbolFreshness("ETH/USDT", "2026-04-14T10:00+00:00", 13.5, "exchange"),
            ],
            quality=[QualityStatus("BTC/USDT", "2026-04-14", "FAIL", ("ohlc_consistency",), ("continuity",))],
            champion=ChampionInfo(
                "7", "lstm", "2026-04-13T03:10+00:00", 0.2812, False, "2025-04-14..2026-04-13"
            ),
            drift=DriftStatus("2026-04-14T03:20+00:00", True, False, ("log_volume",), "7"),
            served=ServedToday(signals=1234, ml_predictions=56, stream_forecasts=48),
            track_record_markdown="### Forecast track record 2026-04-07 … 2026-04-13",
        )
    )
    assert text.startswith("# Daily platform report — 2026-04-15")
    assert "| BTC/USDT | 2026-04-14T23:00+00:00 | 0.5 | exchange | fresh |" in text
    assert "| ETH/USDT | 2026-04-14T10:00+00:00 | 13.5 | exchange | STALE |" in text
    assert "| BTC/USDT | 2026-04-14 | FAIL | ohlc_consistency | continuity |" in text
    assert "version **7** (lstm)" in text and "Holdout QLIKE: 0.2812" in text
    assert "Beats every baseline on its holdout: NO" in text
    assert (
        "Feature drift: DETECTED in log_volume" in text and "Label drift (realized volatility): none" in text
    )
    assert "Signals served: 1234." in text and "ML predictions served: 56." in text
    assert "Scorer forecasts stored (one per symbol, bar and model version): 48." in text
    assert "## Forecast track record\n\n### Forecast track record 2026-04-07 … 2026-04-13" in text
    assert report_key("2026-04-15") == "reports/daily/2026-04-15.md"


def test_missing_sources_are_reported_as_unknown():
    text = build_daily_report(
        DailyReport(
            day="2026-04-15",
            generated_at="now",
            freshness=[SymbolFreshness("SOL/USDT", None, None)],
            champion_error="registry unreachable: connection refused",
        )
    )
    assert "| SOL/USDT | unknown | unknown | unknown | no data |" in text
    assert "No quality report stored: unknown." in text
    assert "Champion: unknown (registry unreachable: connection refused)." in text
    assert "No drift evaluation yet: unknown." in text
    assert "Signals served: unknown." in text and "No track record yet: unknown." in text
    no_champion = build_daily_report(DailyReport(day="d", generated_at="now"))
    assert "Champion: none registered yet." in no_champion
