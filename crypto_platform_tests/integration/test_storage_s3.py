"""The object store and the Parquet IO manager on a local directory and on moto's standalone S3 server."""

# No `from __future__ import annotations`: Dagster checks an asset's `context` annotation unevaluated.

import logging
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    asset,
    instance_for_test,
    materialize,
)

from crypto_platform.defs.io_managers import ParquetIOManager
from crypto_platform.defs.market.partitions import market_partitions_def, previous_days_mapping
from crypto_platform.lib.storage import (
    ObjectNotFoundError,
    S3Store,
    day_start_ms,
    list_partitions,
    open_store,
    partition_key,
    quality_report_keys,
    read_ohlcv,
    read_parquet,
)
from crypto_platform_tests.fixtures.servers import S3Location
from crypto_platform_tests.integration.market_runs import build, market_settings, range_tags, run_range

# the tiny test graph uses the same beta APIs (single-run backfills, multi-partition mappings) as the platform
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::dagster.BetaWarning")]
HOUR = 3_600_000


def test_s3_store_operations(s3_location: S3Location) -> None:
    store = open_store(s3_location.url, s3_location.endpoint_url)
    assert isinstance(store, S3Store)
    store.write_bytes("a/b.bin", b"one")
    store.write_bytes("a/b.bin", b"two")
    store.write_bytes("a/c.bin", b"three")
    assert store.read_bytes("a/b.bin") == b"two"
    assert store.exists("a/c.bin") and not store.exists("a/zzz.bin")
    assert store.list("a/") == ["a/b.bin", "a/c.bin"]
    # the prefix isolates stores sharing a bucket
    other = open_store(f"s3://{s3_location.bucket}/elsewhere", s3_location.endpoint_url)
    assert other.list() == [] and not other.exists("a/b.bin")
    store.delete("a/b.bin")
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("a/b.bin")
    assert store.uri("a/c.bin") == f"s3://{s3_location.bucket}/platform/a/c.bin"


def _tiny_graph(settings):
    partitions_def = market_partitions_def(settings)

    @asset(
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        io_manager_key="parquet_io_manager",
    )
    def bars(context: AssetExecutionContext) -> pl.DataFrame:
        # Rows for the first two days of the run only: the third partition has none.
        days = sorted({k.split("|")[0] for k in context.partition_keys})
        start = day_start_ms(days[0])
        bad = context.run.tags.get("test/stray") == "1"
        hours = 48 + (72 if bad else 0)  # "stray": rows beyond the run's partitions
        return pl.DataFrame(
            {
                "symbol": ["BTC/USDT"] * hours,
                "ts": [start + i * HOUR for i in range(hours)],
                "v": range(hours),
            }
        )

    @asset(
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        io_manager_key="parquet_io_manager",
        ins={"bars": AssetIn(partition_mapping=previous_days_mapping(1))},
    )
    def doubled(bars: pl.DataFrame) -> pl.DataFrame:
        return bars.with_columns(pl.col("v") * 2).filter(pl.col("ts") >= day_start_ms("2024-05-02"))

    return [bars, doubled]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_parquet_io_manager_roundtrip(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "s3":
        location: S3Location = request.getfixturevalue("s3_location")
        io_manager = ParquetIOManager(location=location.url, endpoint_url=location.endpoint_url)
    else:
        io_manager = ParquetIOManager(location=str(tmp_path / "data"))
    store = io_manager.store()
    settings = market_settings(tmp_path / "unused")
    assets = _tiny_graph(settings)
    with instance_for_test() as instance:
        result = materialize(
            assets,
            instance=instance,
            resources={"parquet_io_manager": io_manager},
            tags=range_tags("2024-05-02", "2024-05-04", "BTCUSDT"),
        )
        assert result.success
        # split per day; the day without rows is an empty file, not a missing one
        assert list_partitions(store, "bars") == [
            ("BTCUSDT", d) for d in ("2024-05-02", "2024-05-03", "2024-05-04")
        ]
        heights = [
            read_parquet(store, partition_key("bars", "BTCUSDT", d)).height
            for d in ("2024-05-02", "2024-05-03")
        ]
        assert heights == [24, 24]
        empty = read_parquet(store, partition_key("bars", "BTCUSDT", "2024-05-04"))
        assert empty.height == 0 and empty.columns == ["symbol", "ts", "v"]
        # doubled read 2024-05-01 … 2024-05-04 of bars (one day of look-back) as one frame
        assert read_parquet(store, partition_key("doubled", "BTCUSDT", "2024-05-03"))["v"].to_list() == [
            2 * v for v in range(24, 48)
        ]
        # … and the run log names the look-back partition that had no file
        logs = [e.user_message for e in instance.all_logs(result.run_id) if e.level >= logging.WARNING]
        assert any("no stored file" in m and "2024-05-01|BTCUSDT" in m for m in logs), logs
        mats = {
            (e.asset_key.to_user_string(), e.partition): e.metadata
            for e in result.get_asset_materialization_events()
            for e in [e.event_specific_data.materialization]
        }
        assert mats[("bars", "2024-05-03|BTCUSDT")]["dagster/row_count"].value == 24
        assert mats[("bars", "2024-05-03|BTCUSDT")]["path"].value == store.uri(
            partition_key("bars", "BTCUSDT", "2024-05-03")
        )

        # rows outside the run's partitions fail the run instead of being dropped
        stray = materialize(
            assets,
            instance=instance,
            resources={"parquet_io_manager": io_manager},
            tags={**range_tags("2024-05-02", "2024-05-04", "BTCUSDT"), "test/stray": "1"},
            selection="bars",
            raise_on_error=False,
        )
        assert not stray.success
        failure = next(e for e in stray.all_events if e.is_step_failure)
        assert "outside the partitions of this run" in failure.event_specific_data.error.to_string()


def test_market_graph_writes_to_s3(s3_location: S3Location, tmp_path: Path) -> None:
    settings = market_settings(s3_location.url, CRYPTO_S3_ENDPOINT_URL=s3_location.endpoint_url)
    defs = build(settings)
    with instance_for_test() as instance:
        assert run_range(defs, instance, "2024-02-01", "2024-02-02", "ETHUSDT").success
    store = open_store(s3_location.url, s3_location.endpoint_url)
    assert list_partitions(store, "ohlcv") == [("ETHUSDT", "2024-02-01"), ("ETHUSDT", "2024-02-02")]
    assert list_partitions(store, "features") == list_partitions(store, "ohlcv")
    bars = read_ohlcv(store, "ETH/USDT", day_start_ms("2024-02-01"), day_start_ms("2024-02-03"))
    assert bars.height == 48 and bars["ts"].is_unique().all()
    md_key, json_key = quality_report_keys("ETH/USDT", "2024-02-02")
    assert store.exists(md_key) and store.exists(json_key)
    # nothing was written to the local working directory instead
    assert not (tmp_path / "data").exists()
