"""The real Dagster webserver + daemon: a backfill launched through GraphQL exactly as the UI does it.

Selecting the three market assets and a range of partitions in the UI and pressing "Launch backfill"
sends `launchPartitionBackfill` with the asset keys and partition names. With single-run backfill
policies the daemon turns 2 symbols × the last 3 days into ONE run per symbol covering the three days
and all three assets.

Why "the last 3 days": an asset backfill targets the partitions picked for `ohlcv` plus everything
downstream of them, and through the 7-day look-back a past day of `ohlcv` feeds `features` of the
next 7 days. For a range ending today those later days do not exist, so all assets target the same
partitions and Dagster can put them in one run; for a range in the past `features` targets a wider
range and follows in a run of its own (still one per symbol).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crypto_platform.lib.storage import LocalStore, list_partitions
from crypto_platform_tests.fixtures.servers import DagsterWebserver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = ("ohlcv", "features", "quality_report")
TODAY = datetime.now(UTC).date()
DAYS = tuple((TODAY - timedelta(days=n)).isoformat() for n in (2, 1, 0))
SYMBOLS = ("BTCUSDT", "ETHUSDT")

LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill { id status numPartitions }
    ... on PythonError { message }
  }
}
"""

BACKFILL_RUNS = """
query BackfillRuns($backfillId: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $backfillId}]}) {
    __typename
    ... on Runs { results { runId status assetSelection { path } tags { key value } } }
  }
}
"""

MATERIALIZATIONS = """
query Materializations($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset { assetMaterializations(partitions: $partitions) { partition runId } }
  }
}
"""

CHECK_EXECUTIONS = """
query CheckExecutions($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 10) { runId status }
}
"""

TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def _wait_backfill(server: DagsterWebserver, backfill_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfill = server.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        runs = server.graphql(BACKFILL_RUNS, {"backfillId": backfill_id})["runsOrError"]["results"]
        runs_done = runs and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
        if backfill["status"] in TERMINAL and runs_done:
            return {"backfill": backfill, "runs": runs}
        time.sleep(1.0)
    raise AssertionError(f"backfill {backfill_id} not finished after {timeout}s: {backfill}, runs {runs}")


def test_ui_backfill_makes_one_run_per_symbol(dagster_webserver: DagsterWebserver) -> None:
    server = dagster_webserver
    partition_names = [f"{day}|{symbol}" for symbol in SYMBOLS for day in DAYS]
    launched = server.graphql(
        LAUNCH_BACKFILL,
        {
            "backfillParams": {
                "partitionNames": partition_names,
                "assetSelection": [{"path": [name]} for name in ASSETS],
                "fromFailure": False,
                "tags": [],
                "title": None,
                "description": None,
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    done = _wait_backfill(server, launched["backfillId"], timeout=240)

    assert done["backfill"]["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), done
    runs = done["runs"]
    assert [r["status"] for r in runs] == ["SUCCESS", "SUCCESS"], runs
    ranges = set()
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        ranges.add((tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]))
        assert sorted(key["path"][0] for key in run["assetSelection"]) == sorted(ASSETS)
    assert ranges == {(f"{DAYS[0]}|{s}", f"{DAYS[-1]}|{s}") for s in SYMBOLS}

    run_ids = {r["runId"] for r in runs}
    for name in ASSETS:
        asset = server.graphql(MATERIALIZATIONS, {"path": [name], "partitions": partition_names})[
            "assetOrError"
        ]
        assert asset["__typename"] == "Asset", asset
        events = asset["assetMaterializations"]
        assert sorted(e["partition"] for e in events) == sorted(partition_names), name
        assert {e["runId"] for e in events} == run_ids
    checks = server.graphql(CHECK_EXECUTIONS, {"path": ["ohlcv"], "name": "ohlc_consistency"})
    assert {(c["runId"], c["status"]) for c in checks["assetCheckExecutions"]} == {
        (run_id, "SUCCEEDED") for run_id in run_ids
    }

    # the runs executed in their own processes and wrote where the webserver was told to
    store = LocalStore(server.data_dir)
    assert list_partitions(store, "features") == [(s, d) for s in SYMBOLS for d in DAYS]
