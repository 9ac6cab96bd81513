"""A real `dagster-daemon run` process launches the gap-repair sensor's run, and the run fills the holes.

The stored 2025-05-31 BTCUSDT and ETHUSDT partitions were fetched while the exchange lacked three bars
of each; the exchange has them now. The daemon evaluates `market_gap_repair` (its first tick comes at
once), enqueues ONE run over both symbols (the rectangle 2025-05-31 × BTCUSDT..ETHUSDT), dequeues and
launches it in a run worker process; the test only watches the instance and the files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from crypto_platform.defs.market.run_requests import RANGE_END_TAG, RANGE_START_TAG
from crypto_platform.defs.market.schedules import TRIGGER_TAG
from crypto_platform.lib.storage import LocalStore, day_start_ms
from crypto_platform_tests.fixtures.servers import REPO_ROOT, stop_process_group, venv_bin
from crypto_platform_tests.integration.market_code_location import build_market_location
from crypto_platform_tests.integration.market_days import ms, stored_bars
from crypto_platform_tests.integration.market_runs import market_settings

pytestmark = pytest.mark.integration

DAY = "2025-05-31"
SYMBOLS = {"BTCUSDT": "BTC/USDT", "ETHUSDT": "ETH/USDT"}
HOLE = (datetime(2025, 5, 31, 10, tzinfo=UTC), datetime(2025, 5, 31, 13, tzinfo=UTC))
DAEMON_TIMEOUT_S = 240


def _workspace(root: Path) -> Path:
    path = root / "workspace.yaml"
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: crypto_platform_tests.integration.market_code_location\n"
        "      attribute: defs\n"
        f"      working_directory: {REPO_ROOT}\n"
        "      location_name: market\n"
    )
    return path


def _missing_bars(instance: DagsterInstance, partition: str) -> int:
    record = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("ohlcv"), asset_partitions=[partition]), limit=1
    ).records[0]
    return int(record.asset_materialization.metadata["missing_bars"].value)


def test_daemon_launches_the_gap_repair_run_and_it_fills_the_hole(tmp_path: Path, replay_server) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(home),
        "CRYPTO_DATA_LOCATION": str(data),
        "CRYPTO_MARKET_SOURCE": "exchange",
        "CRYPTO_EXCHANGE_API_URL": replay_server.url,
        "CRYPTO_SYMBOLS": ",".join(SYMBOLS.values()),
        "CRYPTO_PARTITIONS_START": "2025-05-01",
    }
    settings = market_settings(data, **env)
    partitions = [f"{DAY}|{symbol_id}" for symbol_id in SYMBOLS]

    # The holes: the day is fetched while the exchange lacks 10:00-12:00 (what a daemon's refresh stored).
    for symbol_id in SYMBOLS:
        requests.post(
            f"{replay_server.url}/__replay__/outages",
            json={"symbol": symbol_id, "start": ms(HOLE[0]), "end": ms(HOLE[1])},
            timeout=10,
        ).raise_for_status()
    instance = DagsterInstance.from_config(str(home))
    try:
        seeded = (
            build_market_location(settings)
            .resolve_job_def("market_job")
            .execute_in_process(
                instance=instance, tags={RANGE_START_TAG: partitions[0], RANGE_END_TAG: partitions[-1]}
            )
        )
        assert seeded.success
        assert [_missing_bars(instance, p) for p in partitions] == [3, 3]
        replay_server.clear_outages()  # the exchange has back-filled them

        log_path = tmp_path / "daemon.log"
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(
                [venv_bin("dagster-daemon"), "run", "-w", str(_workspace(tmp_path))],
                cwd=tmp_path,
                env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stopped by process group: it forks code servers and run workers
            )
        try:
            deadline = time.monotonic() + DAEMON_TIMEOUT_S
            repair_runs = []
            while time.monotonic() < deadline:
                assert daemon.poll() is None, log_path.read_text(errors="replace")[-4000:]
                repair_runs = instance.get_runs(filters=RunsFilter(tags={TRIGGER_TAG: "gap_repair"}))
                if repair_runs and repair_runs[0].is_finished:
                    break
                time.sleep(2)
            assert repair_runs, f"no repair run in {DAEMON_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}"
        finally:
            stop_process_group(daemon)

        (run,) = repair_runs
        assert run.status == DagsterRunStatus.SUCCESS, log_path.read_text(errors="replace")[-4000:]
        assert run.tags.get("dagster/sensor_name") == "market_gap_repair"
        # one run repaired both symbols' day
        assert (run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)) == (partitions[0], partitions[-1])
        assert [_missing_bars(instance, p) for p in partitions] == [0, 0]
        for symbol in SYMBOLS.values():
            stored = stored_bars(LocalStore(data), symbol, day_start_ms(DAY), day_start_ms("2025-06-01"))
            assert len(stored) == 24 and stored.is_unique().all()
    finally:
        instance.dispose()
