"""`crypto.CryptoService` on a grpc.aio server, over the same operations as REST and GraphQL.

Blocking operations (store reads, exchange calls, feature computation, history reads) run through
`asyncio.to_thread`; `GenerateSignal` / `GenerateMLPrediction` are the async operations REST uses
(cached features inline). Alongside: the standard health service (`""` SERVING while the process
runs; `crypto.CryptoService` SERVING only while a model is loaded, like REST's /ready) and server
reflection, so `grpcurl` and friends work without the .proto.

Keys follow the REST rules, read from the `x-api-key` (or `authorization: Bearer`) metadata: a key
presented must be valid (else UNAUTHENTICATED), one is required only with CRYPTO_API_REQUIRE_KEY,
`ReloadModel` needs the admin role (PERMISSION_DENIED for a reader). `HealthCheck` needs no key (the
model version and the reason none is loaded are given with a valid key only, as REST's /ready).

Limits spend from the process's one budget (serving.core.ratelimit, REST's rule and variable):
- every call costs one unit of its key's window, or of its peer address's without a valid key;
  a call refused for a missing or wrong key still costs its peer one, so guessing keys runs into
  RESOURCE_EXHAUSTED (with `retry-after` metadata) like any other flood;
- `StreamPrices` is charged one unit for the call and one per message it sends: the stream ends with
  RESOURCE_EXHAUSTED when its caller's window is spent, however long it has run;
- at most `max_streams` streams run at once and `max_streams_per_caller` per key / peer
  (CRYPTO_API_MAX_STREAMS, CRYPTO_API_MAX_STREAMS_PER_CALLER); one more is refused with
  RESOURCE_EXHAUSTED before it starts.
Every status message passes through serving.core.redaction.redact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any

import grpc
import msgspec
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from crypto_platform.lib.market.client import ExchangeUnavailableError, UnknownSymbolError
from serving.api import operations, schemas
from serving.api.scoring import NotEnoughHistoryError, iso_ms
from serving.api.services import InvalidInputError, Services, serving_lifetime
from serving.core.auth import Denial, presented_key
from serving.core.market import MarketUnavailableError
from serving.core.model_store import ModelUnavailableError
from serving.core.redaction import redact
from serving.grpc import stubs
from serving.grpc.ratelimit import peer_host

pb2, pb2_grpc = stubs.load()

log = logging.getLogger(__name__)

SERVICE_NAME = pb2.DESCRIPTOR.services_by_name["CryptoService"].full_name  # "crypto.CryptoService"
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
DEFAULT_INTERVAL_S = 5.0
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 3600.0
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status of a domain error (see serving.api.operations); None for an unexpected one."""
    if isinstance(exc, InvalidInputError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UnknownSymbolError):
        return grpc.StatusCode.NOT_FOUND, f"symbol: {exc}"
    if isinstance(
        exc, ModelUnavailableError | NotEnoughHistoryError | MarketUnavailableError | ExchangeUnavailableError
    ):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    return None


