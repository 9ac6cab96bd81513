"""crypto.CryptoService on a real grpc.aio server (a free loopback port) called by a real grpc.aio client.

The server runs in its own thread and event loop, built with `build_services` over the pipeline-layout
data dir of fixtures/api.py (frozen clock); each test's REST twin (`make_api_client`, same settings,
its own history DB) answers the same requests, and the answers must match. The ML RPCs run against
the session's real MLflow server and its tiny LSTM champion. Also: `crypto-platform grpc` as a process,
stopped by SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crypto_platform.devtools.ports import free_port
from crypto_platform_tests.fixtures.api import api_now
from crypto_platform_tests.fixtures.servers import stop_process_group, venv_bin, wait_until
from serving.api.services import build_services
from serving.api.settings import ApiKeySpec
from serving.grpc.server import SERVICE_NAME, pb2, pb2_grpc, running_server

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
KEYS = (ApiKeySpec("ops", "admin", ADMIN_KEY), ApiKeySpec("dash", "reader", READER_KEY))


class ServerThread:
    """`running_server` in a thread with its own loop, as a separate process would be."""

    def __init__(self, services, start_model_poller: bool) -> None:
        self.services, self.start_model_poller = services, start_model_poller
        self.ready = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        try:
            async with running_server(
                self.services, "127.0.0.1", 0, start_model_poller=self.start_model_poller, grace_s=1.0
            ) as running:
                self.running, self.port = running, running.port
                self.ready.set()
                await self.stopping.wait()
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            raise

    def start(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(90) and self.error is None, self.error
        return self

    def on_loop(self, fn) -> Any:
        """Run `fn()` on the server's loop and return its result."""

        async def call():
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def active_streams(self) -> int:
        return self.on_loop(lambda: self.running.servicer.active_streams)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(30)


@pytest.fixture
def grpc_server(api_settings, tmp_path):
    """`grpc_server(settings=None, start_model_poller=False)` → a started ServerThread."""
    servers: list[ServerThread] = []

    def start(settings=None, start_model_poller: bool = False) -> ServerThread:
        settings = settings or api_settings()
        # Its own history DB: the REST twin built from the same settings writes to history.db.
        settings = replace(settings, history_url=f"sqlite:///{tmp_path / f'grpc-history-{len(servers)}.db'}")
        server = ServerThread(build_services(settings, now_ms=api_now), start_model_poller).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def call(port: int, method: str, request, metadata=()) -> Any:
    async def go():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.CryptoServiceStub(channel)
            rpc = getattr(stub, method)(request, metadata=metadata, timeout=60)
            # A server stream answers its first message (or its error status).
            return await (rpc.read() if isinstance(rpc, grpc.aio.UnaryStreamCall) else rpc)

    return asyncio.run(go())


def status_of(port: int, method: str, request, metadata=()) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        call(port, method, request, metadata)
    return info.value


