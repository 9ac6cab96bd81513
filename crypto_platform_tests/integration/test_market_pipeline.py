"""The market graph materialised in-process on a test instance: simulated and replayed real bars,
single-run ranges, blocking checks, idempotent re-materialisation and look-back across partitions."""

from __future__ import annotations

import gzip
import json
import math
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, Definitions, instance_for_test
from polars.testing import assert_frame_equal

from crypto_platform.defs.market import build_market_definitions
from crypto_platform.defs.market.run_requests import SymbolBatch, failed_symbols, split_failed_batch
from crypto_platform.defs.resources import MarketDataResource, build_resources
from crypto_platform.lib.features import FEATURE_COLUMNS
from crypto_platform.lib.market.schema import OHLCV_COLUMNS
from crypto_platform.lib.market.source import MarketData
from crypto_platform.lib.storage import (
    LocalStore,
    day_start_ms,
    features_key,
    list_partitions,
    ohlcv_key,
    quality_report_keys,
    read_ohlcv,
    read_parquet,
)
from crypto_platform.settings import Settings
from crypto_platform_tests.integration.market_runs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    build,
    check_results,
    exchange_settings,
    market_settings,
    materializations,
    run_range,
)

pytestmark = pytest.mark.integration
DAYS_3 = ["2024-01-08", "2024-01-09", "2024-01-10"]


def test_simulated_graph_two_symbols_three_days(tmp_path: Path) -> None:
    settings = market_settings(tmp_path / "data")
    defs = build(settings)
    store = LocalStore(tmp_path / "data")
    with instance_for_test() as instance:
        result = run_range(defs, instance, DAYS_3[0], DAYS_3[-1], "BTCUSDT", last_symbol_id="ETHUSDT")
        assert result.success
        # one run over the rectangle 3 days × 2 symbols (the shape a single-run backfill over both has)
        runs = instance.get_runs()
        assert len(runs) == 1
        assert (runs[0].tags[RANGE_START_TAG], runs[0].tags[RANGE_END_TAG]) == (
            "2024-01-08|BTCUSDT",
            "2024-01-10|ETHUSDT",
        )
        mats = materializations(result)
        expected_partitions = {f"{d}|{sym}" for d in DAYS_3 for sym in ("BTCUSDT", "ETHUSDT")}
        for asset in ("ohlcv", "features", "quality_report"):
            assert set(mats[asset]) == expected_partitions, asset
        for meta in mats["ohlcv"].values():
            assert meta["dagster/row_count"] == 24
            assert meta["source"] == "simulated"
            assert meta["run_rows"] == 144 and meta["run_partitions"] == 6
            assert meta["run_first_bar"] == "2024-01-08T00:00:00Z"
            assert meta["run_last_bar"] == "2024-01-10T23:00:00Z"
            assert meta["run_requests"] == 0 and meta["run_gaps"] == 0
        # each partition's own coverage: the end of its day (a past day, fetched complete)
        for partition, meta in mats["ohlcv"].items():
            day = partition.split("|")[0]
            assert meta["covered_until_ms"] == day_start_ms(day) + 86_400_000, partition
            assert meta["missing_bars"] == 0
        assert check_results(result) == {
            "schema": (True, "ERROR"),
            "ohlc_consistency": (True, "ERROR"),
            "uniqueness": (True, "ERROR"),
            "continuity": (True, "WARN"),
            "freshness": (True, "WARN"),
        }
        materialized = instance.get_materialized_partitions(AssetKey("features"))
        assert len(materialized) == 6

    assert list_partitions(store, "ohlcv") == [(s, d) for s in ("BTCUSDT", "ETHUSDT") for d in DAYS_3]
    for symbol in ("BTC/USDT", "ETH/USDT"):
        bars = read_ohlcv(store, symbol, day_start_ms(DAYS_3[0]), day_start_ms("2024-01-11"))
        assert bars.height == 72 and bars["ts"].is_unique().all()
        assert set(bars["source"].to_list()) == {"simulated"} and set(bars["symbol"].to_list()) == {symbol}
        day = read_parquet(store, features_key(symbol, "2024-01-09"))
        assert day.height == 24 and set(FEATURE_COLUMNS) <= set(day.columns)
        md_key, json_key = quality_report_keys(symbol, "2024-01-10")
        report = json.loads(store.read_bytes(json_key))
        assert (report["symbol"], report["day"], report["status"]) == (symbol, "2024-01-10", "OK")
        assert report["source"] == "simulated" and report["unique_bars"] == 24
        assert "Source of the bars: **simulated**" in store.read_bytes(md_key).decode()


