"""The docker-compose stack, run natively: the same configuration files, real servers, no Docker.

PostgreSQL (one cluster, the three databases of docker/postgres/init-databases.sql) + moto's S3 server
(the MinIO stand-in: a `data` and an `mlflow` bucket) + `mlflow server` (Postgres backend store, S3
artifacts proxied with --serve-artifacts, --allowed-hosts) + a Dagster instance configured by
docker/dagster/dagster.yaml (dagster-postgres storage, S3 compute logs) with the S3 IO manager
(CRYPTO_DATA_LOCATION=s3://…), then:

1. `crypto-platform materialize` (simulated market, fast LSTM) builds the whole graph: partitions land
   in S3, runs in Postgres, a champion in the registry, its artifacts in the MLflow bucket;
2. `crypto-platform serve` loads that champion and answers ML forecasts, its history in Postgres;
3. `dagster code-server start` with the compose service's arguments serves the code location that
   docker/dagster/workspace.yaml points the webserver at;
4. `crypto-platform score` on a real Kafka broker (the session `kafka_broker`) scores produced ticks with
   the same champion: predictions with a non-null `predicted_volatility` on the predictions topic, and its
   /metrics carries every scorer metric and label the dashboards and alert rules use.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from crypto_platform.devtools.ports import free_port
from crypto_platform_tests.fixtures.servers import stop_process_group, venv_bin, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ("BTC/USDT", "ETH/USDT")
# Enough history for the fast LSTM and the baselines: features need 30 days of look-back, and the
# chronological split needs 50+ windows per block.
HISTORY_DAYS = 52
MODEL = "crypto-volatility"


@dataclass
class Stack:
    root: Path
    env: dict[str, str]  # what every platform process gets, as the compose file's x-platform-env
    data_location: str
    s3_endpoint: str
    mlflow_url: str
    mlflow_bucket: str
    serving_db_url: str
    dagster_home: Path


def _clean_env() -> dict[str, str]:
    prefixes = ("CRYPTO_", "DAGSTER_", "MLFLOW_", "KAFKA_", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _start(args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture(scope="module")
def stack(postgres_server, moto_s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import boto3

    root = tmp_path_factory.mktemp("full-stack")
    tag = uuid.uuid4().hex[:8]
    databases = {
        name: postgres_server.create_database(f"{name}_{tag}") for name in ("dagster", "mlflow", "serving")
    }
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3_server.endpoint_url,
        region_name=aws["AWS_DEFAULT_REGION"],
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
    )
    data_bucket, mlflow_bucket = f"data-{tag}", f"mlflow-{tag}"
    for bucket in (data_bucket, mlflow_bucket):
        s3.create_bucket(Bucket=bucket)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        # the compose file's `mlflow` service, with this cluster and this S3 endpoint
        mlflow_port = free_port()
        mlflow_env = {
            **_clean_env(),
            **aws,
            "MLFLOW_S3_ENDPOINT_URL": moto_s3_server.endpoint_url,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        mlflow_log = root / "mlflow.log"
        mlflow = _start(
            [
                venv_bin("mlflow"), "server",
                "--backend-store-uri", databases["mlflow"].url,
                "--artifacts-destination", f"s3://{mlflow_bucket}",
                "--serve-artifacts",
                "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                "--allowed-hosts", f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}",
            ],
            mlflow_env, mlflow_log, root,
        )  # fmt: skip
        procs.append(mlflow)
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        wait_until(
            lambda: requests.get(f"{mlflow_url}/health", timeout=2).ok,
            180,
            "mlflow server",
            mlflow,
            mlflow_log,
        )

        home = root / "dagster-home"
        home.mkdir()
        shutil.copy(REPO / "docker" / "dagster" / "dagster.yaml", home / "dagster.yaml")
        pg = databases["dagster"]
        data_location = f"s3://{data_bucket}/platform"
        env = {
            **_clean_env(),
            **aws,
            "CRYPTO_SYMBOLS": ",".join(SYMBOLS),
            "CRYPTO_MARKET_SOURCE": "simulated",
            "CRYPTO_DATA_LOCATION": data_location,
            "CRYPTO_S3_ENDPOINT_URL": moto_s3_server.endpoint_url,
            "MLFLOW_TRACKING_URI": mlflow_url,
            "CRYPTO_ML_FAST": "1",
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": pg.host,
            "DAGSTER_PG_PORT": str(pg.port),
            "DAGSTER_PG_USER": pg.user,
            "DAGSTER_PG_PASSWORD": pg.password,
            "DAGSTER_PG_DB": pg.database,
            "DAGSTER_COMPUTE_LOG_BUCKET": data_bucket,
            "PYTHONUNBUFFERED": "1",
        }
        yield Stack(
            root, env, data_location, moto_s3_server.endpoint_url, mlflow_url, mlflow_bucket,
            databases["serving"].url, home,
        )  # fmt: skip
    finally:
        for proc in procs:
            stop_process_group(proc)


@pytest.fixture
def in_stack_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process reads S3, the Dagster instance and MLflow with the platform processes' env."""
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def materialized(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_bin("crypto-platform"), "materialize", "--days", str(HISTORY_DAYS), "--model-config", "fast"],
        cwd=stack.root,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=420,
    )