async def abort_for(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End the RPC with the status of `exc` (always raises)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    mapped = status_for(exc)
    if mapped is None:
        log.exception("gRPC handler failed", exc_info=exc)
        mapped = (grpc.StatusCode.INTERNAL, "internal error")
    trailing = ()
    if isinstance(exc, InvalidInputError):
        # The fields also travel as metadata, for clients that branch on them rather than parse text.
        trailing = tuple(("invalid-field", key) for key in exc.fields)
    await context.abort(mapped[0], _clip(redact(mapped[1])), trailing_metadata=trailing)


MAX_MESSAGE_CHARS = 500


def _clip(message: str) -> str:
    """A status message quotes at most a little of what the caller sent."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}… ({len(message)} characters)"


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def unary(role: str | None = "reader") -> Callable[[Handler], Handler]:
    """Auth (`role`; None: no key needed) and domain errors → status codes, around a unary handler."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def wrapped(self: CryptoServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            if role is not None:
                await self.authorize(context, role)
            try:
                return await handler(self, request, context)
            except Exception as exc:  # every path ends in context.abort
                await abort_for(context, exc)

        return wrapped

    return decorate


def _optional(message: Any, field: str, default: Any) -> Any:
    return getattr(message, field) if message.HasField(field) else default


def _rename_explain(value: Any) -> Any:
    """REST's `explain` object is the proto's `explanation` (the seed's name)."""
    if isinstance(value, dict):
        return {
            ("explanation" if k == "explain" and isinstance(v, dict) else k): _rename_explain(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rename_explain(v) for v in value]
    return value


def to_proto(struct: msgspec.Struct, message: Any) -> Any:
    """A response struct merged into its proto message: the field names are the same by design."""
    return json_format.ParseDict(_rename_explain(msgspec.to_builtins(struct)), message)


class CryptoServicer(pb2_grpc.CryptoServiceServicer):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.active_streams = 0  # StreamPrices handlers running now (tests check none is leaked)
        self.streams_by_caller: dict[str, int] = {}
        # REST's budget (CRYPTO_API_RATE_LIMIT per minute and key/address); HealthCheck is not counted.
        self.limiter = services.limiter

    def _key_identity(self, context: grpc.aio.ServicerContext) -> tuple[str | None, str]:
        """(the presented key, the budget the call spends from: its valid key's, else its peer's)."""
        metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
        key = presented_key(metadata)
        identity = self.services.keyring.identify(key) if key else None
        who = f"key:{identity.name}" if identity is not None else f"ip:{peer_host(context.peer())}"
        return key, who

    async def charge(self, context: grpc.aio.ServicerContext, who: str, cost: int = 1) -> None:
        """Spend `cost` units of `who`'s window, or end the call with RESOURCE_EXHAUSTED."""
        budget = self.limiter.charge(who, cost)
        if not budget.allowed:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {budget.limit} requests per minute reached; "
                f"retry in {budget.retry_after_s} s",
                trailing_metadata=(("retry-after", str(budget.retry_after_s)),),
            )

    async def authorize(self, context: grpc.aio.ServicerContext, role: str) -> str:
        """`serving.core.auth`'s decision for the call's key, charged to the caller's budget whether it
        is allowed or refused; returns the identity the call spends from."""
        key, who = self._key_identity(context)
        await self.charge(context, who)
        decision = self.services.keyring.decide(key, role)
        if decision.forbidden:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.message)
        if not decision.allowed:
            message = decision.message
            if decision.denial is Denial.KEY_REQUIRED:
                message = f"{message} (x-api-key metadata)"
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        return who

    @unary()
    async def GetOHLCV(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        answer = await asyncio.to_thread(
            operations.ohlcv,
            self.services,
            request.symbol,
            _optional(request, "exchange", "binance"),
            _optional(request, "timeframe", "1h"),
            _optional(request, "limit", 200),
        )
        # Bars built directly: json_format over a few hundred rows cost ~10x the rest of the answer.
        head = msgspec.to_builtins(answer)
        head.pop("data")
        message = json_format.ParseDict(head, pb2.OHLCVResponse())
        message.data.extend(pb2.Candle(**msgspec.structs.asdict(row)) for row in answer.data)
        return message

    @unary()
    async def GenerateSignal(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        fields = {"symbol": request.symbol, "explain": request.explain}
        for name in ("horizon_min", "exchange", "timeframe", "limit"):
            fields[name] = _optional(request, name, None)
        answer = await operations.signal(
            self.services, operations.parse_request(schemas.SignalRequest, fields)
        )
        return to_proto(answer, pb2.SignalResponse())

    @unary()
    async def GenerateMLPrediction(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        fields = {"symbol": request.symbol}
        for name in ("exchange", "timeframe", "limit", "include_heuristic"):
            fields[name] = _optional(request, name, None)
        answer = await operations.ml_signal(
            self.services, operations.parse_request(schemas.MLSignalRequest, fields)
        )
        return to_proto(answer, pb2.MLPredictionResponse())

    @unary()
    async def CompareSignals(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        answer = await asyncio.to_thread(
            operations.compare,
            self.services,
            request.symbol,
            _optional(request, "exchange", "binance"),
            _optional(request, "timeframe", "1h"),
            _optional(request, "horizon_min", 60),
        )
        return to_proto(answer, pb2.CompareResponse())

    @unary(role=None)
    async def HealthCheck(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        key, _ = self._key_identity(context)
        detailed = bool(key) and self.services.keyring.identify(key) is not None
        return pb2.HealthResponse(**operations.health_report(self.services, detailed))

    @unary(role="admin")
    async def ReloadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        answer = await asyncio.to_thread(operations.reload_model, self.services)
        return to_proto(answer, pb2.ReloadResponse())

    def _stream_arguments(self, request: Any) -> tuple[list[str], str, float]:
        svc = self.services
        if not request.symbols:
            raise InvalidInputError([{"key": "symbols", "message": "at least one symbol is required"}])
        if len(request.symbols) > svc.settings.max_batch:
            limit = svc.settings.max_batch
            raise InvalidInputError([{"key": "symbols", "message": f"at most {limit} per stream"}])
        interval = request.interval or DEFAULT_INTERVAL_S
        if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
            message = f"must be between {MIN_INTERVAL_S} and {MAX_INTERVAL_S} seconds, got {interval}"
            raise InvalidInputError([{"key": "interval", "message": message}])
        exchange = _optional(request, "exchange", "binance")
        timeframe = _optional(request, "timeframe", "1h")
        symbols = []
        for symbol in request.symbols:
            try:
                unified, _, timeframe = svc.validate_market(symbol, exchange, timeframe)
            except InvalidInputError as exc:  # the request field is `symbols`
                errors = [{**e, "key": "symbols"} if e["key"] == "symbol" else e for e in exc.errors]
                raise InvalidInputError(errors) from None
            symbols.append(unified)
        return symbols, timeframe, interval

    async def StreamPrices(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Every `interval` seconds, the newest closed bar of each symbol. On client cancel grpc.aio
        cancels this handler's task: the CancelledError raised at the await ends the generator, and
        `finally` runs, so nothing outlives the call."""
        who = await self.authorize(context, "reader")
        settings = self.services.settings
        if self.active_streams >= settings.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active_streams} price streams are running, the server's maximum; retry later",
            )
        if self.streams_by_caller.get(who, 0) >= settings.max_streams_per_caller:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {settings.max_streams_per_caller} concurrent price streams per caller",
            )
        self.active_streams += 1
        self.streams_by_caller[who] = self.streams_by_caller.get(who, 0) + 1
        try:
            symbols, timeframe, interval = self._stream_arguments(request)
            sequence = 0
            while True:
                sequence += 1
                await self.charge(context, who, len(symbols))  # one unit per message of this round
                for symbol in symbols:
                    bars = await asyncio.to_thread(self.services.market.bars, symbol, timeframe, 1)
                    if bars.frame.height == 0:
                        raise NotEnoughHistoryError(f"{symbol} {timeframe}: no closed bars are available")
                    ts, _, _, _, close, volume = bars.frame.row(-1)
                    yield pb2.PriceUpdate(
                        symbol=symbol,
                        price=close,
                        volume=volume,
                        ts=ts,
                        timestamp=iso_ms(ts),
                        source=bars.source,
                        sequence=sequence,
                    )
                await asyncio.sleep(interval)
        except Exception as exc:
            await abort_for(context, exc)
        finally:
            self.active_streams -= 1
            left = self.streams_by_caller.pop(who, 1) - 1
            if left > 0:
                self.streams_by_caller[who] = left


@dataclass
class RunningServer:
    server: grpc.aio.Server
    servicer: CryptoServicer
    health: health_aio.HealthServicer
    port: int


class _ModelHealth:
    """Keeps `crypto.CryptoService`'s health status in step with the model store.

    ModelStore calls `on_change` from whatever thread loaded the model (the poller's worker thread,
    an admin reload); the health servicer is asyncio, so the update is handed to the loop."""

    def __init__(self, services: Services, health: health_aio.HealthServicer) -> None:
        self.services, self.health = services, health
        self.loop = asyncio.get_running_loop()
        self.previous = services.models.on_change
        self.tasks: set[asyncio.Task[None]] = set()

    async def update(self) -> None:
        status = _SERVING if self.services.models.current is not None else _NOT_SERVING
        await self.health.set(SERVICE_NAME, status)

    def _schedule(self) -> None:
        task = self.loop.create_task(self.update())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_change(self, model: Any) -> None:
        if self.previous is not None:
            self.previous(model)
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._schedule)

    def __enter__(self) -> _ModelHealth:
        self.services.models.on_change = self.on_change
        return self

    def __exit__(self, *_: object) -> None:
        self.services.models.on_change = self.previous


@asynccontextmanager
async def running_server(
    services: Services,
    host: str = "127.0.0.1",
    port: int = 50051,
    *,
    start_model_poller: bool = True,
    grace_s: float = 5.0,
) -> AsyncIterator[RunningServer]:
    """Serve until the block exits, then stop gracefully: health turns NOT_SERVING, in-flight calls get
    `grace_s` seconds, the poller stops and the history is drained. `port=0` picks a free port."""
    server = grpc.aio.server()
    servicer = CryptoServicer(services)
    pb2_grpc.add_CryptoServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    async with serving_lifetime(services, start_model_poller):
        with _ModelHealth(services, health) as model_health:
            await health.set("", _SERVING)
            await model_health.update()
            await server.start()
            log.info("%s listening on %s:%d", SERVICE_NAME, host, bound)
            try:
                yield RunningServer(server, servicer, health, bound)
            finally:
                await health.enter_graceful_shutdown()
                await server.stop(grace_s)
