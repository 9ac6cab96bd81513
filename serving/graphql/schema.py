"""The GraphQL schema: the REST API's operations (`serving.api.operations`) as fields.

Queries: health, modelInfo, ohlcvData(input), signalsTail(n), compareSignals(input).
Mutations: generateSignal(input), generateMlSignal(input) (each served signal is recorded in the
history, as over REST), reloadModel (admin key). `compareSignals` is a query: like REST's
GET /v1/crypto/signals/compare it records nothing.

Every field but `health` follows the /v1 rules (a presented key must be valid; a key is required only
with CRYPTO_API_REQUIRE_KEY); `reloadModel` needs an admin key. Blocking operations run in a worker
thread so the event loop keeps serving.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import strawberry
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext, Info

from serving.api import operations, schemas
from serving.api.security import caller_identity
from serving.api.services import Services
from serving.graphql import types as t
from serving.graphql.errors import DomainErrors, authorize, is_expected
from serving.graphql.limits import limit_extensions, oversized


def _services(info: Info, role: str = "reader") -> Services:
    services: Services = info.context["services"]
    authorize(info.context["request"], services, role)
    return services


async def _blocking(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(partial(fn, *args))


def _fields(obj: Any) -> dict[str, Any]:
    return dict(vars(obj))


@strawberry.type
class Query:
    @strawberry.field(
        description="Liveness and model readiness. Needs no key; the model version and the reason none "
        "is loaded are given to callers with a valid key only."
    )
    def health(self, info: Info) -> t.Health:
        services: Services = info.context["services"]
        detailed = caller_identity(info.context["request"], services.keyring) is not None
        return t.Health(**operations.health_report(services, detailed))

    @strawberry.field(description="The served model, or why there is none.")
    def model_info(self, info: Info) -> t.ModelInfo:
        return operations.model_info(_services(info))  # type: ignore[return-value]

    @strawberry.field(description="The last `limit` closed bars (never the candle still open).")
    async def ohlcv_data(self, info: Info, input: t.OhlcvInput) -> t.OhlcvData:
        svc, i = _services(info), input
        return await _blocking(operations.ohlcv, svc, i.symbol, i.exchange, i.timeframe, i.limit)

    @strawberry.field(description="The last `n` heuristic signals served, newest first.")
    async def signals_tail(self, info: Info, n: int = 50) -> t.SignalsTail:
        page = await _blocking(operations.signals_tail, _services(info), n)
        items = t.signal_records(page.newest_first)
        return t.SignalsTail(count=len(items), items=items)  # type: ignore[arg-type]

    @strawberry.field(description="Heuristic signal and ML forecast for the same bar; records nothing.")
    async def compare_signals(self, info: Info, input: t.CompareInput) -> t.Comparison:
        svc = _services(info)
        return await _blocking(
            operations.compare, svc, input.symbol, input.exchange, input.timeframe, input.horizon_min
        )


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Heuristic risk signal at the newest closed bar (recorded).")
    async def generate_signal(self, info: Info, input: t.SignalInput) -> t.Signal:
        svc = _services(info)
        request = operations.parse_request(schemas.SignalRequest, _fields(input))
        return await operations.signal(svc, request)  # type: ignore[return-value]

    @strawberry.mutation(description="Forecast of the next 24 bars' realized volatility (recorded).")
    async def generate_ml_signal(self, info: Info, input: t.MLSignalInput) -> t.MLSignal:
        svc = _services(info)
        request = operations.parse_request(schemas.MLSignalRequest, _fields(input))
        return await operations.ml_signal(svc, request)  # type: ignore[return-value]

    @strawberry.mutation(description="Re-resolve the model alias now (admin key).")
    async def reload_model(self, info: Info) -> t.ReloadResult:
        return await _blocking(operations.reload_model, _services(info, role="admin"))


class _Schema(strawberry.Schema):
    async def execute(self, query: str | None, *args: Any, **kwargs: Any) -> Any:
        # Refused before parsing: the cheapest answer to a document of megabytes (see limits).
        return oversized(query) or await super().execute(query, *args, **kwargs)

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None):
        # Bad input, auth and "no model" are answers, not faults: log only the unexpected ones.
        super().process_errors([e for e in errors if not is_expected(e)], execution_context)


schema = _Schema(
    query=Query,
    mutation=Mutation,
    # The limits first: a document over them is refused before anything resolves.
    extensions=[*limit_extensions(), DomainErrors],
    config=StrawberryConfig(scalar_map={t.Long: t.LONG_SCALAR}),
)
