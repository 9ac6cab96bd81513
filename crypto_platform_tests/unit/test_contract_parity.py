"""The response contract is mirrored by hand in three places; this test says they agree.

REST: the msgspec Structs of `serving/api/schemas.py`. GraphQL: the object types of the served schema
(camelCase field names). gRPC: the messages of `crypto.proto`, read from the generated descriptors.
Every field of a mirrored type exists on every face, or is listed in `ABSENT` with the reason; every
response type of every face is mirrored in `PAIRS` or listed as belonging to one face only. A field or a
type added to one face only therefore fails here until it is added to the others or listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec
import pytest
from graphql import GraphQLObjectType, build_schema
from strawberry.utils.str_converters import to_camel_case

from serving.api import schemas
from serving.graphql.schema import schema as graphql_schema
from serving.graphql.types import StoredSignal
from serving.grpc import stubs

FACES = ("rest", "graphql", "proto")


@dataclass(frozen=True)
class Pair:
    rest: tuple[type[msgspec.Struct], ...]  # several: GraphQL and gRPC merge REST's /health and /ready
    graphql: str | None
    proto: str | None
    proto_renames: tuple[tuple[str, str], ...] = ()  # (REST name, proto name)

    @property
    def id(self) -> str:
        return "+".join(s.__name__ for s in self.rest)


PAIRS = [
    Pair((schemas.Health, schemas.Readiness), "Health", "HealthResponse"),
    Pair((schemas.OhlcvRow,), "OhlcvRow", "Candle"),
    Pair((schemas.OhlcvResponse,), "OhlcvData", "OHLCVResponse"),
    Pair((schemas.SignalExplain,), "SignalExplain", "SignalExplanation"),
    Pair((schemas.SignalResponse,), "Signal", "SignalResponse", (("explain", "explanation"),)),
    Pair((StoredSignal,), "SignalRecord", None),
    Pair((schemas.PredictionInterval,), "PredictionInterval", "PredictionInterval"),
    Pair((schemas.MLPrediction,), "MLPrediction", "MLPrediction"),
    Pair((schemas.MLSignalResponse,), "MLSignal", "MLPredictionResponse"),
    Pair((schemas.CompareResponse,), "Comparison", "CompareResponse"),
    Pair((schemas.ModelInfo,), "ModelInfo", None),
    Pair((schemas.ReloadResponse,), "ReloadResult", "ReloadResponse"),
]

# (type id, field) → {face: why the field is not there}
ABSENT: dict[tuple[str, str], dict[str, str]] = {
    ("Health+Readiness", "time"): {
        "graphql": "REST's older name of `timestamp`, kept beside it for REST clients",
        "proto": "REST's older name of `timestamp`, kept beside it for REST clients",
    },
}
NO_PROTO_TYPE = {
    "StoredSignal": "gRPC has no history tail",
    "ModelInfo": "gRPC has no model-info RPC (the model version is in HealthResponse)",
}

REST_ONLY = {
    "SignalBatchResponse": "batch signals are a REST operation",
    "BatchError": "batch signals are a REST operation",
    "MLExplainResponse": "occlusion explanations are a REST operation",
    "Attribution": "occlusion explanations are a REST operation",
    "FeaturesResponse": "the feature table is a REST operation",
    "MetricsSummary": "process counters are REST's /v1/metrics/summary",
    "ErrorBody": "errors are GraphQL errors with extensions.code and gRPC status codes",
}
GRAPHQL_ONLY = {
    "Query": "GraphQL's root",
    "Mutation": "GraphQL's root",
    "SignalsTail": "GraphQL's own tail shape ({count, items}); REST returns a bare list",
}
PROTO_ONLY = {"PriceUpdate": "StreamPrices is a gRPC server stream"}


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()


def _graphql_types() -> dict[str, GraphQLObjectType]:
    served = build_schema(graphql_schema.as_str())
    return {
        name: kind
        for name, kind in served.type_map.items()
        if isinstance(kind, GraphQLObjectType) and not name.startswith("__")
    }


def _proto_messages() -> dict:
    pb2, _ = stubs.load()
    return dict(pb2.DESCRIPTOR.message_types_by_name)


def face_fields(pair: Pair, graphql_types: dict, proto_messages: dict) -> dict[str, set[str] | None]:
    """Each face's field names in REST's snake_case (None: the face has no such type)."""
    rest = {f.encode_name for struct in pair.rest for f in msgspec.structs.fields(struct)}
    graphql = None
    if pair.graphql is not None:
        names = set(graphql_types[pair.graphql].fields)
        # camelCase ↔ snake_case must round-trip, or the comparison below would be meaningless
        assert all(to_camel_case(_snake(n)) == n for n in names), names
        graphql = {_snake(n) for n in names}
    proto = None
    if pair.proto is not None:
        back = {p: r for r, p in pair.proto_renames}
        proto = {back.get(f.name, f.name) for f in proto_messages[pair.proto].fields}
    return {"rest": rest, "graphql": graphql, "proto": proto}


def parity_problems(pair: Pair, fields: dict[str, set[str] | None]) -> list[str]:
    problems = []
    every = set().union(*(names for names in fields.values() if names is not None))
    for name in sorted(every):
        for face in FACES:
            names = fields[face]
            if names is None:
                continue
            listed = face in ABSENT.get((pair.id, name), {})
            if name not in names and not listed:
                problems.append(f"{pair.id}.{name}: missing on {face} (add it there, or list it in ABSENT)")
            if name in names and listed:
                problems.append(f"{pair.id}.{name}: listed as absent on {face} but present")
    return problems


@pytest.fixture(scope="module")
def graphql_types():
    return _graphql_types()


@pytest.fixture(scope="module")
def proto_messages():
    return _proto_messages()


@pytest.mark.parametrize("pair", PAIRS, ids=[p.id for p in PAIRS])
def test_every_field_exists_on_every_face_or_is_listed(pair, graphql_types, proto_messages):
    if pair.proto is None:
        assert pair.id in NO_PROTO_TYPE, f"{pair.id} has no protobuf message and no reason in NO_PROTO_TYPE"
    problems = parity_problems(pair, face_fields(pair, graphql_types, proto_messages))
    assert not problems, "\n".join(problems)


def test_every_response_type_is_mirrored_or_listed_as_one_face_only(graphql_types, proto_messages):
    rest_types = {
        name
        for name, value in vars(schemas).items()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == schemas.__name__
        and not name.startswith("_")
        and not name.endswith("Request")
    }
    mirrored_rest = {s.__name__ for p in PAIRS for s in p.rest}
    assert rest_types - mirrored_rest - set(REST_ONLY) == set(), "REST types neither mirrored nor REST_ONLY"
    assert set(graphql_types) - {p.graphql for p in PAIRS} - set(GRAPHQL_ONLY) == set()
    responses = {name for name in proto_messages if not name.endswith("Request")}
    assert responses - {p.proto for p in PAIRS} - set(PROTO_ONLY) == set()
    # The lists stay honest: what they name exists.
    assert set(REST_ONLY) <= rest_types and set(GRAPHQL_ONLY) <= set(graphql_types)
    assert set(PROTO_ONLY) <= responses
    assert {key[0] for key in ABSENT} <= {p.id for p in PAIRS}


def test_a_field_added_to_one_face_only_is_caught(graphql_types, proto_messages):
    """The check itself: a REST field GraphQL lacks, and a proto field REST lacks, are both reported."""
    pair = next(p for p in PAIRS if p.id == "MLPrediction")
    fields = face_fields(pair, graphql_types, proto_messages)
    assert parity_problems(pair, fields) == []
    rest_gained = {**fields, "rest": fields["rest"] | {"skew"}}
    assert parity_problems(pair, rest_gained) == [
        "MLPrediction.skew: missing on graphql (add it there, or list it in ABSENT)",
        "MLPrediction.skew: missing on proto (add it there, or list it in ABSENT)",
    ]
    proto_gained = {**fields, "proto": fields["proto"] | {"kurtosis"}}
    assert [p.split(":")[0] for p in parity_problems(pair, proto_gained)] == [
        "MLPrediction.kurtosis",
        "MLPrediction.kurtosis",
    ]
