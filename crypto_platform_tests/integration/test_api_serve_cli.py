"""`crypto-platform serve` as a real process (env configuration, probes, shutdown that drains the history);
the store on S3 (moto)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests

from crypto_platform.devtools.ports import free_port
from crypto_platform_tests.fixtures.servers import stop_process_group, venv_bin, wait_until

pytestmark = pytest.mark.integration


def _start_serve(api_data_dir, tmp_path, closed_port_url, **env: str) -> tuple[subprocess.Popen, str, Path]:
    """`crypto-platform serve` on a free port over the test store, MLflow unreachable (the API must come
    up anyway and say why it is not ready), `env` on top; (process, base URL, log file) once healthy."""
    port = free_port()
    full_env = {
        **os.environ,
        "CRYPTO_DATA_LOCATION": str(api_data_dir),
        "CRYPTO_SYMBOLS": "BTC/USDT,ETH/USDT",
        "CRYPTO_MARKET_SOURCE": "simulated",
        "MLFLOW_TRACKING_URI": closed_port_url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        **env,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [venv_bin("crypto-platform"), "serve", "--port", str(port)],
            env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/health", timeout=2).ok, 90, "crypto-platform serve", proc, log
        )
    except BaseException:
        stop_process_group(proc)
        raise
    return proc, url, log


def test_serve_command_answers_probes_and_signals(api_data_dir, tmp_path, closed_port_url):
    proc, url, _ = _start_serve(
        api_data_dir,
        tmp_path,
        closed_port_url,
        CRYPTO_API_HISTORY_URL=f"sqlite:///{tmp_path / 'history.db'}",
        CRYPTO_API_MODEL_STARTUP_S="5",
    )
    try:
        assert requests.get(f"{url}/ready", timeout=5).status_code == 503
        # The stored bars end at the fixtures' frozen clock, hours or days ago by now: the API goes to
        # the live (here: simulated) source for the newest bars.
        response = requests.post(f"{url}/v1/crypto/signal", json={"symbol": "ETH/USDT"}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["source"] == "simulated"
        assert requests.get(url, timeout=5).headers["content-type"].startswith("text/html")
        # A server process freezes its start-up heap (TensorFlow, polars, MLflow: hundreds of thousands
        # of objects a full collection would otherwise walk while every request waits).
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert _sample(metrics, "crypto_api_gc_frozen_objects") > 100_000
    finally:
        stop_process_group(proc)
    assert proc.returncode is not None


def _sample(metrics: str, name: str) -> float:
    """The value of the sample `name` (with its labels, if any) in a /metrics text; 0 when absent."""
    lines = [line for line in metrics.splitlines() if line.startswith(f"{name} ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_an_app_built_in_a_test_process_times_collections_and_freezes_nothing(make_api_client):
    import gc

    full_collections = 'crypto_api_gc_pause_seconds_count{generation="2"}'
    frozen_before, callbacks_before = gc.get_freeze_count(), len(gc.callbacks)
    client = make_api_client()  # lifespan entered: every collection is timed from here on
    make_api_client()
    # One timer per process, not per app: two apps would otherwise count each collection twice.
    assert len(gc.callbacks) <= callbacks_before + 1
    before = _sample(client.get("/metrics").text, full_collections)
    gc.collect()
    metrics = client.get("/metrics").text
    assert _sample(metrics, full_collections) >= before + 1
    # Frozen objects are never reclaimed if they turn into cyclic garbage: only a server process
    # (create_app_from_env, the gRPC command) freezes, never an app a test process builds and drops.
    assert gc.get_freeze_count() == frozen_before == _sample(metrics, "crypto_api_gc_frozen_objects")


def test_api_reads_the_stored_asset_from_s3(make_api_client, api_settings, s3_location, api_last_closed_ms):
    from crypto_platform_tests.fixtures.api import API_SYMBOLS, write_pipeline_store

    write_pipeline_store(
        s3_location.url,
        API_SYMBOLS,
        api_last_closed_ms + 3_600_000,
        33,
        endpoint_url=s3_location.endpoint_url,
    )
    settings = api_settings(
        platform={"data_location": s3_location.url, "s3_endpoint_url": s3_location.endpoint_url}
    )
    client = make_api_client(settings)
    body = client.get("/v1/crypto/ohlcv", params={"symbol": "ETH/USDT", "limit": 24}).json()
    assert (body["origin"], body["rows"], body["data"][-1]["ts"]) == ("store", 24, api_last_closed_ms)
    signal = client.post("/v1/crypto/signal", json={"symbol": "ETH/USDT"})
    assert signal.status_code == 200 and signal.json()["source"] == "simulated"


def test_sigterm_writes_every_served_signal_to_the_history(api_data_dir, tmp_path, closed_port_url):
    """N signals served while the history DB is locked (they wait in the write-behind queue), then
    SIGTERM: the server's shutdown drains the queue, and the DB holds all N once the process is gone."""
    db, n = tmp_path / "history.db", 40
    proc, url, log = _start_serve(
        api_data_dir,
        tmp_path,
        closed_port_url,
        CRYPTO_API_HISTORY_URL=f"sqlite:///{db}",
        CRYPTO_API_RATE_LIMIT="0",
        CRYPTO_API_MODEL_STARTUP_S="1",
    )
    try:
        session = requests.Session()
        # Warm: features computed, the first row written (a tail read waits for queued writes).
        assert session.post(f"{url}/v1/crypto/signal", json={"symbol": "BTC/USDT"}, timeout=60).ok
        assert len(session.get(f"{url}/v1/crypto/signals/tail", params={"n": 5}, timeout=30).json()) == 1
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer now blocks in its insert (busy_timeout 5 s)
        try:
            for _ in range(n):
                response = session.post(f"{url}/v1/crypto/signal", json={"symbol": "BTC/USDT"}, timeout=10)
                assert response.status_code == 200, response.text
            metrics = session.get(f"{url}/metrics", timeout=10).text
            assert f"crypto_api_history_queue_depth {float(n)}" in metrics
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.5)
            assert proc.poll() is None  # still draining: its rows are not written yet
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        # uvicorn re-raises the signal once its shutdown (lifespan included) is done
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        stop_process_group(proc)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM signals").fetchone()[0] == n + 1
    assert "dropped" not in log.read_text()
