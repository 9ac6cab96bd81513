"""Shared test configuration: markers, the real-data location, and fixtures that start real servers.

Server fixtures live in `crypto_platform_tests/fixtures/` (one module per kind of server) and are
session-scoped: each server starts once per test run on a free loopback port.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "crypto_platform_tests.fixtures.exchange",
    "crypto_platform_tests.fixtures.servers",
    "crypto_platform_tests.fixtures.mlflow_server",
    "crypto_platform_tests.fixtures.api",
    "crypto_platform_tests.fixtures.kafka",
    "crypto_platform_tests.fixtures.serving_processes",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_OHLCV_DIR = Path(os.environ.get("CRYPTO_SHARED_OHLCV", REPO_ROOT.parent / "shared" / "data" / "ohlcv"))


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in (
        (
            "integration",
            "talks to a real server started by a fixture (exchange replay, Postgres, S3, MLflow)",
        ),
        ("e2e", "drives a whole process end to end (CLI, Dagster webserver)"),
        ("real_data", "needs ../shared/data/ohlcv (skipped with a reason when absent)"),
        ("slow", "takes more than a few seconds"),
        (
            "security",
            "an attack (hostile input, leaked credentials, one-request denial of service) run against a "
            "real server process, asserting the refusal (`pytest -m security`)",
        ),
    ):
        config.addinivalue_line("markers", f"{marker}: {text}")


@pytest.fixture(scope="session")
def shared_ohlcv_dir() -> Path:
    """Directory of real Binance hourly candles; tests that need it skip when it is absent."""
    if not (SHARED_OHLCV_DIR / "binance_BTCUSDT_1h.csv.gz").exists():
        pytest.skip(f"real OHLCV data not found at {SHARED_OHLCV_DIR} (../shared/data/ohlcv beside the repo)")
    return SHARED_OHLCV_DIR


@pytest.fixture(autouse=True)
def _isolated_dagster_state_storage():
    """Each test starts with no current Dagster defs-state storage.

    Dagster keeps the storage of the last instance entered as a context manager in a ContextVar; a
    re-entered instance never resets it, so after a test the variable can point at a disposed
    instance and the next Definitions load fails ("undefined DagsterInstance weakref").

    This fixture cannot undo a leak that happens later: a schedule or sensor evaluation context
    opens its own instance from the ref and only closes it on `__exit__`. Left unclosed, the garbage
    collector finalises it whenever it runs, possibly during another test, and that restores the
    storage of the instance that was current when it opened. Tests therefore always use
    `with build_schedule_context(...) as context:` (and the sensor equivalents).
    """
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch):
    """Settings are cached per process; every test starts from a clean cache."""
    from crypto_platform.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
