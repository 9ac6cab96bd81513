"""Each attack of the hardening review, run against real `crypto-platform serve` / `grpc` processes,
and the refusal it must meet (`pytest -m security`).

REST + GraphQL run with keys required and a small rate limit; gRPC with a small limit and two streams
per caller. Each test spends from its own identity (a key, or the loopback address) so the budgets of
one do not decide another.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid

import grpc
import pytest
import requests

from crypto_platform_tests.fixtures.servers import venv_bin
from crypto_platform_tests.fixtures.serving_processes import base_serving_env
from serving.grpc import stubs

pb2, pb2_grpc = stubs.load()

pytestmark = [pytest.mark.integration, pytest.mark.security, pytest.mark.slow]

READER_KEY = f"reader-{uuid.uuid4().hex}"
ADMIN_KEY = f"admin-{uuid.uuid4().hex}"
PEPPER = uuid.uuid4().hex + uuid.uuid4().hex
REST_LIMIT = 60
GRPC_LIMIT = 30


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _env(api_data_dir, tmp_path, **extra: str) -> dict[str, str]:
    return {
        **base_serving_env(api_data_dir, f"sqlite:///{tmp_path / f'history-{uuid.uuid4().hex}.db'}"),
        "MLFLOW_TRACKING_URI": _closed_port_url(),
        "CRYPTO_API_KEYS": f"ops:admin:{ADMIN_KEY},dash:reader:{READER_KEY}",
        "CRYPTO_API_KEY_PEPPER": PEPPER,
        "CRYPTO_API_REQUIRE_KEY": "true",
        **extra,
    }


@pytest.fixture(scope="module")
def api(serving_process, api_data_dir, tmp_path_factory):
    env = _env(api_data_dir, tmp_path_factory.mktemp("api"), CRYPTO_API_RATE_LIMIT=str(REST_LIMIT))
    return serving_process("serve", env, "--header-timeout", "2")


@pytest.fixture(scope="module")
def grpc_port(serving_process, api_data_dir, tmp_path_factory) -> int:
    env = _env(
        api_data_dir,
        tmp_path_factory.mktemp("grpc"),
        CRYPTO_API_RATE_LIMIT=str(GRPC_LIMIT),
        CRYPTO_API_MAX_STREAMS_PER_CALLER="2",
    )
    return serving_process("grpc", env).port


def gql(api, query: str, variables=None, key: str = READER_KEY, **kwargs) -> requests.Response:
    return requests.post(
        f"{api.url}/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"X-API-Key": key},
        timeout=30,
        **kwargs,
    )


# --- REST and GraphQL ------------------------------------------------------------------------------


def test_one_graphql_document_cannot_do_unbounded_work(api):
    aliases = " ".join(
        f'a{i}: ohlcvData(input: {{symbol: "BTC/USDT", limit: 1000}}) {{ rows }}' for i in range(1000)
    )
    huge = gql(api, "{ " + aliases + " }")
    assert huge.status_code == 200 and huge.json()["data"] is None
    assert "characters long" in huge.json()["errors"][0]["message"] and len(huge.content) < 2_000
    many_tokens = " ".join(f"a{i}: health {{ status }}" for i in range(300))  # ~7 KB, 1,500 tokens
    assert "tokens" in gql(api, "{ " + many_tokens + " }").json()["errors"][0]["message"]
    twenty = " ".join(f"a{i}: health {{ status }}" for i in range(20))
    assert "aliases" in gql(api, "{ " + twenty + " }").json()["errors"][0]["message"]
    costly = " ".join(
        f'a{i}: ohlcvData(input: {{symbol: "BTC/USDT", limit: 1000}}) {{ rows }}' for i in range(6)
    )
    refused = gql(api, "{ " + costly + " }").json()
    assert refused["data"] is None and refused["errors"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"
    # within the budget it runs, and each of its operations is charged to the caller's rate limit
    ten = (
        "{ "
        + " ".join(f'a{i}: ohlcvData(input: {{symbol: "BTC/USDT", limit: 5}}) {{ rows }}' for i in range(10))
        + " }"
    )
    for _ in range(5):  # 5 × 10 = 50 units
        assert gql(api, ten, key=ADMIN_KEY).json()["data"]["a9"]["rows"] == 5
    for _ in range(5):  # 55
        assert gql(api, "{ health { status } }", key=ADMIN_KEY).json()["data"]
    over = gql(api, ten, key=ADMIN_KEY).json()  # 1 unit at the door, 9 more do not fit in the 4 left
    assert over["data"] is None and over["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert gql(api, "{ health { status } }", key=ADMIN_KEY).json()["data"]  # the refusal spent 1, not 10
    # The process stayed responsive throughout.
    assert requests.get(f"{api.url}/health", timeout=5).ok


def test_graphql_websocket_transport_is_refused(api):
    import base64

    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        key = base64.b64encode(uuid.uuid4().bytes).decode()
        sock.sendall(
            (
                f"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: graphql-transport-ws\r\nX-API-Key: {READER_KEY}\r\n\r\n"
            ).encode()
        )
        answer = sock.recv(4096).decode(errors="replace")
    status_line = answer.split("\r\n", 1)[0]
    # The handshake is refused (no subprotocol is offered, so none is ever accepted).
    assert " 101 " not in status_line and "graphql-transport-ws" not in answer.lower(), answer


@pytest.mark.parametrize("raw", ["NaN", "1099511627776", '"12"', "1.5", "[1]"])
def test_bad_int_variables_are_bad_user_input(api, raw):
    body = f'{{"query": "query($n: Int!) {{ signalsTail(n: $n) {{ count }} }}", "variables": {{"n": {raw}}}}}'
    answer = requests.post(
        f"{api.url}/graphql", data=body, headers={"X-API-Key": READER_KEY, "content-type": "application/json"}
    )
    assert answer.status_code in (200, 400), answer.text
    codes = {e["extensions"]["code"] for e in answer.json()["errors"]} if answer.status_code == 200 else set()
    assert answer.status_code == 400 or codes == {"BAD_USER_INPUT"}, answer.text


def test_graphql_strings_are_bounded_like_rest(api):
    long_symbol = "X" * 10_000
    answer = gql(api, "query($s: String!) { ohlcvData(input: {symbol: $s}) { rows } }", {"s": long_symbol})
    error = answer.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT" and error["extensions"]["field"] == "symbol"
    assert "at most" in error["message"] or "characters" in error["message"]
    assert len(answer.content) < 2_000  # never echoed
    megabyte = gql(
        api, "query($s: String!) { ohlcvData(input: {symbol: $s}) { rows } }", {"s": "X" * 1_000_000}
    )
    assert megabyte.status_code == 413 and len(megabyte.content) < 2_000


@pytest.mark.parametrize(
    "path", ["/v1/crypto/signal", "/v1/crypto/ml-signal", "/v1/crypto/signal/batch", "/graphql"]
)
def test_deeply_nested_json_is_a_400_naming_the_problem(api, path):
    body = '{"symbol": ' + "[" * 1000 + "]" * 1000 + "}"
    answer = requests.post(
        f"{api.url}{path}", data=body, headers={"X-API-Key": READER_KEY, "content-type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert "nested 1001 levels" in answer.json()["detail"]


def test_forwarded_for_does_not_buy_a_fresh_budget(api):
    """Anonymous callers (refused: keys are required) spoofing X-Forwarded-For from the one peer."""
    statuses = []
    for i in range(REST_LIMIT + 5):
        answer = requests.get(
            f"{api.url}/v1/crypto/ohlcv",
            params={"symbol": "BTC/USDT"},
            headers={"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"},
            timeout=10,
        )
        statuses.append(answer.status_code)
    assert statuses[:REST_LIMIT] == [401] * REST_LIMIT  # refusals count too
    assert statuses[REST_LIMIT:] == [429] * 5
    assert 1 <= int(answer.headers["Retry-After"]) <= 60 and answer.headers["RateLimit-Remaining"] == "0"


def test_browser_pages_carry_security_headers(api):
    for path in ("/", "/ui/app.js", "/ui/docs.html"):
        answer = requests.get(f"{api.url}{path}", timeout=10)
        assert answer.status_code == 200, path
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
    docs = requests.get(f"{api.url}/docs", timeout=10, allow_redirects=False)
    assert docs.headers["X-Frame-Options"] == "DENY"


def test_half_open_connections_are_closed_after_the_header_timeout(api):
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, nothing answered
        assert time.monotonic() - started < 8  # --header-timeout 2, not held open
    assert requests.get(f"{api.url}/health", timeout=5).ok


def test_ready_tells_an_anonymous_caller_only_ready_or_not(api):
    anonymous = requests.get(f"{api.url}/ready", timeout=10).json()
    assert set(anonymous) <= {"status", "model_loaded", "reason"} and anonymous["status"] == "not_ready"
    assert "127.0.0.1" not in anonymous["reason"]
    keyed = requests.get(f"{api.url}/ready", headers={"X-API-Key": READER_KEY}, timeout=10).json()
    assert keyed["reason"] != anonymous["reason"]


def test_placeholder_secrets_stop_both_faces_at_start_up(api_data_dir, tmp_path):
    env = _env(api_data_dir, tmp_path)
    env["CRYPTO_API_KEYS"] = "admin:admin:change-me-admin-key-0000"
    for kind in ("serve", "grpc"):
        done = subprocess.run(
            [venv_bin("crypto-platform"), kind, "--port", "0" if kind == "grpc" else "1"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode != 0
        assert "CRYPTO_API_KEYS: key 'admin' is a placeholder" in done.stderr, done.stderr[-2000:]


# --- gRPC --------------------------------------------------------------------------------------------


def _status(port: int, method: str, request, metadata=()) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            getattr(pb2_grpc.CryptoServiceStub(channel), method)(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_grpc_refusals_count_toward_the_peer_limit(grpc_port):
    request = pb2.OHLCVRequest(symbol="BTC/USDT", limit=2)
    codes = [
        _status(grpc_port, "GetOHLCV", request, (("x-api-key", f"guess-{i:040d}"),))
        for i in range(GRPC_LIMIT + 3)
    ]
    assert codes[:GRPC_LIMIT] == [grpc.StatusCode.UNAUTHENTICATED] * GRPC_LIMIT
    assert codes[GRPC_LIMIT:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    # a valid key has its own budget
    assert _status(grpc_port, "GetOHLCV", request, (("x-api-key", READER_KEY),)) is grpc.StatusCode.OK


def test_grpc_streams_are_capped_per_caller_and_charged_per_message(grpc_port):
    metadata = (("x-api-key", READER_KEY),)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb2_grpc.CryptoServiceStub(channel)
        slow = pb2.StreamPricesRequest(symbols=["BTC/USDT"], interval=60)
        first, second = (stub.StreamPrices(slow, metadata=metadata, timeout=60) for _ in range(2))
        assert next(first).symbol == "BTC/USDT" and next(second).symbol == "BTC/USDT"
        with pytest.raises(grpc.RpcError) as third:
            next(stub.StreamPrices(slow, metadata=metadata, timeout=30))
        assert third.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "per caller" in third.value.details()
        first.cancel()
        second.cancel()
    # A fast stream (another key: its own budget) ends when its messages have spent the window.
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb2_grpc.CryptoServiceStub(channel)
        fast = pb2.StreamPricesRequest(symbols=["BTC/USDT", "ETH/USDT"], interval=0.1)
        received = 0
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stub.StreamPrices(fast, metadata=(("x-api-key", ADMIN_KEY),), timeout=60):
                received += 1
        assert ended.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # the call costs 1 and each message 1: 29 messages fit in 30 units (whole rounds of 2)
        assert 26 <= received <= GRPC_LIMIT - 1, received


def test_grpc_health_tells_an_anonymous_caller_only_ready_or_not(grpc_port):
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb2_grpc.CryptoServiceStub(channel)
        anonymous = stub.HealthCheck(pb2.HealthRequest(), timeout=10)
        keyed = stub.HealthCheck(pb2.HealthRequest(), metadata=(("x-api-key", READER_KEY),), timeout=10)
    assert not anonymous.model_loaded and "127.0.0.1" not in anonymous.reason
    assert keyed.reason != anonymous.reason
    assert json.dumps(keyed.reason)  # a string either way
