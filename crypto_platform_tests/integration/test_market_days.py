"""Simulated days: the hourly refresh and the gap repair, tick by tick on a real instance, against the
replay exchange whose clock moves an hour per tick; and the repair giving up on a real Binance outage."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from dagster import AssetKey, instance_for_test

from crypto_platform.defs.resources import build_resources
from crypto_platform.lib.features import FEATURE_COLUMNS, READY_COLUMN
from crypto_platform.lib.market.gap_repair import GapLedger
from crypto_platform.lib.storage import FEATURES_ASSET, LocalStore, day_start_ms, read_partitioned
from crypto_platform_tests.integration.market_days import (
    Daemonless,
    hours,
    ms,
    request_days,
    request_symbols,
    served_closed_bars,
    set_exchange_clock,
    stored_bars,
)
from crypto_platform_tests.integration.market_runs import build, exchange_settings, run_range

pytestmark = pytest.mark.integration

SYMBOL, SYMBOL_ID = "BTC/USDT", "BTCUSDT"
# The refresh covers both in one run an hour; only BTCUSDT has the late bars to repair.
SYMBOLS = {"BTCUSDT": "BTC/USDT", "ETHUSDT": "ETH/USDT"}
WARM_UP_FIRST_DAY, WARM_UP_LAST_DAY = "2025-05-02", "2025-05-31"  # 30 days = the 720-bar look-back
FIRST_TICK = datetime(2025, 6, 1, 21, 5, tzinfo=UTC)
TICKS = 76  # through 2025-06-05 00:05: four midnights crossed, one of them while the daemon is down
# The daemon is down for six hours across a midnight: no tick from 21:05 on 2025-06-03 through 02:05.
DOWNTIME = {FIRST_TICK.replace(day=3) + timedelta(hours=h) for h in range(6)}
FIRST_TICK_AFTER_DOWNTIME = max(DOWNTIME) + timedelta(hours=1)
# The exchange has no 21:00 and 22:00 bars of 2025-06-02 when they close and back-fills them at 00:30.
LATE_BARS = (datetime(2025, 6, 2, 21, tzinfo=UTC), datetime(2025, 6, 2, 23, tzinfo=UTC))
LATE_BARS_SERVED_FROM = datetime(2025, 6, 3, 0, 30, tzinfo=UTC)


# ~70 runs of two symbols through the whole market group: minutes on a shared 2-core machine.
@pytest.mark.timeout(1200)
def test_three_simulated_days_keep_every_closed_bar(tmp_path: Path, replay_server) -> None:
    started = time.monotonic()
    settings = exchange_settings(
        tmp_path / "data",
        replay_server.url,
        CRYPTO_SYMBOLS=",".join(SYMBOLS.values()),
        CRYPTO_PARTITIONS_START="2025-05-01",
        CRYPTO_EXCHANGE_RETRY_BUDGET_S="5",
    )
    defs = build(settings)
    store = LocalStore(tmp_path / "data")
    window_start = day_start_ms(WARM_UP_FIRST_DAY)
    with instance_for_test() as instance:
        # Warm-up history (what `crypto-platform materialize` loads before the daemon starts).
        set_exchange_clock(replay_server.url, FIRST_TICK - timedelta(hours=1))
        assert run_range(
            defs, instance, WARM_UP_FIRST_DAY, WARM_UP_LAST_DAY, "BTCUSDT", last_symbol_id="ETHUSDT"
        ).success
        requests.post(
            f"{replay_server.url}/__replay__/outages",
            json={"symbol": SYMBOL_ID, "start": ms(LATE_BARS[0]), "end": ms(LATE_BARS[1])},
            timeout=10,
        ).raise_for_status()

        daemon = Daemonless(
            defs, instance, replay_server.url, {"market_data": build_resources(settings)["market_data"]}
        )
        checked = healed_after_downtime = 0
        repairs: list[tuple[datetime, list[tuple[str, str]]]] = []
        midnight_requests: dict[datetime, set[tuple[str, str]]] = {}
        for at in hours(FIRST_TICK, TICKS):
            if at in DOWNTIME:
                continue
            if at >= LATE_BARS_SERVED_FROM and replay_server.outages():
                replay_server.clear_outages()  # the exchange back-filled the late bars
            tick = daemon.tick(at)
            # one run an hour refreshes the three symbols
            assert [request_symbols(r, defs) for r in tick.refresh_requests] == [tuple(SYMBOLS)], at
            if tick.repair_requests:
                repairs.append((at, [request_days(r) for r in tick.repair_requests]))
                assert all(request_symbols(r, defs) == (SYMBOL_ID,) for r in tick.repair_requests)
            if at.hour == 0:
                midnight_requests[at] = {request_days(r) for r in tick.refresh_requests}
            # After every tick the store holds exactly the bars the exchange serves as closed by now.
            for symbol_id, symbol in SYMBOLS.items():
                served = served_closed_bars(replay_server.url, symbol_id, window_start, ms(at))
                stored = stored_bars(store, symbol, window_start, ms(at))
                assert stored.is_duplicated().sum() == 0, (symbol_id, at)
                missing = set(served.to_list()) - set(stored.to_list())
                # ... except the late bars between their back-fill and the repair, which the test is for
                late_window = symbol_id == SYMBOL_ID and at < LATE_BARS_SERVED_FROM + timedelta(hours=1)
                assert not missing or late_window, (symbol_id, at, sorted(missing))
                assert set(stored.to_list()) <= set(served.to_list()), (symbol_id, at)
            checked += 1
            if at == FIRST_TICK_AFTER_DOWNTIME:
                # the bars of 20:00-23:00 on the 3rd are yesterday's: the catch-up asks for both days
                assert [request_days(r) for r in tick.refresh_requests] == [("2025-06-03", "2025-06-04")]
                healed_after_downtime = len(
                    served_closed_bars(replay_server.url, SYMBOL_ID, window_start, ms(at))
                )
        elapsed = time.monotonic() - started

        assert not daemon.failed_runs
        assert healed_after_downtime
        # every midnight asks for the day that just ended and the new one, in one run
        assert midnight_requests and all(
            days == {((at - timedelta(days=1)).date().isoformat(), at.date().isoformat())}
            for at, days in midnight_requests.items()
        ), midnight_requests
        # the late bars: repaired at once (22:05), after 1 h (23:05), then after 2 h (01:05), when the
        # exchange had them; every attempt asked for that one day only
        assert [(at.strftime("%d %H:%M"), days) for at, days in repairs] == [
            ("02 22:05", [("2025-06-02", "2025-06-02")]),
            ("02 23:05", [("2025-06-02", "2025-06-02")]),
            ("03 01:05", [("2025-06-02", "2025-06-02")]),
        ]
        ledger = GapLedger.from_cursor(daemon.cursor)
        assert ledger.gaps == {}  # healed, nothing given up

        last = max(set(hours(FIRST_TICK, TICKS)) - DOWNTIME)
        expected_bars = (ms(last) // 3_600_000 * 3_600_000 - window_start) // 3_600_000
        for symbol_id, symbol in SYMBOLS.items():
            served = served_closed_bars(replay_server.url, symbol_id, window_start, ms(last))
            stored = stored_bars(store, symbol, window_start, ms(last))
            assert len(served) == expected_bars, symbol_id
            assert stored.sort().to_list() == served.sort().to_list(), symbol_id
            # features: every row from the first simulated day on has the full look-back, no nulls
            features, _ = read_partitioned(
                store, FEATURES_ASSET, symbol, ms(FIRST_TICK.replace(hour=0)), ms(last)
            )
            assert features is not None
            assert features.height == stored.filter(stored >= ms(FIRST_TICK.replace(hour=0))).len()
            assert features.select(FEATURE_COLUMNS).null_count().sum_horizontal().item() == 0
            assert features.get_column(READY_COLUMN).all()
        # the UI's staleness: a one-partition run (each repair) reports that day's fingerprint as its data
        # version; a run over several symbols shares one version over all its partitions
        by_run: dict[str, list] = {}
        for record in instance.fetch_materializations(AssetKey("ohlcv"), limit=5000).records:
            by_run.setdefault(record.run_id, []).append(record.asset_materialization)
        one_partition = [mats[0] for mats in by_run.values() if len(mats) == 1]
        assert len(one_partition) == sum(len(days) for _, days in repairs)
        for mat in one_partition:
            assert mat.tags["dagster/data_version"] == mat.metadata["bars_sha256"].value
        for mats in by_run.values():
            assert len({mat.tags["dagster/data_version"] for mat in mats}) == 1
        print(
            f"\n{checked} ticks over {TICKS} simulated hours ({len(DOWNTIME)} h down), {daemon.runs} runs: "
            f"{len(SYMBOLS)} symbols, {len(served)} closed bars served and {len(stored)} stored per "
            "symbol, 0 missing, "
            f"{int(stored.is_duplicated().sum())} duplicated; {healed_after_downtime} bars matched on the "
            f"first tick after the downtime; {elapsed:.0f} s"
        )


# A genuine hole in Binance's BTCUSDT history: no 13:00 bar on 2023-03-24.
OUTAGE_DAY = "2023-03-24"


def test_gap_repair_gives_up_on_a_real_exchange_outage(tmp_path: Path, real_replay_server) -> None:
    settings = exchange_settings(
        tmp_path / "data",
        real_replay_server.url,
        CRYPTO_SYMBOLS=SYMBOL,
        CRYPTO_PARTITIONS_START="2023-01-01",
    )
    defs = build(settings)
    start = datetime.fromtimestamp(real_replay_server.now_ms() / 1000, tz=UTC)
    with instance_for_test() as instance:
        set_exchange_clock(real_replay_server.url, start)
        assert run_range(defs, instance, OUTAGE_DAY, OUTAGE_DAY, SYMBOL_ID).success
        daemon = Daemonless(
            defs, instance, real_replay_server.url, {"market_data": build_resources(settings)["market_data"]}
        )
        repaired_at, gave_up_at = [], []
        for i in range(10):
            at = start + timedelta(hours=i)
            set_exchange_clock(real_replay_server.url, at)
            tick_result = daemon.repair_tick()
            repaired_at += [i] * len(tick_result.run_requests or [])
            if tick_result.asset_events:
                gave_up_at.append(i)
                (observation,) = tick_result.asset_events
                assert observation.partition == f"{OUTAGE_DAY}|{SYMBOL_ID}"
                assert observation.metadata["missing_bars"].value == 1
                assert "outage" in observation.metadata["gap_repair"].value
        # asked at once, after 1 h and after 2 more; given up when the last back-off (4 h) ran out
        assert repaired_at == [0, 1, 3]
        assert gave_up_at == [7]
        assert not daemon.failed_runs
        ledger = GapLedger.from_cursor(daemon.cursor)
        assert list(ledger.reported_gaps()) == [f"{OUTAGE_DAY}|{SYMBOL_ID}"]
        stored = stored_bars(
            LocalStore(tmp_path / "data"), SYMBOL, day_start_ms(OUTAGE_DAY), day_start_ms("2023-03-25")
        )
        assert len(stored) == 23 and ms(datetime(2023, 3, 24, 13, tzinfo=UTC)) not in stored.to_list()
