"""`crypto-platform materialize` as a user runs it: a subprocess on a fresh DAGSTER_HOME and data dir."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance

from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.storage import LocalStore, day_start_ms, list_partitions
from crypto_platform_tests.fixtures.servers import venv_bin
from crypto_platform_tests.integration.market_runs import RANGE_END_TAG, RANGE_START_TAG

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CRYPTO_", "DAGSTER_"))},
        "DAGSTER_HOME": str(tmp_path / "home"),  # does not exist yet: the command creates it
        "CRYPTO_DATA_LOCATION": str(tmp_path / "data"),
        "CRYPTO_SYMBOLS": "BTC/USDT,ETH/USDT",
        **env,
    }
    return subprocess.run(
        [venv_bin("crypto-platform"), "materialize", *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _cli_on_replay(tmp_path: Path, server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """One day from the started replay `server` (`--source exchange`), which is stopped afterwards."""
    try:
        return _cli(
            tmp_path, "--source", "exchange", "--days", "1", *args, CRYPTO_EXCHANGE_API_URL=server.url, **env
        )
    finally:
        server.stop()


def test_materialize_simulated_two_days(tmp_path: Path) -> None:
    # The market group only: two days are far too little history to train a model on.
    done = _cli(tmp_path, "--source", "simulated", "--days", "2", "--select", "group:market")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # both symbols in one run (the batch holds up to CRYPTO_REFRESH_BATCH_SYMBOLS = 64)
    assert "OK: 1 run(s) succeeded" in out
    for asset in ("ohlcv", "features", "quality_report"):
        assert sum(line.strip().startswith(asset) for line in out.splitlines()) == 1, out
    (ohlcv_line,) = [line for line in out.splitlines() if line.strip().startswith("ohlcv ")]
    assert ohlcv_line.endswith("rows in 6 partition(s)"), out  # 3 days × 2 symbols
    assert out.count("check ohlcv:ohlc_consistency     passed") == 1
    assert "source: simulated" in out

    today = datetime.now(UTC).date()
    store = LocalStore(tmp_path / "data")
    stored = list_partitions(store, "ohlcv")
    days = sorted({d for _, d in stored})
    assert len(days) == 3 and days[-1] in (today.isoformat(), (today - timedelta(days=1)).isoformat())
    assert {s for s, _ in stored} == {"BTCUSDT", "ETHUSDT"}
    assert list_partitions(store, "features") == stored

    # one run over the rectangle of days × both symbols, recorded on the instance the UI reads
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].is_success
        assert (runs[0].tags[RANGE_START_TAG], runs[0].tags[RANGE_END_TAG]) == (
            f"{days[0]}|BTCUSDT",
            f"{days[-1]}|ETHUSDT",
        )


def test_materialize_runs_the_healthy_symbol_again_when_one_fails(tmp_path: Path) -> None:
    from crypto_platform.devtools.replay.faults import FaultRule
    from crypto_platform.devtools.replay.server import ReplayServer

    broken = FaultRule("500", count=10_000, endpoint="klines", symbol="ETHUSDT")
    server = ReplayServer(simulate=("BTCUSDT", "ETHUSDT"), faults=[broken]).start()
    done = _cli_on_replay(tmp_path, server, "--select", "group:market", CRYPTO_EXCHANGE_RETRY_BUDGET_S="1")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    # the batch fails naming ETH, then BTC runs alone and succeeds, ETH runs alone and fails
    assert out.count("FAILED: split into smaller runs") == 1, out
    assert "1 of 2 symbol(s) could not be fetched: ETHUSDT" in out
    assert "FAILED: 1 of 3 run(s) failed (ETHUSDT " in done.stderr
    store = LocalStore(tmp_path / "data")
    assert {s for s, _ in list_partitions(store, "ohlcv")} == {"BTCUSDT"}
    assert {s for s, _ in list_partitions(store, "features")} == {"BTCUSDT"}


def _bad_replay_dir(root: Path, first_day: date) -> Path:
    """A replay data dir whose BTCUSDT file has one bar with high below low."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    start = day_start_ms(first_day)
    bars = simulate_ohlcv("BTC/USDT", "1h", start, max(start + 6 * HOUR_MS, now_ms // HOUR_MS * HOUR_MS))
    bad = bars.with_columns(
        pl.when(pl.col("ts") == start + 3 * HOUR_MS)
        .then(pl.col("low") - 5.0)
        .otherwise(pl.col("high"))
        .alias("high")
    )
    root.mkdir()
    bad.write_parquet(root / "binance_BTCUSDT_1h.parquet")
    return root


def test_materialize_exits_nonzero_when_a_blocking_check_fails(tmp_path: Path) -> None:
    from crypto_platform.devtools.replay.server import ReplayServer

    first_day = datetime.now(UTC).date() - timedelta(days=1)
    server = ReplayServer(data_dir=_bad_replay_dir(tmp_path / "replay", first_day)).start()
    done = _cli_on_replay(tmp_path, server, "--symbols", "BTC/USDT")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "check ohlcv:ohlc_consistency     FAILED (ERROR)" in done.stdout
    assert "FAILED: 1 of 1 run(s) failed (BTCUSDT " in done.stderr
    store = LocalStore(tmp_path / "data")
    assert len(list_partitions(store, "ohlcv")) == 2  # stored, and its check failed …
    assert list_partitions(store, "features") == []  # … so nothing downstream was built


def test_materialize_exits_nonzero_when_the_exchange_is_unreachable(
    tmp_path: Path, closed_port_url: str
) -> None:
    done = _cli(
        tmp_path,
        "--source",
        "exchange",
        "--days",
        "0",
        "--symbols",
        "ETHUSDT",
        CRYPTO_EXCHANGE_API_URL=closed_port_url,
        CRYPTO_EXCHANGE_RETRY_BUDGET_S="1",
        CRYPTO_EXCHANGE_TIMEOUT_MS="1000",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "! ohlcv:" in done.stdout
    assert list_partitions(LocalStore(tmp_path / "data"), "ohlcv") == []


def test_materialize_rejects_unknown_symbol(tmp_path: Path) -> None:
    done = _cli(tmp_path, "--symbols", "DOGE/USDT")
    assert done.returncode == 2
    assert "not one of the configured symbols" in done.stderr