def _stored(store: LocalStore) -> dict[str, pl.DataFrame]:
    return {key: read_parquet(store, key) for key in store.list() if key.endswith(".parquet")}


def test_rematerialization_is_idempotent_and_lookback_matches_full_history(tmp_path: Path) -> None:
    settings = market_settings(tmp_path / "data")
    defs = build(settings)
    store = LocalStore(tmp_path / "data")
    with instance_for_test() as instance:
        # 32 days: the last one has the full 30-day look-back (LOOKBACK_BARS = 720 bars) in the range.
        assert run_range(defs, instance, "2024-01-01", "2024-02-01", "BTCUSDT").success
        first = _stored(store)
        assert run_range(defs, instance, "2024-01-01", "2024-02-01", "BTCUSDT").success
        second = _stored(store)
        assert first.keys() == second.keys()
        assert len([k for k in first if k.startswith("ohlcv/")]) == 32
        for key, frame in first.items():
            assert frame.height == second[key].height, key
            if "quality_report" not in key:  # the summary row carries its generation time
                assert frame.equals(second[key]), key
            if "ts" in frame.columns:
                assert frame["ts"].is_unique().all(), key

        # The last day alone, in its own run: its features come from the 30 stored days before it and
        # must equal what the 32-day run computed from its own history.
        assert run_range(defs, instance, "2024-02-01", "2024-02-01", "BTCUSDT").success
        alone = read_parquet(store, features_key("BTC/USDT", "2024-02-01"))
        # rolling windows started at another row round differently in the last bits (~1e-16 relative)
        assert_frame_equal(alone, first[features_key("BTC/USDT", "2024-02-01")], rel_tol=1e-9, abs_tol=1e-12)
        assert alone["feature_ready"].all()  # the full look-back was found in storage


class CorruptingMarketData(MarketDataResource):
    """Real simulated bars with one defect injected: the subject is the checks, not the source."""

    defect: str = "high_below_low"
    only_symbol: str | None = None  # e.g. "ETH/USDT": the other symbols' bars stay sound

    def load(self, symbol: str, since_ms: int, until_ms: int) -> MarketData:
        data = super().load(symbol, since_ms, until_ms)
        if self.only_symbol is not None and symbol != self.only_symbol:
            return data
        frame = data.frame.with_row_index("i")
        if self.defect == "high_below_low":
            frame = frame.with_columns(
                pl.when(pl.col("i") == 5).then(pl.col("low") - 1.0).otherwise(pl.col("high")).alias("high")
            )
        elif self.defect == "gap":
            frame = frame.filter(~pl.col("i").is_between(10, 12))
        return MarketData(frame.drop("i"), data.source, data.requests, data.gaps, data.warnings)


def _defs_with_source(settings: Settings, market_data: MarketDataResource) -> Definitions:
    resources = {**build_resources(settings), "market_data": market_data}
    return Definitions.merge(build_market_definitions(settings), Definitions(resources=resources))


def test_failing_blocking_check_stops_downstream_in_the_same_run(tmp_path: Path) -> None:
    settings = market_settings(tmp_path / "data")
    defs = _defs_with_source(settings, CorruptingMarketData(source="simulated", defect="high_below_low"))
    store = LocalStore(tmp_path / "data")
    with instance_for_test() as instance:
        result = run_range(defs, instance, "2024-01-01", "2024-01-02", "BTCUSDT")
        assert not result.success
        checks = check_results(result)
        assert checks["ohlc_consistency"] == (False, "ERROR")
        assert checks["schema"] == (True, "ERROR") and checks["uniqueness"] == (True, "ERROR")
        started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
        failed = {e.step_key for e in result.all_events if e.is_step_failure}
        assert started == {"ohlcv"} and failed == {"ohlcv"}  # features / quality_report never started
        assert set(materializations(result)) == {"ohlcv"}
        assert instance.get_latest_materialization_event(AssetKey("features")) is None
    assert list_partitions(store, "features") == []
    assert list_partitions(store, "quality_report") == []


