"""Dagster run, event-log and schedule storage on a real PostgreSQL 15 cluster (dagster-postgres)."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg2
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from crypto_platform_tests.fixtures.dagster_home import postgres_dagster_home
from crypto_platform_tests.fixtures.servers import PostgresServer
from crypto_platform_tests.integration.market_runs import (
    RANGE_START_TAG,
    build,
    market_settings,
    run_range,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> PostgresServer:
    return postgres_server.create_database(f"dagster_{uuid.uuid4().hex[:10]}")


def test_market_run_is_stored_in_postgres_and_read_back(
    tmp_path: Path, pg_database: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    home = postgres_dagster_home(tmp_path, pg_database, monkeypatch)
    defs = build(market_settings(tmp_path / "data"))
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        result = run_range(defs, instance, "2024-06-01", "2024-06-02", "BTCUSDT")
        assert result.success
        run_id = result.run_id

    # A second instance (another process would do the same) sees the run through Postgres alone.
    with DagsterInstance.from_config(str(home)) as reader:
        runs = reader.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
        assert [r.run_id for r in runs] == [run_id]
        assert runs[0].tags[RANGE_START_TAG] == "2024-06-01|BTCUSDT"
        for asset in ("ohlcv", "features", "quality_report"):
            assert reader.get_materialized_partitions(AssetKey(asset)) == {
                "2024-06-01|BTCUSDT",
                "2024-06-02|BTCUSDT",
            }
        check = reader.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey("ohlcv"), "ohlc_consistency")]
        )
        execution = check[AssetCheckKey(AssetKey("ohlcv"), "ohlc_consistency")]
        assert execution.run_id == run_id and execution.status.value == "SUCCEEDED"

    # and the rows are really in that database
    conn = psycopg2.connect(
        host=pg_database.host,
        port=pg_database.port,
        user=pg_database.user,
        password=pg_database.password,
        dbname=pg_database.database,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
            assert cur.fetchone() == ("SUCCESS",)
            cur.execute(
                "SELECT count(*) FROM event_logs "
                "WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                (run_id,),
            )
            assert cur.fetchone() == (6,)  # 3 assets × 2 day partitions
    finally:
        conn.close()
