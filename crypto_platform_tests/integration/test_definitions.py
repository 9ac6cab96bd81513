"""The code location loads, its graph is the reviewed one, and the hourly refresh asks for the right runs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    BackfillPolicy,
    DagsterInstance,
    Definitions,
    MultiPartitionsDefinition,
    RunRequest,
    build_schedule_context,
    instance_for_test,
)

from crypto_platform.defs.market.partitions import (
    DayRange,
    contiguous_ranges,
    lookback_days,
    market_partition_key,
    split_partition_key,
)
from crypto_platform.defs.market.run_requests import RANGE_END_TAG, RANGE_START_TAG, batch_of_run
from crypto_platform.lib.features import LOOKBACK_BARS
from crypto_platform_tests.integration.market_days import request_days
from crypto_platform_tests.integration.market_runs import build, market_settings

# The reviewed shape of the graph: a change here is a change of the platform's contract
# (asset keys are storage paths, check names show in the UI, the schedule drives production).
EXPECTED_GRAPH = {
    "assets": {
        "ohlcv": {"deps": [], "group": "market"},
        "features": {"deps": ["ohlcv"], "group": "market"},
        "quality_report": {"deps": ["ohlcv"], "group": "market"},
        "trained_model": {"deps": ["features"], "group": "ml"},
        "model_promotion": {"deps": ["trained_model"], "group": "ml"},
        "feature_drift": {"deps": ["features", "model_promotion"], "group": "ml"},
        "forecast_track_record": {"deps": ["features"], "group": "ml"},
        "daily_report": {
            "deps": ["feature_drift", "forecast_track_record", "model_promotion", "quality_report"],
            "group": "reports",
        },
    },
    "checks": {
        ("ohlcv", "schema"): True,
        ("ohlcv", "ohlc_consistency"): True,
        ("ohlcv", "uniqueness"): True,
        ("ohlcv", "continuity"): False,
        ("ohlcv", "freshness"): False,
        ("model_promotion", "champion_beats_baselines"): False,
        ("feature_drift", "no_feature_drift"): False,
        ("forecast_track_record", "champion_beats_baselines_live"): False,
    },
    "jobs": ["daily_report_job", "market_job", "ml_drift_job", "ml_retrain_job"],
    "sensors": {
        "market_batch_split": ["market_job"],
        "market_gap_repair": ["market_job"],
        "ml_automation_sensor": [],
        "ml_model_reload_sensor": [],
        "ml_retrain_sensor": ["ml_retrain_job"],
    },
    "schedules": {
        "daily_report_schedule": ("30 0 * * *", "UTC", "daily_report_job"),
        "market_hourly_refresh": ("5 * * * *", "UTC", "market_job"),
        "ml_daily_drift": ("20 0 * * *", "UTC", "ml_drift_job"),
        "ml_weekly_retrain": ("0 3 * * 1", "UTC", "ml_retrain_job"),
    },
    "resources": ["data_store", "market_data", "ml", "mlflow", "parquet_io_manager"],
}


def _graph_snapshot(defs: Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "group": node.group_name,
        }
    checks = {}
    for check_key in graph.asset_check_keys:
        spec = graph.get_check_spec(check_key)
        checks[(check_key.asset_key.to_user_string(), check_key.name)] = spec.blocking
    repo = defs.get_repository_def()
    return {
        "assets": assets,
        "checks": checks,
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "sensors": {s.name: sorted(t.job_name for t in s.targets) for s in repo.sensor_defs},
        "schedules": {
            s.name: (s.cron_schedule, s.execution_timezone, s.job_name) for s in repo.schedule_defs
        },
        "resources": sorted(k for k in repo.get_top_level_resources() if k != "io_manager"),
    }


def test_module_defs_load() -> None:
    from crypto_platform.definitions import defs

    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert repo.has_job("market_job")
    assert {k.to_user_string() for k in defs.resolve_all_asset_keys()} >= {
        "ohlcv",
        "features",
        "quality_report",
    }


def test_graph_matches_reviewed_snapshot(tmp_path: Path) -> None:
    defs = build(market_settings(tmp_path))
    Definitions.validate_loadable(defs)
    assert _graph_snapshot(defs) == EXPECTED_GRAPH


def test_all_assets_share_one_partitioning_with_single_run_backfills(tmp_path: Path) -> None:
    defs = build(market_settings(tmp_path, CRYPTO_SYMBOLS="BTC/USDT,SOL/USDT,ETH/BTC"))
    graph = defs.resolve_asset_graph()
    partitions = {
        graph.get(AssetKey(name)).partitions_def for name in ("ohlcv", "features", "quality_report")
    }
    assert len(partitions) == 1
    (partitions_def,) = partitions
    assert isinstance(partitions_def, MultiPartitionsDefinition)
    assert partitions_def.get_partitions_def_for_dimension("symbol").get_partition_keys() == [
        "BTCUSDT",
        "SOLUSDT",
        "ETHBTC",
    ]
    date_dim = partitions_def.get_partitions_def_for_dimension("date")
    assert date_dim.get_first_partition_key() == "2020-01-01"
    # end_offset=1: today's partition exists, so the hourly refresh can write it
    assert date_dim.get_last_partition_key() == datetime.now(UTC).date().isoformat()
    for name in ("ohlcv", "features", "quality_report"):
        policy = graph.get(AssetKey(name)).backfill_policy
        assert policy == BackfillPolicy.single_run()


def test_features_read_enough_history_across_day_partitions(tmp_path: Path) -> None:
    defs = build(market_settings(tmp_path))
    graph = defs.resolve_asset_graph()
    features, ohlcv = AssetKey("features"), AssetKey("ohlcv")
    mapping = graph.get_partition_mapping(features, ohlcv)
    pdef = graph.get(ohlcv).partitions_def
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        pdef.subset_with_partition_keys([market_partition_key("2024-03-10", "ETHUSDT")]), pdef, pdef
    ).partitions_subset.get_partition_keys()
    # LOOKBACK_BARS hourly bars (720 for the monthly realized volatility) = 30 days before the day,
    # same symbol only
    days = lookback_days(LOOKBACK_BARS, "1h")
    assert days == 30
    expected = [f"{(date(2024, 3, 10) - timedelta(days=d)).isoformat()}|ETHUSDT" for d in range(days, -1, -1)]
    assert sorted(upstream) == expected
    # the first day has no earlier partitions: the mapping must not fail, just give less history
    first = mapping.get_upstream_mapped_partitions_result_for_partitions(
        pdef.subset_with_partition_keys([market_partition_key("2020-01-01", "BTCUSDT")]), pdef, pdef
    ).partitions_subset.get_partition_keys()
    assert list(first) == ["2020-01-01|BTCUSDT"]


def test_lookback_days_and_contiguous_ranges() -> None:
    assert lookback_days(168, "1h") == 7
    assert lookback_days(169, "1h") == 8
    assert lookback_days(168, "4h") == 28
    keys = [
        "2024-01-01|BTCUSDT",
        "2024-01-03|BTCUSDT",
        "2024-01-02|BTCUSDT",
        "2024-01-05|BTCUSDT",
        "2024-01-02|ETHUSDT",
    ]
    assert contiguous_ranges(keys) == [
        DayRange("BTCUSDT", date(2024, 1, 1), date(2024, 1, 3)),
        DayRange("BTCUSDT", date(2024, 1, 5), date(2024, 1, 5)),
        DayRange("ETHUSDT", date(2024, 1, 2), date(2024, 1, 2)),
    ]
    assert split_partition_key(market_partition_key("2024-01-02", "ETH/USDT")) == ("ETHUSDT", "2024-01-02")
    with pytest.raises(ValueError):
        split_partition_key("2024-01-02")


def _refresh_requests(defs: Definitions, instance: DagsterInstance, when: datetime) -> list[RunRequest]:
    schedule = defs.resolve_schedule_def("market_hourly_refresh")
    # with the repository, evaluate_tick also resolves each request against the job's partitions
    with build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    ) as context:
        return list(schedule.evaluate_tick(context).run_requests or [])


def _stored(instance: DagsterInstance, partition: str, covered_until: datetime) -> None:
    """An `ohlcv` materialisation of `partition` whose bars were fetched up to `covered_until`."""
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key="ohlcv",
            partition=partition,
            metadata={"covered_until_ms": int(covered_until.timestamp() * 1000), "missing_bars": 0},
        )
    )


def _rectangles(defs: Definitions, requests: list[RunRequest]) -> list[tuple[tuple[str, ...], str, str]]:
    """(symbols, first day, last day) of each market run request."""
    pdef = defs.resolve_assets_def("ohlcv").partitions_def
    found = []
    for request in requests:
        tags = dict(request.tags)
        if request.partition_key is not None:
            tags["dagster/partition"] = str(request.partition_key)
        batch = batch_of_run(tags, pdef)
        assert batch is not None, request
        found.append((batch.symbol_ids, batch.first_day.isoformat(), batch.last_day.isoformat()))
    return found


def test_hourly_schedule_without_history_requests_the_last_closed_bars_day(tmp_path: Path) -> None:
    defs = build(market_settings(tmp_path, CRYPTO_SYMBOLS="BTC/USDT,ETH/USDT,SOL/USDT"))
    with instance_for_test() as instance:
        tick = datetime(2024, 3, 10, 7, 5, tzinfo=UTC)
        requests = _refresh_requests(defs, instance, tick)
        assert all(r.job_name in (None, "market_job") for r in requests)
        # one run for the three symbols: the rectangle 2024-03-10 × BTCUSDT..SOLUSDT
        assert _rectangles(defs, requests) == [
            (("BTCUSDT", "ETHUSDT", "SOLUSDT"), "2024-03-10", "2024-03-10")
        ]
        assert (requests[0].tags[RANGE_START_TAG], requests[0].tags[RANGE_END_TAG]) == (
            "2024-03-10|BTCUSDT",
            "2024-03-10|SOLUSDT",
        )
        # distinct run keys per tick, so the next hour's refresh is not deduplicated away
        later = _refresh_requests(defs, instance, tick.replace(hour=8))
        assert {r.run_key for r in requests}.isdisjoint({r.run_key for r in later})
        # at 00:05 the bar that just closed is yesterday's 23:00 bar: yesterday and today are asked for
        midnight = _refresh_requests(defs, instance, datetime(2024, 3, 11, 0, 5, tzinfo=UTC))
        assert {request_days(r) for r in midnight} == {("2024-03-10", "2024-03-11")}


def test_hourly_schedule_batch_size_bounds_the_symbols_per_run(tmp_path: Path) -> None:
    symbols = "BTC/USDT,ETH/USDT,SOL/USDT,BNB/USDT,XRP/USDT"
    tick = datetime(2024, 3, 10, 7, 5, tzinfo=UTC)
    with instance_for_test() as instance:
        two = build(market_settings(tmp_path, CRYPTO_SYMBOLS=symbols, CRYPTO_REFRESH_BATCH_SYMBOLS="2"))
        assert [r[0] for r in _rectangles(two, _refresh_requests(two, instance, tick))] == [
            ("BTCUSDT", "ETHUSDT"),
            ("SOLUSDT", "BNBUSDT"),
            ("XRPUSDT",),
        ]
        # batch size 1 is the run-per-symbol design: one plain partition run per symbol
        one = build(market_settings(tmp_path, CRYPTO_SYMBOLS=symbols, CRYPTO_REFRESH_BATCH_SYMBOLS="1"))
        assert [str(r.partition_key) for r in _refresh_requests(one, instance, tick)] == [
            f"2024-03-10|{s}" for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")
        ]


def test_hourly_schedule_asks_for_every_day_since_the_last_fetch(tmp_path: Path) -> None:
    per_symbol = build(market_settings(tmp_path, CRYPTO_REFRESH_BATCH_SYMBOLS="1"))
    batched = build(market_settings(tmp_path))
    with instance_for_test() as instance:
        # BTC was last fetched at 23:05 (bars through 22:00 closed), ETH's day was complete.
        _stored(instance, "2024-03-10|BTCUSDT", datetime(2024, 3, 10, 23, 0, tzinfo=UTC))
        _stored(instance, "2024-03-10|ETHUSDT", datetime(2024, 3, 11, 0, 0, tzinfo=UTC))
        midnight = datetime(2024, 3, 11, 0, 5, tzinfo=UTC)
        # the 23:00 bar closed at 00:00 lives in yesterday's partition: that day is asked for again
        assert _rectangles(per_symbol, _refresh_requests(per_symbol, instance, midnight)) == [
            (("BTCUSDT",), "2024-03-10", "2024-03-11"),
            (("ETHUSDT",), "2024-03-11", "2024-03-11"),
        ]
        # batched, ETH joins BTC's range: one run, ETH's complete day re-fetched in the same request
        assert _rectangles(batched, _refresh_requests(batched, instance, midnight)) == [
            (("BTCUSDT", "ETHUSDT"), "2024-03-10", "2024-03-11")
        ]
        # the daemon was down from 00:05 on the 11th to 03:05 on the 13th: the runs catch up
        after_downtime = datetime(2024, 3, 13, 3, 5, tzinfo=UTC)
        assert _rectangles(per_symbol, _refresh_requests(per_symbol, instance, after_downtime)) == [
            (("BTCUSDT",), "2024-03-10", "2024-03-13"),
            (("ETHUSDT",), "2024-03-11", "2024-03-13"),
        ]
        assert _rectangles(batched, _refresh_requests(batched, instance, after_downtime)) == [
            (("BTCUSDT", "ETHUSDT"), "2024-03-10", "2024-03-13")
        ]
        # a refresh that stored today up to 03:00 moves the next tick's start to today
        _stored(instance, "2024-03-13|BTCUSDT", datetime(2024, 3, 13, 3, 0, tzinfo=UTC))
        _stored(instance, "2024-03-13|ETHUSDT", datetime(2024, 3, 13, 3, 0, tzinfo=UTC))
        next_hour = datetime(2024, 3, 13, 4, 5, tzinfo=UTC)
        assert _rectangles(batched, _refresh_requests(batched, instance, next_hour)) == [
            (("BTCUSDT", "ETHUSDT"), "2024-03-13", "2024-03-13")
        ]