def as_dict(message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def test_unary_rpcs_answer_what_rest_answers(grpc_server, make_api_client):
    port = grpc_server().port
    rest = make_api_client()

    ohlcv = as_dict(call(port, "GetOHLCV", pb2.OHLCVRequest(symbol="btcusdt", limit=5)))
    expected = rest.get("/v1/crypto/ohlcv", params={"symbol": "btcusdt", "limit": 5}).json()
    assert {**ohlcv, "data": [{**row, "ts": int(row["ts"])} for row in ohlcv["data"]]} == {
        **expected,
        "warnings": [],
    }

    signal_ = as_dict(
        call(port, "GenerateSignal", pb2.SignalRequest(symbol="ETH/USDT", horizon_min=240, explain=True))
    )
    expected = rest.post(
        "/v1/crypto/signal", json={"symbol": "ETH/USDT", "horizon_min": 240, "explain": True}
    ).json()
    explanation = signal_.pop("explanation")
    assert signal_ == {k: v for k, v in expected.items() if k != "explain"}
    tail = expected["explain"].pop("features_tail")
    assert {k: v for k, v in explanation.items() if k != "features_tail"} == expected["explain"]
    assert explanation["features_tail"] == tail  # Struct numbers are doubles; 1.0 == 1
    assert "explanation" not in as_dict(call(port, "GenerateSignal", pb2.SignalRequest(symbol="ETH/USDT")))

    compare = as_dict(call(port, "CompareSignals", pb2.CompareRequest(symbol="BTC/USDT")))
    expected = rest.get("/v1/crypto/signals/compare", params={"symbol": "BTC/USDT"}).json()
    assert compare["heuristic"] == {**expected["heuristic"]} and compare["ml_available"] is False
    assert compare["ml_error"] == expected["ml_error"] and "ml" not in compare

    health = call(port, "HealthCheck", pb2.HealthRequest())
    assert (health.status, health.model_loaded, health.ml_available) == ("ok", False, False) and health.reason
    assert not health.HasField("model_version")


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("GenerateSignal", pb2.SignalRequest(symbol="DOGE/USDT"), "symbol"),
        ("GenerateSignal", pb2.SignalRequest(symbol="BTC/USDT", horizon_min=0), "horizon_min"),
        ("GenerateSignal", pb2.SignalRequest(symbol="BTC/USDT", limit=5), "limit"),
        ("GenerateSignal", pb2.SignalRequest(symbol=""), "symbol"),
        ("GenerateMLPrediction", pb2.MLPredictionRequest(symbol="BTC/USDT", timeframe="banana"), "timeframe"),
        ("GetOHLCV", pb2.OHLCVRequest(symbol="BTC/USDT", limit=1001), "limit"),
        ("GetOHLCV", pb2.OHLCVRequest(symbol="BTC/USDT", exchange="kraken"), "exchange"),
        ("CompareSignals", pb2.CompareRequest(symbol="BTC/USDT", horizon_min=20_000), "horizon_min"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(grpc_server, method, request_, field):
    server = grpc_server()
    error = status_of(server.port, method, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.details().startswith(f"{field}: ")
    assert (("invalid-field", field)) in tuple(error.trailing_metadata())


def test_unavailable_and_not_found(grpc_server, api_settings, closed_port_url, replay_server):
    port = grpc_server().port
    error = status_of(port, "GenerateMLPrediction", pb2.MLPredictionRequest(symbol="BTC/USDT"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and error.details().startswith("no ")

    down = api_settings(
        platform={
            "market_source": "exchange",
            "exchange_api_url": closed_port_url,
            "exchange_retry_budget_s": 0.2,
        }
    )
    error = status_of(grpc_server(down).port, "GetOHLCV", pb2.OHLCVRequest(symbol="SOL/USDT", limit=3))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "SOL/USDT" in error.details()

    # SOL/USDT is served by the platform but the replay exchange does not list it.
    replay = api_settings(platform={"market_source": "exchange", "exchange_api_url": replay_server.url})
    error = status_of(grpc_server(replay).port, "GetOHLCV", pb2.OHLCVRequest(symbol="SOL/USDT", limit=3))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details().startswith("symbol: ")


def test_keys_follow_the_rest_rules(grpc_server, api_settings):
    port = grpc_server(api_settings(api_keys=KEYS, require_key=True)).port
    request = pb2.OHLCVRequest(symbol="BTC/USDT", limit=2)
    assert status_of(port, "GetOHLCV", request).code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = (("x-api-key", "wrong-key-0123456789"),)
    assert status_of(port, "GetOHLCV", request, wrong).code() == grpc.StatusCode.UNAUTHENTICATED
    assert call(port, "GetOHLCV", request, (("x-api-key", READER_KEY),)).rows == 2
    assert call(port, "GetOHLCV", request, (("authorization", f"Bearer {READER_KEY}"),)).rows == 2
    assert call(port, "HealthCheck", pb2.HealthRequest()).status == "ok"  # no key, like /health
    reader = status_of(port, "ReloadModel", pb2.ReloadRequest(), (("x-api-key", READER_KEY),))
    assert reader.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = call(port, "ReloadModel", pb2.ReloadRequest(), (("x-api-key", ADMIN_KEY),))
    assert admin.success is False and admin.message  # no MLflow behind this one
    stream = status_of(port, "StreamPrices", pb2.StreamPricesRequest(symbols=["BTC/USDT"]))
    assert stream.code() == grpc.StatusCode.UNAUTHENTICATED


def test_stream_prices_sends_updates_and_stops_when_the_client_cancels(grpc_server, make_api_client):
    server = grpc_server()
    baseline_tasks = server.on_loop(lambda: len(asyncio.all_tasks()))

    async def consume() -> list:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb2_grpc.CryptoServiceStub(channel)
            stream = stub.StreamPrices(pb2.StreamPricesRequest(symbols=["btcusdt", "ETH/USDT"], interval=0.1))
            updates = []
            async for update in stream:
                updates.append(update)
                if len(updates) == 6:
                    assert server.active_streams() == 1
                    stream.cancel()
                    break
            return updates

    updates = asyncio.run(consume())
    assert [(u.symbol, u.sequence) for u in updates] == [
        (symbol, seq) for seq in (1, 2, 3) for symbol in ("BTC/USDT", "ETH/USDT")
    ]
    rest = make_api_client()
    for update in updates[:2]:
        last = rest.get("/v1/crypto/ohlcv", params={"symbol": update.symbol, "limit": 1}).json()["data"][-1]
        assert (update.ts, update.price, update.volume, update.timestamp) == (
            last["ts"], last["close"], last["volume"], last["time"]
        )  # fmt: skip
        assert update.source == "simulated"

    # The handler's generator ended on the server (its `finally` ran) and no task of it remains.
    deadline = time.monotonic() + 10
    while server.active_streams() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.active_streams() == 0
    while server.on_loop(lambda: len(asyncio.all_tasks())) > baseline_tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.on_loop(lambda: len(asyncio.all_tasks())) <= baseline_tasks

    for request, field in (
        (pb2.StreamPricesRequest(), "symbols"),
        (pb2.StreamPricesRequest(symbols=["XRP/USDT"]), "symbols"),
        (pb2.StreamPricesRequest(symbols=["BTC/USDT"], interval=0.001), "interval"),
    ):
        error = status_of(server.port, "StreamPrices", request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(f"{field}: ")
    assert server.active_streams() == 0


def test_health_service_and_reflection(grpc_server):
    server = grpc_server()

    async def go():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
            crypto = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
            ]
            answers = [answer async for answer in reflection.ServerReflectionInfo(iter(requests))]
            return overall.status, crypto.status, answers

    overall, crypto, (listing, files) = asyncio.run(go())
    assert overall == health_pb2.HealthCheckResponse.SERVING
    assert crypto == health_pb2.HealthCheckResponse.NOT_SERVING  # no model, as /ready's 503
    names = {s.name for s in listing.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    from google.protobuf import descriptor_pb2

    described = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in files.file_descriptor_response.file_descriptor_proto
    ]
    crypto_file = next(f for f in described if f.package == "crypto")
    methods = {m.name for m in crypto_file.service[0].method}
    assert methods >= {
        "GetOHLCV",
        "GenerateSignal",
        "GenerateMLPrediction",
        "CompareSignals",
        "HealthCheck",
        "StreamPrices",
    }


def test_ml_rpcs_with_a_champion_answer_what_rest_answers(
    grpc_server, make_api_client, api_settings, api_champion
):
    settings = api_settings(mlflow_uri=api_champion.tracking_uri, api_keys=KEYS)
    server = grpc_server(settings, start_model_poller=True)
    rest = make_api_client(settings, start_model_poller=True)

    ml = as_dict(call(server.port, "GenerateMLPrediction", pb2.MLPredictionRequest(symbol="ETH/USDT")))
    expected = rest.post("/v1/crypto/ml-signal", json={"symbol": "ETH/USDT"}).json()
    assert ml["model_version"] == expected["model_version"] == api_champion.lstm_version
    # Equal but for the two wall-clock stamps of when each answer was made, and proto3's way of saying
    # "no intervals" (the LSTM has no dispersion): an empty repeated field where REST says null.
    assert expected["ml_prediction"]["intervals"] is None and ml["ml_prediction"]["intervals"] == []
    for answer in (ml, expected):
        del answer["timestamp"], answer["ml_prediction"]["prediction_timestamp"]
        del answer["ml_prediction"]["intervals"]
    assert ml == expected
    without = call(
        server.port,
        "GenerateMLPrediction",
        pb2.MLPredictionRequest(symbol="ETH/USDT", include_heuristic=False),
    )
    assert not without.HasField("heuristic_comparison")

    compare = as_dict(call(server.port, "CompareSignals", pb2.CompareRequest(symbol="BTC/USDT")))
    expected = rest.get("/v1/crypto/signals/compare", params={"symbol": "BTC/USDT"}).json()
    for answer in (compare, expected):
        del answer["ml"]["prediction_timestamp"], answer["ml"]["intervals"]
    assert compare == expected and compare["ml_available"] is True

    # Anonymous callers learn ready or not; the served version is for key holders (as REST's /ready).
    health = call(server.port, "HealthCheck", pb2.HealthRequest())
    assert health.model_loaded and health.model_version == ""
    health = call(server.port, "HealthCheck", pb2.HealthRequest(), (("x-api-key", READER_KEY),))
    assert health.model_loaded and health.model_version == api_champion.lstm_version

    async def check():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            return (
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME)
                )
            ).status

    assert asyncio.run(check()) == health_pb2.HealthCheckResponse.SERVING


def test_grpc_command_serves_and_stops_on_sigterm(api_data_dir, tmp_path, closed_port_url):
    port = free_port()
    env = {
        **os.environ,
        "CRYPTO_DATA_LOCATION": str(api_data_dir),
        "CRYPTO_SYMBOLS": "BTC/USDT,ETH/USDT",
        "CRYPTO_MARKET_SOURCE": "simulated",
        "CRYPTO_API_HISTORY_URL": f"sqlite:///{tmp_path / 'history.db'}",
        "MLFLOW_TRACKING_URI": closed_port_url,  # no model: the server must come up anyway
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "CRYPTO_API_MODEL_STARTUP_S": "2",
    }
    log = tmp_path / "grpc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [venv_bin("crypto-platform"), "grpc", "--port", str(port), "--grace", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def serving() -> bool:
        try:
            return call(port, "HealthCheck", pb2.HealthRequest()).status == "ok"
        except grpc.aio.AioRpcError:
            return False

    try:
        wait_until(serving, 90, "crypto-platform grpc", proc, log)
        signal_ = call(port, "GenerateSignal", pb2.SignalRequest(symbol="ETH/USDT"))
        assert signal_.method == "heuristic" and signal_.source == "simulated"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        stop_process_group(proc)
    assert "listening on" in log.read_text()


def test_rate_limit_is_resource_exhausted_with_retry_after(grpc_server, api_settings):
    port = grpc_server(api_settings(rate_limit_per_minute=3)).port
    request = pb2.OHLCVRequest(symbol="BTC/USDT", limit=2)
    for _ in range(3):
        assert call(port, "GetOHLCV", request).rows == 2
    limited = status_of(port, "GetOHLCV", request)
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "3 requests per minute" in limited.details()
    assert 1 <= int(dict(limited.trailing_metadata())["retry-after"]) <= 60
    # Liveness is never limited, as /health is not on REST.
    assert call(port, "HealthCheck", pb2.HealthRequest()).status == "ok"