def test_materialize_writes_s3_postgres_and_the_registry(stack: Stack, materialized, in_stack_env) -> None:
    from dagster import DagsterInstance
    from mlflow import MlflowClient

    from crypto_platform.lib.model import registry
    from crypto_platform.lib.storage import list_partitions, open_store

    assert materialized.returncode == 0, materialized.stdout[-4000:] + materialized.stderr[-4000:]
    assert "source: simulated" in materialized.stdout

    store = open_store(stack.data_location, stack.s3_endpoint)
    for asset in ("ohlcv", "features"):
        stored = list_partitions(store, asset)
        assert {s for s, _ in stored} == {"BTCUSDT", "ETHUSDT"}
        assert len(stored) == 2 * (HISTORY_DAYS + 1), asset
    assert store.list("quality-reports/")

    # the runs are in Postgres: an instance built from the same dagster.yaml sees them
    with DagsterInstance.from_config(str(stack.dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        # one market run for both symbols (a batch of CRYPTO_REFRESH_BATCH_SYMBOLS) + the model run
        assert len(runs) == 2 and all(r.is_success for r in runs)

    client = MlflowClient(tracking_uri=stack.mlflow_url)
    champion = registry.alias_version(client, registry.CHAMPION, MODEL)
    assert champion is not None
    # artifacts went through the server's proxy into the S3 bucket, not to a local directory
    import boto3

    objects = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1").list_objects_v2(
        Bucket=stack.mlflow_bucket
    )
    assert objects.get("KeyCount", 0) > 0
    assert client.get_run(champion.run_id).info.artifact_uri.startswith("mlflow-artifacts:")


@pytest.fixture(scope="module")
def api(stack: Stack, materialized) -> Iterator[str]:
    assert materialized.returncode == 0, "materialize failed (see the test above)"
    port = free_port()
    env = {
        **stack.env,
        "CRYPTO_API_HISTORY_URL": stack.serving_db_url,
        "CRYPTO_API_KEY_PEPPER": "full-stack-test",
        "CRYPTO_API_MODEL_STARTUP_S": "60",
    }
    log_path = stack.root / "serve.log"
    proc = _start(
        [venv_bin("crypto-platform"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env,
        log_path,
        stack.root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/ready", timeout=2).ok, 120, "crypto-platform serve", proc, log_path
        )
        yield url
    finally:
        stop_process_group(proc)


def test_api_serves_the_champion_forecast(stack: Stack, api: str) -> None:
    from mlflow import MlflowClient

    from crypto_platform.lib.model import registry

    champion = registry.alias_version(MlflowClient(tracking_uri=stack.mlflow_url), registry.CHAMPION, MODEL)
    info = requests.get(f"{api}/v1/ml/model/info", timeout=10).json()
    assert info["model_version"] == str(champion.version)
    for symbol in SYMBOLS:
        response = requests.post(f"{api}/v1/crypto/ml-signal", json={"symbol": symbol}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == str(champion.version)
        forecast = body["ml_prediction"]["predicted_volatility"]
        assert forecast is not None and 0 < forecast < 1, body
    # the prediction history is kept in the `serving` Postgres database
    import sqlalchemy

    engine = sqlalchemy.create_engine(stack.serving_db_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                tables = sqlalchemy.inspect(conn).get_table_names()
                counts = {
                    t: conn.execute(sqlalchemy.text(f'SELECT count(*) FROM "{t}"')).scalar() for t in tables
                }
            if sum(counts.values()) >= len(SYMBOLS) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        engine.dispose()
    assert tables and sum(counts.values()) >= len(SYMBOLS), counts
    metrics = requests.get(f"{api}/metrics", timeout=10).text
    assert "crypto_api_model_loaded 1.0" in metrics


def test_code_server_serves_the_workspace_location(stack: Stack, materialized) -> None:
    """The compose `dagster-code` command, and the workspace.yaml the webserver and daemon load."""
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    argv = list(compose["services"]["dagster-code"]["command"])
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    env = {**stack.env, "DAGSTER_CODE_HOST": "127.0.0.1", "DAGSTER_CODE_PORT": str(port)}
    log_path = stack.root / "code-server.log"
    proc = _start([venv_bin(argv[0]), *argv[1:]], env, log_path, stack.root)
    try:
        health = [venv_bin("dagster"), "api", "grpc-health-check", "--host", "127.0.0.1", "--port", str(port)]
        wait_until(
            lambda: subprocess.run(health, env=env, capture_output=True, timeout=30).returncode == 0,
            180, "dagster code-server", proc, log_path,
        )  # fmt: skip
        from dagster._grpc.client import DagsterGrpcClient

        workspace = yaml.safe_load((REPO / "docker" / "dagster" / "workspace.yaml").read_text())
        server = workspace["load_from"][0]["grpc_server"]
        assert server == {
            "host": {"env": "DAGSTER_CODE_HOST"},
            "port": {"env": "DAGSTER_CODE_PORT"},
            "location_name": argv[argv.index("--location-name") + 1],
        }
        listed = DagsterGrpcClient(port=port, host="127.0.0.1").list_repositories()
        assert "crypto_platform.definitions" in str(listed), listed
    finally:
        stop_process_group(proc)


def last_closes(stack: Stack) -> dict[str, float]:
    """The newest stored close per symbol: ticks near it move the price by a realistic amount."""
    from crypto_platform.lib.storage import list_partitions, open_store, partition_key, read_parquet

    store = open_store(stack.data_location, stack.s3_endpoint)
    closes = {}
    for symbol in SYMBOLS:
        for symbol_id, day in reversed(list_partitions(store, "ohlcv", symbol)):
            frame = read_parquet(store, partition_key("ohlcv", symbol_id, day))
            if frame.height:
                closes[symbol] = float(frame.sort("ts").get_column("close")[-1])
                break
    return closes


def test_scorer_scores_ticks_with_the_champion(
    stack: Stack, materialized, kafka_running, kafka_topics, in_stack_env
) -> None:
    """`crypto-platform score` on the stack's data and registry, fed through Kafka."""
    from crypto_platform.lib.stream.ticks import Tick, encode_tick, tick_key
    from crypto_platform_tests.integration.scorer_support import (
        ScorerProcess,
        now_ms,
        produce,
        read_topic,
        scorer_env,
        values,
    )
    from crypto_platform_tests.integration.test_observability import alert_rules as rules
    from crypto_platform_tests.integration.test_observability import (
        check,
        dashboard_queries,
        parse_exposition,
    )

    assert materialized.returncode == 0, "materialize failed (see the first test)"
    bootstrap = kafka_running.bootstrap_servers
    metrics_port = free_port()
    env = scorer_env(bootstrap, kafka_topics, stack.env)
    scorer = ScorerProcess(
        env, ["--metrics-port", str(metrics_port), "--group-id", f"full-stack-{uuid.uuid4().hex[:6]}"],
        stack.root / "scorer.log",
    )  # fmt: skip
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with scorer:
        wait_until(
            lambda: "crypto_scorer_model_loaded 1.0" in requests.get(metrics_url, timeout=2).text,
            120, "crypto-platform score (model loaded)", scorer.proc, scorer.log_path,
        )  # fmt: skip
        last = last_closes(stack)
        start = now_ms()
        ticks = [
            Tick(symbol, last[symbol] * (1 + 0.0005 * i), 0.5, start + 100 * i, "test")
            for i in range(3)
            for symbol in SYMBOLS
        ]
        # a 6% jump within the price-move window: the scorer raises an alert
        ticks.append(Tick("BTC/USDT", last["BTC/USDT"] * 1.06, 0.5, start + 1000, "test"))
        messages = [(tick_key(t.symbol), encode_tick(t)) for t in ticks] + [(b"BTC/USDT", b"{not json")]
        asyncio.run(produce(bootstrap, kafka_topics.prices, messages))
        predictions = values(
            read_topic(bootstrap, kafka_topics.predictions, until_count=len(ticks), timeout_s=90)
        )
        assert len(predictions) == len(ticks), scorer.log_tail()
        forecasts = [p.get("predicted_volatility") for p in predictions]
        assert all(f is not None and 0 < f < 1 for f in forecasts), predictions[:2]
        assert read_topic(bootstrap, kafka_topics.dlq, until_count=1, timeout_s=30)
        assert read_topic(bootstrap, kafka_topics.alerts, until_count=1, timeout_s=30)

        # the real scorer's metrics: every scorer metric and label the dashboards and rules use
        deadline = time.monotonic() + 30
        while True:
            emitted = parse_exposition(requests.get(metrics_url, timeout=5).text)
            if "crypto_scorer_alerts_total" in emitted or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        problems = []
        for rule in rules():
            if "crypto_scorer_" in rule["expr"]:
                problems += check(f"alert {rule['alert']}", rule["expr"], set(), emitted)
        for where, expr, legend in dashboard_queries():
            if "crypto_scorer_" in expr and "crypto_api_" not in expr:
                problems += check(where, expr, set(re.findall(r"\{\{(\w+)\}\}", legend)), emitted)
        assert not problems, "\n".join(problems)
