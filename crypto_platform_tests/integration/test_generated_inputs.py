"""Generated inputs for GraphQL and gRPC (hypothesis): ≥ 5,000 each, 0 server errors, 0 crashes.

- GraphQL: documents generated from the served schema itself (hypothesis-graphql: valid documents
  with arbitrary argument values, and invalid ones), plus arbitrary JSON as an `Int` variable. Posted
  to the real app in-process; no answer may be an HTTP 5xx or carry INTERNAL_SERVER_ERROR.
- gRPC: every method of crypto.CryptoService with arbitrary field values (any text, any int32, absent
  or present optionals, any interval), against a real `crypto-platform grpc` process; no status may be
  INTERNAL or UNKNOWN, and the process must still answer its health check at the end.
REST has the same goal in test_api_schemathesis.py.
"""

from __future__ import annotations

import json

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto_platform_tests.fixtures.serving_processes import base_serving_env
from serving.grpc import stubs

hypothesis_graphql = pytest.importorskip(
    "hypothesis_graphql", reason="hypothesis-graphql (with schemathesis)"
)
from hypothesis_graphql import Mode, from_schema  # noqa: E402

pb2, pb2_grpc = stubs.load()

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOAL = 5_000
FAST = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture
def graphql_client(make_api_client, api_settings):
    return make_api_client(api_settings(rate_limit_per_minute=0))


def test_generated_graphql_documents_never_fail_the_server(graphql_client):
    from strawberry.printer import print_schema

    from serving.graphql.schema import schema

    sdl = print_schema(schema)
    failures: list[str] = []
    sent = [0]

    def post(payload: dict) -> None:
        sent[0] += 1
        # json.dumps writes NaN / Infinity, which a hostile client may send too
        content = json.dumps(payload)
        answer = graphql_client.post(
            "/graphql", content=content, headers={"content-type": "application/json"}
        )
        label = json.dumps(payload)[:300]
        if answer.status_code >= 500:
            failures.append(f"{answer.status_code} for {label}: {answer.text[:300]}")
            return
        body = answer.json()
        codes = {e.get("extensions", {}).get("code") for e in body.get("errors") or []}
        if "INTERNAL_SERVER_ERROR" in codes or None in codes:
            failures.append(f"{codes} for {label}: {answer.text[:300]}")

    for mode, examples in ((Mode.POSITIVE, 2_600), (Mode.NEGATIVE, 1_400)):

        @settings(FAST, max_examples=examples)
        @given(document=from_schema(sdl, mode=mode, allow_x00=False))
        def documents(document: str) -> None:
            post({"query": document})

        documents()

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    )

    @settings(FAST, max_examples=1_100)
    @given(value=json_values)
    def int_variable(value) -> None:
        post({"query": "query($n: Int!) { signalsTail(n: $n) { count } }", "variables": {"n": value}})

    int_variable()
    assert sent[0] >= GOAL, sent[0]
    assert failures == [], "\n".join(failures[:10])


# --- gRPC ------------------------------------------------------------------------------------------

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
TEXT = st.text(max_size=40) | st.sampled_from(["BTC/USDT", "ETH/USDT", "btcusdt", "1h", "4h", "binance", ""])


def _optional(value: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | value


def _message(kind, **fields: st.SearchStrategy) -> st.SearchStrategy:
    """A request message with each field absent (None) or set to a drawn value."""
    return st.fixed_dictionaries(fields).map(lambda f: kind(**{k: v for k, v in f.items() if v is not None}))


GRPC_REQUESTS = st.one_of(
    st.tuples(
        st.just("GetOHLCV"),
        _message(
            pb2.OHLCVRequest,
            symbol=TEXT,
            exchange=_optional(TEXT),
            timeframe=_optional(TEXT),
            limit=_optional(INT32),
        ),
    ),
    st.tuples(
        st.just("GenerateSignal"),
        _message(
            pb2.SignalRequest,
            symbol=TEXT,
            horizon_min=_optional(INT32),
            explain=st.booleans(),
            exchange=_optional(TEXT),
            timeframe=_optional(TEXT),
            limit=_optional(INT32),
        ),
    ),
    st.tuples(
        st.just("GenerateMLPrediction"),
        _message(
            pb2.MLPredictionRequest,
            symbol=TEXT,
            exchange=_optional(TEXT),
            timeframe=_optional(TEXT),
            limit=_optional(INT32),
            include_heuristic=_optional(st.booleans()),
        ),
    ),
    st.tuples(
        st.just("CompareSignals"),
        _message(
            pb2.CompareRequest,
            symbol=TEXT,
            exchange=_optional(TEXT),
            timeframe=_optional(TEXT),
            horizon_min=_optional(INT32),
        ),
    ),
    st.tuples(st.just("HealthCheck"), st.just(pb2.HealthRequest())),
    st.tuples(st.just("ReloadModel"), st.just(pb2.ReloadRequest())),
    st.tuples(
        st.just("StreamPrices"),
        _message(
            pb2.StreamPricesRequest,
            symbols=st.lists(TEXT, max_size=20),
            exchange=_optional(TEXT),
            timeframe=_optional(TEXT),
            interval=st.floats(allow_nan=True, allow_infinity=True),
        ),
    ),
)


@pytest.fixture(scope="module")
def fuzzed_grpc(serving_process, api_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc-fuzz")
    env = {
        **base_serving_env(api_data_dir, f"sqlite:///{root / 'history.db'}"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "CRYPTO_API_RATE_LIMIT": "0",
        "CRYPTO_API_MAX_STREAMS_PER_CALLER": "64",
    }
    return serving_process("grpc", env)


def test_generated_grpc_requests_never_fail_the_server(fuzzed_grpc):
    failures: list[str] = []
    sent = [0]
    with grpc.insecure_channel(f"127.0.0.1:{fuzzed_grpc.port}") as channel:
        stub = pb2_grpc.CryptoServiceStub(channel)

        @settings(FAST, max_examples=GOAL + 200)
        @given(call=GRPC_REQUESTS)
        def calls(call) -> None:
            method, request = call
            sent[0] += 1
            try:
                if method == "StreamPrices":
                    stream = stub.StreamPrices(request, timeout=30)
                    try:
                        next(stream)
                    finally:
                        stream.cancel()
                else:
                    getattr(stub, method)(request, timeout=30)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    failures.append(f"{method}({request!r:.200}): {exc.code()} {exc.details()}")

        calls()
        assert stub.HealthCheck(pb2.HealthRequest(), timeout=10).status == "ok"  # still alive
    assert fuzzed_grpc.proc.poll() is None, "the gRPC process exited"
    assert sent[0] >= GOAL, sent[0]
    assert failures == [], "\n".join(failures[:10])
