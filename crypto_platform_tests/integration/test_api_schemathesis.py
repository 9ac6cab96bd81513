"""Property-based run over the API's own OpenAPI schema (schemathesis): no input produces a 5xx.

Runs against the app with a champion loaded (so 503 "no model" is not an expected answer) and the
simulated market source (so 502 "exchange down" is not either): any 5xx is a bug. Each operation gets
`MAX_EXAMPLES` schema-valid requests (responses must also match the schema) and `MAX_EXAMPLES`
schema-violating ones (which must be refused with a 4xx). The cases are drawn with Hypothesis through
schemathesis' strategies directly: its pytest plugin (`from_fixture`) does not work with pytest 9.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (hypothesis comes with schemathesis)
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Per operation and mode. Operations without parameters (health, metrics, …) have a single request to
# make and hypothesis stops there, so 280 brings each mode to ≥ 2,500 generated requests: ≥ 5,000 for
# REST in all (the hardening goal; each mode takes about two minutes on two busy cores).
MAX_EXAMPLES = 280
GOAL_PER_MODE = 2_500


@pytest.fixture
def api_schema(make_api_client, api_settings, api_champion):
    settings_ = api_settings(mlflow_uri=api_champion.tracking_uri, rate_limit_per_minute=0)
    client = make_api_client(settings_, start_model_poller=True)
    assert client.get("/ready").status_code == 200
    return schemathesis.openapi.from_asgi("/schema/openapi.json", client.app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_input_gives_a_server_error(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    failures: list[str] = []
    sent = [0]
    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case) -> None:
            response = case.call()
            sent[0] += 1
            label = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"
            if response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.text[:300]}")
            elif mode == GenerationMode.POSITIVE and response.status_code < 400:
                case.validate_response(response)

        try:
            check()
        except Unsatisfiable:
            # Nothing to violate: an operation without parameters or body has no invalid input.
            assert mode == GenerationMode.NEGATIVE, operation.label
    assert failures == [], "\n".join(failures[:10])
    assert sent[0] >= GOAL_PER_MODE, sent[0]
