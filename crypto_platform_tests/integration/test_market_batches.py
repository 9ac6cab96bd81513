"""One run refreshes many symbols, and a failing symbol does not hold the others back.

Four replayed symbols, one of which the exchange answers with HTTP 500 on every klines request: the
hourly refresh asks for one run over all four; it fails naming the broken symbol; the batch-split
sensor asks for the healthy symbols without it and for it alone; the three healthy symbols' partitions
are materialised with their coverage, the broken one's show as failed, and once the exchange serves
it again the next tick fetches it. Run on the embedded SQLite instance and on the deployments' one:
PostgreSQL with the batched event writes docker-compose.yml and the Helm values turn on, where a run's
materialisations of many partitions land in one INSERT and must still each count.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, AssetPartitionStatus, AssetRecordsFilter, DagsterInstance, instance_for_test

from crypto_platform.defs.market.run_requests import RANGE_END_TAG, RANGE_START_TAG
from crypto_platform.defs.resources import build_resources
from crypto_platform.devtools.replay.faults import FaultRule
from crypto_platform.devtools.replay.server import ReplayServer
from crypto_platform.lib.storage import LocalStore
from crypto_platform_tests.fixtures.dagster_home import postgres_dagster_home
from crypto_platform_tests.fixtures.servers import REPO_ROOT
from crypto_platform_tests.integration.market_days import (
    Daemonless,
    ms,
    request_days,
    request_symbols,
    served_closed_bars,
    stored_bars,
)
from crypto_platform_tests.integration.market_runs import build, exchange_settings

pytestmark = pytest.mark.integration

SYMBOL_IDS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
BROKEN = "SOLUSDT"
TICK = datetime(2025, 6, 1, 5, 5, tzinfo=UTC)
NEXT_TICK = datetime(2025, 6, 1, 6, 5, tzinfo=UTC)
DAY = "2025-06-01"


@pytest.fixture
def four_symbol_exchange() -> Iterator[ReplayServer]:
    server = ReplayServer(simulate=SYMBOL_IDS, now_ms=ms(TICK)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres-batched-events"])
def dagster_instance(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DagsterInstance]:
    if request.param == "sqlite":
        with instance_for_test() as instance:
            yield instance
        return
    postgres = request.getfixturevalue("postgres_server")
    db = postgres.create_database(f"dagster_{uuid.uuid4().hex[:10]}")
    compose_env = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["x-dagster-env"]
    batch_size = compose_env["DAGSTER_EVENT_BATCH_SIZE"]
    home = postgres_dagster_home(tmp_path, db, monkeypatch, DAGSTER_EVENT_BATCH_SIZE=batch_size)
    with DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _covered_until(instance, partition: str) -> int:
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("ohlcv"), asset_partitions=[partition]), limit=1
    ).records
    return int(record.asset_materialization.metadata["covered_until_ms"].value)


def test_a_failing_symbol_fails_alone_and_the_others_are_materialised(
    tmp_path: Path, four_symbol_exchange: ReplayServer, dagster_instance: DagsterInstance
) -> None:
    exchange = four_symbol_exchange
    settings = exchange_settings(
        tmp_path / "data",
        exchange.url,
        CRYPTO_SYMBOLS=",".join(SYMBOL_IDS),
        CRYPTO_PARTITIONS_START="2025-05-01",
        # the broken symbol exhausts its retries in about a second instead of a minute
        CRYPTO_EXCHANGE_RETRY_BUDGET_S="1",
    )
    defs = build(settings)
    store = LocalStore(tmp_path / "data")
    exchange.add_faults([FaultRule("500", count=10_000, endpoint="klines", symbol=BROKEN)])
    ohlcv_partitions = defs.resolve_assets_def("ohlcv").partitions_def
    partitions = [f"{DAY}|{s}" for s in SYMBOL_IDS]
    instance = dagster_instance
    daemon = Daemonless(
        defs, instance, exchange.url, {"market_data": build_resources(settings)["market_data"]}
    )
    tick = daemon.tick(TICK)

    # the refresh asked for ONE run over the four symbols
    (refresh,) = tick.refresh_requests
    assert (refresh.tags[RANGE_START_TAG], refresh.tags[RANGE_END_TAG]) == (
        f"{DAY}|BTCUSDT",
        f"{DAY}|BNBUSDT",
    )
    # it failed for SOL; the split asked for BTC+ETH together, SOL alone and BNB
    assert [request_symbols(r, defs) for r in daemon.split_requests] == [
        ("BTCUSDT", "ETHUSDT"),
        ("SOLUSDT",),
        ("BNBUSDT",),
    ]
    assert all(request_days(r) == (DAY, DAY) for r in daemon.split_requests)
    assert daemon.runs == 4 and len(daemon.failed_runs) == 2  # the batch and SOL's own run
    status = instance.get_status_by_partition(AssetKey("ohlcv"), partitions, ohlcv_partitions)
    assert status == {
        f"{DAY}|BTCUSDT": AssetPartitionStatus.MATERIALIZED,
        f"{DAY}|ETHUSDT": AssetPartitionStatus.MATERIALIZED,
        f"{DAY}|SOLUSDT": AssetPartitionStatus.FAILED,
        f"{DAY}|BNBUSDT": AssetPartitionStatus.MATERIALIZED,
    }
    features_status = instance.get_status_by_partition(AssetKey("features"), partitions, ohlcv_partitions)
    assert features_status[f"{DAY}|SOLUSDT"] == AssetPartitionStatus.FAILED
    day_start = ms(datetime(2025, 6, 1, tzinfo=UTC))
    for symbol_id in ("BTCUSDT", "ETHUSDT", "BNBUSDT"):
        # bars closed by 05:05 are the five of 00:00-04:00; the partition says so
        assert _covered_until(instance, f"{DAY}|{symbol_id}") == ms(datetime(2025, 6, 1, 5, tzinfo=UTC))
        served = served_closed_bars(exchange.url, symbol_id, day_start, ms(TICK))
        stored = stored_bars(store, f"{symbol_id[:3]}/USDT", day_start, ms(TICK))
        assert stored.sort().to_list() == served.sort().to_list() and len(stored) == 5
    assert stored_bars(store, "SOL/USDT", day_start, ms(TICK)).len() == 0

    # the exchange serves SOL again: the next tick asks for all four (SOL has no coverage yet)
    exchange.faults.clear()
    tick = daemon.tick(NEXT_TICK)
    (refresh,) = tick.refresh_requests
    assert request_symbols(refresh, defs) == SYMBOL_IDS
    assert len(daemon.failed_runs) == 2  # no new failure
    status = instance.get_status_by_partition(AssetKey("ohlcv"), partitions, ohlcv_partitions)
    assert set(status.values()) == {AssetPartitionStatus.MATERIALIZED}
    for symbol_id in SYMBOL_IDS:
        assert _covered_until(instance, f"{DAY}|{symbol_id}") == ms(datetime(2025, 6, 1, 6, tzinfo=UTC))
        served = served_closed_bars(exchange.url, symbol_id, day_start, ms(NEXT_TICK))
        stored = stored_bars(store, f"{symbol_id[:3]}/USDT", day_start, ms(NEXT_TICK))
        assert stored.is_duplicated().sum() == 0 and stored.sort().to_list() == served.sort().to_list()