def test_a_blocking_check_failing_for_one_symbol_names_it_for_the_split(tmp_path: Path) -> None:
    settings = market_settings(tmp_path / "data")
    corrupt_eth = CorruptingMarketData(source="simulated", defect="high_below_low", only_symbol="ETH/USDT")
    defs = _defs_with_source(settings, corrupt_eth)
    with instance_for_test() as instance:
        result = run_range(defs, instance, "2024-01-01", "2024-01-02", "BTCUSDT", last_symbol_id="ETHUSDT")
        assert not result.success
        assert check_results(result)["ohlc_consistency"] == (False, "ERROR")
        # the run names ETH, so the split runs BTC alone (it succeeds) and ETH alone
        assert failed_symbols(result) == ["ETHUSDT"]
        batch = SymbolBatch(("BTCUSDT", "ETHUSDT"), date(2024, 1, 1), date(2024, 1, 2))
        assert [p.symbol_ids for p in split_failed_batch(batch, failed_symbols(result))] == [
            ("BTCUSDT",),
            ("ETHUSDT",),
        ]
        assert run_range(defs, instance, "2024-01-01", "2024-01-02", "BTCUSDT").success


def test_failing_warning_check_does_not_block(tmp_path: Path) -> None:
    settings = market_settings(tmp_path / "data")
    defs = _defs_with_source(settings, CorruptingMarketData(source="simulated", defect="gap"))
    with instance_for_test() as instance:
        result = run_range(defs, instance, "2024-01-01", "2024-01-02", "BTCUSDT")
        assert result.success
        assert check_results(result)["continuity"] == (False, "WARN")
        mats = materializations(result)
        assert set(mats) == {"ohlcv", "features", "quality_report"}
        gaps = mats["ohlcv"]["2024-01-01|BTCUSDT"]
        assert gaps["run_gaps"] == 1
        assert gaps["run_gap_list"] == [
            {"symbol": "BTC/USDT", "after": "2024-01-01T09:00:00Z", "missing_bars": 3}
        ]
        assert mats["ohlcv"]["2024-01-01|BTCUSDT"]["dagster/row_count"] == 21


def _real_bars(shared_ohlcv_dir: Path, symbol_id: str, start_ms: int, end_ms: int) -> pl.DataFrame:
    with gzip.open(shared_ohlcv_dir / f"binance_{symbol_id}_1h.csv.gz") as handle:
        frame = pl.read_csv(handle.read(), schema_overrides={"ts": pl.Int64})
    return frame.filter(pl.col("ts").is_between(start_ms, end_ms, closed="left")).with_columns(
        pl.col(c).cast(pl.Float64) for c in OHLCV_COLUMNS[1:]
    )


@pytest.mark.real_data
def test_real_bars_replayed_one_paginated_fetch_per_symbol(
    tmp_path: Path, shared_ohlcv_dir: Path, real_replay_server
) -> None:
    first_day, last_day = date(2026, 3, 1), date(2026, 4, 15)  # the replay clock stands at 2026-04-16 00:30
    settings = exchange_settings(
        tmp_path / "data",
        real_replay_server.url,
        CRYPTO_PARTITIONS_START="2017-08-17",
    )
    defs = build(settings)
    store = LocalStore(tmp_path / "data")
    start_ms, end_ms = day_start_ms(first_day), day_start_ms(last_day + timedelta(days=1))
    with instance_for_test() as instance:
        for symbol_id in ("BTCUSDT", "ETHUSDT"):
            real_replay_server.reset()
            result = run_range(defs, instance, first_day.isoformat(), last_day.isoformat(), symbol_id)
            assert result.success
            expected = _real_bars(shared_ohlcv_dir, symbol_id, start_ms, end_ms)
            pages = math.ceil(expected.height / 1000)
            assert pages == 2  # 46 days of hourly bars: the range needs pagination
            klines = real_replay_server.stats()["klines_by_symbol"]
            assert klines == {symbol_id: pages}, klines
            mats = materializations(result)
            assert len(mats["ohlcv"]) == 46
            meta = mats["ohlcv"][f"{last_day}|{symbol_id}"]
            assert meta["run_requests"] == pages and meta["source"] == "exchange"
            assert meta["run_rows"] == expected.height

            stored = read_ohlcv(store, symbol_id, start_ms, end_ms)
            assert stored.select(OHLCV_COLUMNS).equals(expected.select(OHLCV_COLUMNS))
            assert set(stored["source"].to_list()) == {"exchange"}
        assert len(instance.get_runs()) == 2
    # every day partition of the range is a file, split on UTC day boundaries
    assert len(list_partitions(store, "ohlcv", "BTC/USDT")) == 46
    day = read_parquet(store, ohlcv_key("ETH/USDT", "2026-04-15"))
    assert day["ts"].min() == day_start_ms("2026-04-15") and day.height == 24
