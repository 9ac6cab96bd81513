"""GraphQL at /graphql over HTTP against the real app: queries and mutations answer what REST answers
for the same request, errors carry `extensions.code`, and the REST key rules apply.

The app is `create_app` over the pipeline-layout data dir of fixtures/api.py (frozen clock); the ML
mutation runs against the session's real MLflow server and its registered tiny LSTM champion.
"""

from __future__ import annotations

import pytest

from serving.api.settings import ApiKeySpec

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
KEYS = (ApiKeySpec("ops", "admin", ADMIN_KEY), ApiKeySpec("dash", "reader", READER_KEY))

SIGNAL_FIELDS = "symbol horizonMin riskScore nowcastRet volRegime method exchange timeframe timestamp source"
ML_FIELDS = (
    "predictedVolatility horizonHours volatilityRegime riskLevel currentVolatility confidence barTimestamp"
)


def gql(client, query: str, variables: dict | None = None, headers: dict | None = None) -> dict:
    response = client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def assert_same(graphql: dict, rest: dict, fields: str) -> None:
    for field in fields.split():
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in field)
        assert graphql[field] == rest[snake], f"{field}: {graphql[field]!r} != {rest[snake]!r}"


@pytest.fixture
def client(make_api_client):
    return make_api_client()


def test_queries_answer_what_rest_answers(client):
    health = gql(client, "{ health { status timestamp uptimeS modelLoaded mlAvailable reason } }")
    assert "errors" not in health
    assert health["data"]["health"]["status"] == "ok"
    assert health["data"]["health"]["modelLoaded"] is False and health["data"]["health"]["reason"]

    query = """query($in: OhlcvInput!) { ohlcvData(input: $in) {
        symbol exchange timeframe limit rows source origin data { ts open high low close volume time } } }"""
    body = gql(client, query, {"in": {"symbol": "btcusdt", "limit": 5}})["data"]["ohlcvData"]
    rest = client.get("/v1/crypto/ohlcv", params={"symbol": "btcusdt", "limit": 5}).json()
    assert_same(body, rest, "symbol exchange timeframe limit rows source origin")
    assert body["data"] == rest["data"]  # ts as a Long: epoch ms survive (they overflow GraphQL Int)

    info = gql(client, "{ modelInfo { modelLoaded modelName alias lastError } }")["data"]["modelInfo"]
    assert_same(info, client.get("/v1/ml/model/info").json(), "modelLoaded modelName alias lastError")

    compare = gql(
        client,
        f"""{{ compareSignals(input: {{symbol: "ETH/USDT", horizonMin: 120}}) {{
            symbol mlAvailable mlError heuristic {{ {SIGNAL_FIELDS} }} }} }}""",
    )["data"]["compareSignals"]
    rest = client.get("/v1/crypto/signals/compare", params={"symbol": "ETH/USDT", "horizon_min": 120}).json()
    assert compare["mlAvailable"] is False and compare["mlError"] == rest["ml_error"]
    assert_same(compare["heuristic"], rest["heuristic"], SIGNAL_FIELDS)


def test_generate_signal_equals_rest_and_is_recorded(client):
    mutation = f"""mutation($in: SignalInput!) {{ generateSignal(input: $in) {{
        {SIGNAL_FIELDS} explain {{ vol calmBelow turbulentFrom featuresTail barsUsed origin }} }} }}"""
    body = gql(client, mutation, {"in": {"symbol": "BTC/USDT", "horizonMin": 240, "explain": True}})
    signal = body["data"]["generateSignal"]
    rest = client.post(
        "/v1/crypto/signal", json={"symbol": "BTC/USDT", "horizon_min": 240, "explain": True}
    ).json()
    assert_same(signal, rest, SIGNAL_FIELDS)
    assert signal["explain"]["featuresTail"] == rest["explain"]["features_tail"]
    assert_same(signal["explain"], rest["explain"], "vol calmBelow turbulentFrom barsUsed origin")

    tail = gql(
        client, f"{{ signalsTail(n: 2) {{ count items {{ id createdAt recordedAt {SIGNAL_FIELDS} }} }} }}"
    )
    items = tail["data"]["signalsTail"]["items"]
    # GraphQL keeps its own shape ({count, items}, newest first); REST's is the seed's bare list, newest last.
    rest_items = client.get("/v1/crypto/signals/tail", params={"n": 2}).json()[::-1]
    assert [i["id"] for i in items] == [i["id"] for i in rest_items] and len(items) == 2
    for item, rest_item in zip(items, rest_items, strict=True):
        assert_same(item, rest_item, f"{SIGNAL_FIELDS} createdAt recordedAt")
    assert client.get("/v1/metrics/summary").json()["signals_total"] == 2


