"""The gap-repair ledger and a day's coverage: attempts, back-off, giving up, healing, the cursor."""

from __future__ import annotations

import polars as pl

from crypto_platform.lib.market.coverage import bars_fingerprint, day_coverage
from crypto_platform.lib.market.gap_repair import GapLedger

H = 3_600_000
DAY = 24 * H


def test_a_gap_is_asked_for_at_once_then_with_doubling_back_off_then_given_up() -> None:
    ledger = GapLedger(max_attempts=3, backoff_s=3600)
    ledger.observe("2024-01-01|BTCUSDT", missing_bars=2, now_ms=0)
    asked, gave_up = [], []
    for hour in range(12):
        due, given = ledger.due(hour * H, limit=10)
        for partition in due:
            ledger.requested(partition, hour * H)
            asked.append(hour)
        gave_up += [hour for _ in given]
    assert asked == [0, 1, 3]  # at once, after 1 h, after 2 h more
    assert gave_up == [7]  # the last back-off (4 h) ran out with the bars still missing
    assert list(ledger.reported_gaps()) == ["2024-01-01|BTCUSDT"] and not ledger.open_gaps()
    # a given-up gap is not asked for again, even when later refreshes still see it missing
    ledger.observe("2024-01-01|BTCUSDT", missing_bars=2, now_ms=20 * H)
    assert ledger.due(30 * H, limit=10) == ([], [])


def test_a_materialisation_holding_every_bar_heals_the_gap() -> None:
    ledger = GapLedger()
    ledger.observe("2024-01-01|BTCUSDT", 1, now_ms=0)
    ledger.requested("2024-01-01|BTCUSDT", 0)
    ledger.observe("2024-01-01|BTCUSDT", 0, now_ms=H)
    assert ledger.gaps == {}
    ledger.observe("2024-01-02|BTCUSDT", 0, now_ms=H)  # complete partitions never enter the ledger
    assert ledger.gaps == {}


def test_due_is_bounded_oldest_first_and_slack_absorbs_a_tick_that_is_early() -> None:
    ledger = GapLedger(backoff_s=3600)
    for i, partition in enumerate(["2024-01-03|BTCUSDT", "2024-01-01|BTCUSDT", "2024-01-02|BTCUSDT"]):
        ledger.observe(partition, 1, now_ms=i)
    due, _ = ledger.due(10, limit=2)
    assert due == ["2024-01-03|BTCUSDT", "2024-01-01|BTCUSDT"]
    ledger.requested("2024-01-03|BTCUSDT", 10)
    assert "2024-01-03|BTCUSDT" not in ledger.due(H + 9, limit=5)[0]
    assert "2024-01-03|BTCUSDT" not in ledger.due(H - 5_000, limit=5, slack_s=1)[0]
    assert "2024-01-03|BTCUSDT" in ledger.due(H - 5_000, limit=5, slack_s=60)[0]


def test_the_ledger_survives_its_cursor_and_a_bad_cursor_starts_over() -> None:
    ledger = GapLedger(after_storage_id=41)
    ledger.observe("2024-01-01|BTCUSDT", 3, now_ms=5)
    ledger.requested("2024-01-01|BTCUSDT", 5)
    restored = GapLedger.from_cursor(ledger.to_cursor())
    assert restored.after_storage_id == 41 and restored.gaps == ledger.gaps
    for bad in (None, "", "not json", '{"version": 99}', '{"version": 1}'):
        fresh = GapLedger.from_cursor(bad)
        assert fresh.after_storage_id == 0 and fresh.gaps == {}


def test_day_coverage_counts_only_bars_closed_when_the_day_was_fetched() -> None:
    stored = pl.Series("ts", [0, H, 3 * H], dtype=pl.Int64)
    # fetched at 04:05: bars 00-03 had closed, 02:00 is missing, 04:00 was still open
    today = day_coverage(0, 4 * H + 5 * 60_000, H, stored)
    assert (today.covered_until_ms, today.expected_bars, today.missing_bars) == (4 * H, 4, 1)
    assert not today.complete_day
    # fetched the next day: the whole day should be there
    later = day_coverage(0, DAY + 3 * H, H, stored)
    assert (later.covered_until_ms, later.expected_bars, later.missing_bars) == (DAY, 24, 21)
    assert later.complete_day
    # fetched before the day began: nothing expected
    assert day_coverage(DAY, DAY - H, H, pl.Series("ts", [], dtype=pl.Int64)).expected_bars == 0


def test_bars_fingerprint_depends_on_the_bars_only() -> None:
    bars = pl.DataFrame(
        {"ts": [0, H], "open": [1.0, 2.0], "high": [2.0, 3.0], "low": [0.5, 1.5], "close": [1.5, 2.5]}
    ).with_columns(pl.lit(10.0).alias("volume"))
    shuffled = (
        bars.reverse()
        .select("volume", "close", "low", "high", "open", "ts")
        .with_columns(pl.lit("x").alias("extra"))
    )
    assert bars_fingerprint(bars) == bars_fingerprint(shuffled)
    changed = bars.with_columns(
        pl.when(pl.col("ts") == H).then(2.6).otherwise(pl.col("close")).alias("close")
    )
    assert bars_fingerprint(changed) != bars_fingerprint(bars)
