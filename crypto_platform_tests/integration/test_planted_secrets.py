"""Planted credentials never leave the serving processes: not in a response, not in a log line.

`crypto-platform serve` and `crypto-platform grpc` start with a unique user and password in every URL
they are given (the MLflow tracking URI, the exchange API URL, the history database URL) and unique API
keys and pepper. MLflow and the exchange are unreachable, so every path that reports them (readiness,
model info, the 503 of ml-signal, the 502 of market reads, retries in the log) runs. Every REST
endpoint, every GraphQL field and every gRPC method is called without a key, with a wrong one, and with
the reader's and the admin's; then every response (status line, headers, body) and both processes'
whole logs (debug level, access log on) are searched for each planted value: 0 hits.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import grpc
import pytest
import requests

from crypto_platform_tests.fixtures.serving_processes import base_serving_env
from serving.grpc import stubs

pb2, pb2_grpc = stubs.load()

pytestmark = [pytest.mark.integration, pytest.mark.security, pytest.mark.slow]


def _unique(label: str) -> str:
    return f"{label}{uuid.uuid4().hex[:20]}"


SECRETS = {
    "mlflow user": _unique("mlu"),
    "mlflow password": _unique("mlp"),
    "exchange user": _unique("exu"),
    "exchange password": _unique("exp"),
    "history password": _unique("hsp"),
    "reader key": _unique("reader-key-") + uuid.uuid4().hex,
    "admin key": _unique("admin-key-") + uuid.uuid4().hex,
    "pepper": uuid.uuid4().hex + uuid.uuid4().hex,
}
KEYS = {
    "none": {},
    "wrong": {"X-API-Key": "wrong-" + uuid.uuid4().hex},
    "reader": {"X-API-Key": SECRETS["reader key"]},
    "admin": {"Authorization": f"Bearer {SECRETS['admin key']}"},
}


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def planted(serving_process, postgres_server, api_data_dir):
    s = SECRETS
    closed = f"127.0.0.1:{_closed_port()}"  # nothing listens: MLflow and the exchange are unreachable
    # trust auth: PostgreSQL accepts any password, so the planted one travels in a working URL
    history = (
        f"postgresql://{postgres_server.user}:{s['history password']}@{postgres_server.host}:"
        f"{postgres_server.port}/{postgres_server.database}"
    )
    env = {
        **base_serving_env(api_data_dir, history),
        "MLFLOW_TRACKING_URI": f"http://{s['mlflow user']}:{s['mlflow password']}@{closed}/",
        "CRYPTO_MARKET_SOURCE": "exchange",
        "CRYPTO_EXCHANGE_API_URL": f"http://{s['exchange user']}:{s['exchange password']}@{closed}",
        "CRYPTO_EXCHANGE_RETRY_BUDGET_S": "1",
        "CRYPTO_EXCHANGE_TIMEOUT_MS": "1000",
        "CRYPTO_API_KEYS": f"ops:admin:{s['admin key']},dash:reader:{s['reader key']}",
        "CRYPTO_API_KEY_PEPPER": s["pepper"],
        "CRYPTO_API_MODEL_POLL_S": "2",
        "CRYPTO_API_RATE_LIMIT": "0",
    }
    api = serving_process("serve", env, "--log-level", "debug", "--access-log")
    grpc_server = serving_process("grpc", env, "--log-level", "debug")
    return api, grpc_server


REST_CALLS = [
    ("GET", "/health", None, None),
    ("GET", "/ready", None, None),
    ("GET", "/metrics", None, None),
    ("GET", "/v1/metrics/summary", None, None),
    ("GET", "/v1/crypto/ohlcv", {"symbol": "BTC/USDT", "limit": 5}, None),
    ("GET", "/v1/crypto/features", {"symbol": "BTC/USDT", "n": 2}, None),
    ("POST", "/v1/crypto/signal", None, {"symbol": "BTC/USDT"}),
    ("POST", "/v1/crypto/signal/batch", None, {"symbols": ["BTC/USDT", "ETH/USDT", "NOPE/USDT"]}),
    ("GET", "/v1/crypto/signals/tail", {"n": 5}, None),
    ("GET", "/v1/crypto/signals/compare", {"symbol": "BTC/USDT"}, None),
    ("POST", "/v1/crypto/ml-signal", None, {"symbol": "BTC/USDT"}),
    ("GET", "/v1/crypto/ml-predictions/tail", {"n": 5}, None),
    ("POST", "/v1/crypto/ml-explain", None, {"symbol": "BTC/USDT"}),
    ("GET", "/v1/ml/model/info", None, None),
    ("POST", "/v1/ml/model/reload", None, None),
    ("GET", "/v1/evidence/overview", None, None),
    ("GET", "/v1/evidence/symbol", {"symbol": "BTC/USDT"}, None),
    ("GET", "/v1/evidence/model", None, None),
    ("GET", "/v1/evidence/reports", None, None),
    ("GET", "/v1/evidence/reports/daily/{day}", None, None),  # the template, called with PATH_PARAMS
    ("GET", "/schema/openapi.json", None, None),
    ("GET", "/", None, None),
]
PATH_PARAMS = {"day": "2025-06-01"}
GRAPHQL_DOCUMENTS = [
    "{ health { status timestamp uptimeS modelLoaded mlAvailable modelVersion reason } }",
    "{ modelInfo { modelLoaded modelName alias modelVersion lastError } }",
    '{ ohlcvData(input: {symbol: "BTC/USDT", limit: 5}) { rows source } }',
    "{ signalsTail(n: 5) { count } }",
    '{ compareSignals(input: {symbol: "BTC/USDT"}) { mlAvailable mlError } }',
    'mutation { generateSignal(input: {symbol: "BTC/USDT"}) { riskScore } }',
    'mutation { generateMlSignal(input: {symbol: "BTC/USDT"}) { modelVersion } }',
    "mutation { reloadModel { success message } }",
]


def _transcript(response: requests.Response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{response.status_code} {response.reason}\n{headers}\n{response.text}"


def _grpc_calls(port: int) -> list[str]:
    requests_by_method = {
        "GetOHLCV": pb2.OHLCVRequest(symbol="BTC/USDT", limit=5),
        "GenerateSignal": pb2.SignalRequest(symbol="BTC/USDT"),
        "GenerateMLPrediction": pb2.MLPredictionRequest(symbol="BTC/USDT"),
        "CompareSignals": pb2.CompareRequest(symbol="BTC/USDT"),
        "HealthCheck": pb2.HealthRequest(),
        "ReloadModel": pb2.ReloadRequest(),
    }
    seen = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb2_grpc.CryptoServiceStub(channel)
        for headers in KEYS.values():
            metadata = tuple((k.lower(), v) for k, v in headers.items())
            for method, request in requests_by_method.items():
                try:
                    seen.append(str(getattr(stub, method)(request, metadata=metadata, timeout=30)))
                except grpc.RpcError as exc:
                    seen.append(f"{exc.code()} {exc.details()} {exc.trailing_metadata()}")
            stream = stub.StreamPrices(
                pb2.StreamPricesRequest(symbols=["BTC/USDT"], interval=0.1), metadata=metadata, timeout=30
            )
            try:
                seen.append(str(next(stream)))
            except grpc.RpcError as exc:
                seen.append(f"{exc.code()} {exc.details()}")
            stream.cancel()
    return seen


def test_no_planted_secret_leaves_in_a_response_or_a_log_line(planted):
    api, grpc_server = planted
    schema = requests.get(f"{api.url}/schema/openapi.json", timeout=30).json()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    called = {(m, p) for m, p, _, _ in REST_CALLS}
    assert documented <= called, f"endpoints this test does not call yet: {sorted(documented - called)}"

    transcripts: list[str] = []
    for headers in KEYS.values():
        for method, path, params, body in REST_CALLS:
            answer = requests.request(
                method,
                f"{api.url}{path.format(**PATH_PARAMS)}",
                params=params,
                json=body,
                headers=headers,
                timeout=60,
            )
            assert answer.status_code < 500 or answer.status_code in (502, 503), (path, answer.text)
            transcripts.append(_transcript(answer))
        for document in GRAPHQL_DOCUMENTS:
            answer = requests.post(
                f"{api.url}/graphql", json={"query": document}, headers=headers, timeout=60
            )
            transcripts.append(_transcript(answer))
    transcripts.extend(_grpc_calls(grpc_server.port))

    responses = "\n".join(transcripts)
    logs = {"serve": api.log_text(), "grpc": grpc_server.log_text()}
    # The paths that used to leak did run: the unreachable MLflow and exchange are reported (their
    # URLs with the userinfo masked), and both processes logged about them.
    assert "502 Bad Gateway" in responses and "market_unavailable" in responses
    assert "***@127.0.0.1" in responses
    assert all("***@127.0.0.1" in text for text in logs.values()), {k: v[-3000:] for k, v in logs.items()}

    hits = {
        (what, where): text.count(value)
        for what, value in SECRETS.items()
        for where, text in {"responses": responses, **logs}.items()
        if value in text
    }
    assert hits == {}, f"planted secrets found: {hits}"


def test_no_planted_secret_in_the_scorer_or_sink_log(kafka_running, kafka_topics, tmp_path):
    """The scorer, given an MLflow URI with a user and password (a server that is not there), and the
    prediction sink, given a history URL with them (a database that is not there), report each failure
    at debug level on a real broker: neither log holds a planted value."""
    from crypto_platform.devtools.ports import free_port
    from crypto_platform_tests.integration.scorer_support import ScorerProcess, scorer_env

    planted = {name: _unique(name) for name in ("mlu", "mlp", "dbu", "dbp")}
    dead_mlflow, dead_db = free_port(), free_port()
    env = scorer_env(
        kafka_running.bootstrap_servers,
        kafka_topics,
        {
            "CRYPTO_SYMBOLS": "BTC/USDT",
            "MLFLOW_TRACKING_URI": f"http://{planted['mlu']}:{planted['mlp']}@127.0.0.1:{dead_mlflow}",
            # the MLflow client retries a dead server for minutes by default
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
        },
    )
    scorer_args = ["--group-id", f"g-{kafka_topics.prices}", "--no-warm-start", "--model-poll-s", "1"]
    debug = ["--metrics-port", "0", "--log-level", "DEBUG"]
    scorer = ScorerProcess(env, [*scorer_args, *debug], tmp_path / "s.log")
    with scorer:
        deadline = time.monotonic() + 90
        # the failure to reach the tracking server is reported (with where it was looked for)
        while f"127.0.0.1:{dead_mlflow}" not in scorer.log_tail(200_000) and time.monotonic() < deadline:
            time.sleep(0.5)
        scorer.terminate()
    scorer_log = scorer.log_path.read_text(errors="replace")
    assert f"127.0.0.1:{dead_mlflow}" in scorer_log, scorer.log_tail()

    history_url = f"postgresql+psycopg2://{planted['dbu']}:{planted['dbp']}@127.0.0.1:{dead_db}/serving"
    sink_command = [sys.executable, "-m", "crypto_platform.cli", "prediction-sink"]
    sink = subprocess.run(
        [*sink_command, "--history-url", history_url, *debug],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    sink_log = sink.stdout + sink.stderr
    assert "127.0.0.1" in sink_log and str(dead_db) in sink_log, sink_log[-3000:]
    for name, value in planted.items():
        assert value not in scorer_log, f"scorer log holds the planted {name}"
        assert value not in sink_log, f"sink log holds the planted {name}"