SIGNAL_DOC = "mutation($in: SignalInput!) { generateSignal(input: $in) { symbol } }"
ML_DOC = "mutation($in: MLSignalInput!) { generateMlSignal(input: $in) { symbol } }"
OHLCV_DOC = "query($in: OhlcvInput!) { ohlcvData(input: $in) { rows } }"
COMPARE_DOC = "query($in: CompareInput!) { compareSignals(input: $in) { symbol } }"


@pytest.mark.parametrize(
    ("document", "variables", "field"),
    [
        (SIGNAL_DOC, {"symbol": "DOGE/USDT"}, "symbol"),
        (SIGNAL_DOC, {"symbol": "not a symbol!"}, "symbol"),
        (SIGNAL_DOC, {"symbol": "BTC/USDT", "horizonMin": 0}, "horizonMin"),
        (SIGNAL_DOC, {"symbol": "BTC/USDT", "limit": 5}, "limit"),
        (SIGNAL_DOC, {"symbol": "BTC/USDT", "exchange": "kraken"}, "exchange"),
        (ML_DOC, {"symbol": "BTC/USDT", "timeframe": "banana"}, "timeframe"),
        (OHLCV_DOC, {"symbol": "BTC/USDT", "limit": 1001}, "limit"),
        (COMPARE_DOC, {"symbol": "BTC/USDT", "horizonMin": -1}, "horizonMin"),
    ],
)
def test_bad_input_is_a_bad_user_input_error_naming_the_field(client, document, variables, field):
    body = gql(client, document, {"in": variables})
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert error["extensions"]["field"] == field and field in [
        e["field"] for e in error["extensions"]["errors"]
    ]


def test_document_errors_and_tail_bounds(client):
    missing = gql(client, "mutation { generateSignal(input: {horizonMin: 60}) { symbol } }")
    assert missing["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "symbol" in missing["errors"][0]["message"]
    tail = gql(client, "{ signalsTail(n: 0) { count } }")
    assert tail["errors"][0]["extensions"] == {
        "code": "BAD_USER_INPUT",
        "field": "n",
        "errors": [{"field": "n", "message": "must be between 1 and 1000, got 0"}],
    }


def test_ml_without_a_model_is_unavailable_and_exchange_failure_bad_gateway(
    make_api_client, api_settings, closed_port_url
):
    settings = api_settings(
        platform={
            "market_source": "exchange",
            "exchange_api_url": closed_port_url,
            "exchange_retry_budget_s": 0.2,
        }
    )
    client = make_api_client(settings)
    ml = gql(client, 'mutation { generateMlSignal(input: {symbol: "BTC/USDT"}) { symbol } }')
    assert ml["data"] is None and ml["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    assert ml["errors"][0]["message"].startswith("no ")
    market = gql(client, '{ ohlcvData(input: {symbol: "SOL/USDT", limit: 3}) { rows } }')
    assert (
        market["errors"][0]["extensions"]["code"] == "BAD_GATEWAY"
        and "SOL/USDT" in market["errors"][0]["message"]
    )


def test_keys_follow_the_rest_rules(make_api_client, api_settings):
    client = make_api_client(api_settings(api_keys=KEYS, require_key=True))
    query = '{ ohlcvData(input: {symbol: "BTC/USDT", limit: 2}) { rows } }'
    assert client.get("/v1/crypto/ohlcv", params={"symbol": "BTC/USDT"}).status_code == 401
    anonymous = gql(client, query)
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    wrong = gql(client, query, headers={"X-API-Key": "wrong-key-0123456789"})
    assert wrong["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert gql(client, query, headers={"X-API-Key": READER_KEY})["data"]["ohlcvData"]["rows"] == 2
    bearer = {"Authorization": f"Bearer {READER_KEY}"}
    assert gql(client, query, headers=bearer)["data"]["ohlcvData"]["rows"] == 2
    # Liveness needs no key, as REST's /health.
    assert gql(client, "{ health { status } }")["data"]["health"]["status"] == "ok"

    reload = "mutation { reloadModel { success message } }"
    reader = gql(client, reload, headers={"X-API-Key": READER_KEY})
    assert reader["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    admin = gql(client, reload, headers={"X-API-Key": ADMIN_KEY})
    rest = client.post("/v1/ml/model/reload", headers={"X-API-Key": ADMIN_KEY}).json()
    assert admin["data"]["reloadModel"]["success"] is rest["success"] is False  # no MLflow here


def test_rate_limit_covers_graphql(make_api_client, api_settings):
    client = make_api_client(api_settings(rate_limit_per_minute=2))
    for _ in range(2):
        assert client.post("/graphql", json={"query": "{ health { status } }"}).status_code == 200
    assert client.post("/graphql", json={"query": "{ health { status } }"}).status_code == 429


def test_get_serves_the_vendored_graphiql_and_queries(client):
    page = client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/ui/vendor/graphiql/graphiql.min.js" in page.text and "unpkg.com" not in page.text
    for asset in ("graphiql.min.js", "graphiql.min.css", "react.production.min.js"):
        assert client.get(f"/ui/vendor/graphiql/{asset}").status_code == 200, asset
    answer = client.get(
        "/graphql", params={"query": "{ health { status } }"}, headers={"Accept": "application/json"}
    )
    assert answer.json() == {"data": {"health": {"status": "ok"}}}
    # Mutations are refused over GET (they change state): nothing is recorded.
    refused = client.get(
        "/graphql",
        params={"query": 'mutation { generateSignal(input: {symbol: "BTC/USDT"}) { symbol } }'},
        headers={"Accept": "application/json"},
    )
    assert refused.status_code == 400
    assert client.get("/v1/crypto/signals/tail").json() == []
    assert "/graphql" not in client.get("/schema/openapi.json").json()["paths"]


def test_ml_mutation_and_model_info_equal_rest_with_a_champion(make_api_client, api_settings, api_champion):
    client = make_api_client(api_settings(mlflow_uri=api_champion.tracking_uri), start_model_poller=True)
    body = gql(
        client,
        f"""mutation {{ generateMlSignal(input: {{symbol: "ETH/USDT"}}) {{
            symbol method modelVersion exchange timeframe source
            mlPrediction {{ {ML_FIELDS} }} heuristicComparison {{ {SIGNAL_FIELDS} }} }} }}""",
    )
    ml = body["data"]["generateMlSignal"]
    rest = client.post("/v1/crypto/ml-signal", json={"symbol": "ETH/USDT"}).json()
    assert_same(ml, rest, "symbol method modelVersion exchange timeframe source")
    assert ml["modelVersion"] == api_champion.lstm_version
    assert_same(ml["mlPrediction"], rest["ml_prediction"], ML_FIELDS)
    assert_same(ml["heuristicComparison"], rest["heuristic_comparison"], SIGNAL_FIELDS)
    assert len(client.get("/v1/crypto/ml-predictions/tail").json()) == 2

    fields = (
        "modelLoaded modelName alias modelVersion modelFamily runId sequenceLength featureColumns metrics"
    )
    info = gql(client, f"{{ modelInfo {{ {fields} }} }}")["data"]["modelInfo"]
    assert_same(info, client.get("/v1/ml/model/info").json(), fields)
    health = gql(client, "{ health { modelLoaded mlAvailable } }")["data"]["health"]
    assert health == {"modelLoaded": True, "mlAvailable": True}
