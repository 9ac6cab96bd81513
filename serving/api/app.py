"""`create_app(settings, ...)`: the Litestar risk API, its web UI and GraphQL at /graphql.

Everything stateful (market data, feature cache, history DB, model store, key ring) is built by
`serving.api.services.build_services` (shared with the gRPC server) or
injected by the caller, so tests run the real app against their own data dir, DB and MLflow server.
Start-up launches the model poller and waits up to `model_startup_wait_s` for its first attempt; if
MLflow is unreachable the app serves the heuristic endpoints, /ready answers 503, and the poller keeps
trying in the background.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.prometheus import PrometheusController
from litestar.static_files import create_static_files_router

from crypto_platform.lib.market.client import ExchangeUnavailableError, UnknownSymbolError
from crypto_platform.lib.storage import ObjectStore
from serving.api.controllers.evidence import EvidenceController
from serving.api.controllers.market import MarketController
from serving.api.controllers.ml import MLController, ModelController
from serving.api.controllers.signals import SignalsController
from serving.api.controllers.system import UI_DIR, SummaryController, SystemController
from serving.api.freshness import freshness_lifetime
from serving.api.json_depth import JsonDepthMiddleware
from serving.api.metrics import GC_TIMER
from serving.api.ratelimit import UNMETERED_PATHS, RateLimitMiddleware
from serving.api.request_metrics import RequestMetricsMiddleware
from serving.api.scoring import NotEnoughHistoryError
from serving.api.security import ReaderGateMiddleware
from serving.api.security_headers import SecurityHeadersMiddleware
from serving.api.services import (
    InvalidInputError,
    Services,
    build_services,
    provide_services,
    serving_lifetime,
)
from serving.api.settings import ServingSettings, get_serving_settings
from serving.core.auth import KeyRing
from serving.core.gc_pauses import freeze_startup_heap
from serving.core.history import History
from serving.core.market import LiveLoader, MarketService, MarketUnavailableError
from serving.core.model_store import ModelStore, ModelUnavailableError
from serving.core.redaction import install_log_redaction, redact
from serving.graphql.controller import graphql_controller

log = logging.getLogger(__name__)

# The largest legitimate body (a batch of 16 symbols, a GraphQL document within its token limit) is a
# few KB; Litestar's default (10 MB) let one request make the process parse and echo megabytes.
MAX_BODY_BYTES = 256 * 1024


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


def _error(status: int, kind: str) -> Callable[[Request, Exception], Response]:
    def handler(_: Request, exc: Exception) -> Response:
        # Domain errors carry URLs (MLflow's, the exchange's): their credentials never reach the body.
        return Response({"status_code": status, "error": kind, "detail": redact(exc)}, status_code=status)

    return handler


def _unknown_symbol(_: Request, exc: Exception) -> Response:
    message = redact(exc)
    body = {
        "status_code": 400,
        "detail": f"Validation failed: symbol: {message}",
        "extra": [{"key": "symbol", "message": message}],
    }
    return Response(body, status_code=400)


_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def _validation_error(_: Request, exc: ValidationException) -> Response:
    """Litestar's 400 body, with the field named even where msgspec reports a missing one on `data`."""
    extra = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict) and item.get("key") == "data":
            found = _MISSING_FIELD.search(str(item.get("message", "")))
            item = {**item, "key": found.group(1)} if found else item
        extra.append(item)
    detail = exc.detail
    if extra and all(isinstance(i, dict) for i in extra):
        detail = f"{exc.detail}: " + "; ".join(f"{i.get('key')}: {i.get('message')}" for i in extra)
    body = {"status_code": 400, "detail": redact(detail), "extra": extra or exc.extra}
    return Response(body, status_code=400)


def _invalid_input(request: Request, exc: InvalidInputError) -> Response:
    """Input the operations rejected: the same 400 body as Litestar's own validation."""
    return _validation_error(request, ValidationException(detail="Validation failed", extra=exc.errors))


def create_app(
    settings: ServingSettings | None = None,
    *,
    store: ObjectStore | None = None,
    market: MarketService | None = None,
    history: History | None = None,
    model_store: ModelStore | None = None,
    now_ms: Callable[[], int] | None = None,
    live_loader: LiveLoader | None = None,
    start_model_poller: bool = True,
    freeze_heap: bool = False,
) -> Litestar:
    """The API. Every stateful piece can be injected (tests); what is not is built from `settings`:
    the object store at `platform.data_location`, the history DB at `history_url`, the model store on
    `platform.mlflow_tracking_uri`. `now_ms` freezes the market clock (replays, tests);
    `start_model_poller=False` leaves the model store as given (no MLflow contact at all).
    `freeze_heap`: once start-up is done (the first model load awaited), freeze what is alive out of
    the garbage collector's generations (`serving.core.gc_pauses`); for a server process, not for apps
    built in a test process."""
    settings = settings or get_serving_settings()
    services = build_services(
        settings,
        store=store,
        market=market,
        history=history,
        model_store=model_store,
        now_ms=now_ms,
        live_loader=live_loader,
    )
    keyring = services.keyring

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Litestar sets up its logging handlers as the app starts, after uvicorn's: both get the
        # redacting filter here, before the poller logs its first line.
        install_log_redaction()
        # The freshness exporter (pipeline gauges for Grafana / alerts) runs with the poller: tests that
        # build apps without background work turn both off together.
        async with (
            serving_lifetime(services, start_model_poller),
            freshness_lifetime(services, start_model_poller),
        ):
            if freeze_heap:
                frozen = freeze_startup_heap()
                log.info("start-up heap frozen: %d objects out of the collector's generations", frozen)
            GC_TIMER.start()  # once per process: a second app's start is a no-op
            yield

    # async: Litestar runs a sync before_request hook in a worker thread, a hop per request.
    async def count_request(_: Request) -> None:
        services.counters.request()

    v1 = Router(
        path="/v1",
        route_handlers=[
            MarketController,
            SignalsController,
            MLController,
            ModelController,
            SummaryController,
            EvidenceController,
        ],
        # the reader rule as middleware, not a guard (see ReaderGateMiddleware: a guard costs a handler copy)
        middleware=[ReaderGateMiddleware(keyring)],
    )
    middleware: list[Any] = [
        SecurityHeadersMiddleware(),
        RequestMetricsMiddleware(app_name="crypto_risk_api", exclude="^/metrics$"),
    ]
    if services.limiter.enabled:
        middleware.append(RateLimitMiddleware(services.limiter, keyring, UNMETERED_PATHS))
    # After the rate limit: a refused caller's body is not even read.
    middleware.append(JsonDepthMiddleware(max_body_bytes=MAX_BODY_BYTES))
    cors = None
    if settings.cors_origins:
        cors = CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_headers=["x-api-key", "authorization", "content-type"],
            allow_methods=["GET", "POST", "OPTIONS"],
        )
    return Litestar(
        route_handlers=[
            SystemController,
            MetricsController,
            v1,
            # Not under /v1's guards: GraphQL answers auth failures as GraphQL errors, per field
            # (serving.graphql.errors.authorize applies the same rules), and the rate limit covers it.
            graphql_controller(),
            create_static_files_router(path="/ui", directories=[UI_DIR], include_in_schema=False),
        ],
        dependencies={"svc": Provide(provide_services, sync_to_thread=False)},
        state=_state(services, keyring),
        lifespan=[lifespan],
        before_request=count_request,
        middleware=middleware,
        cors_config=cors,
        request_max_body_size=MAX_BODY_BYTES,
        exception_handlers={
            ModelUnavailableError: _error(503, "model_unavailable"),
            NotEnoughHistoryError: _error(503, "not_enough_history"),
            MarketUnavailableError: _error(502, "market_unavailable"),
            ExchangeUnavailableError: _error(502, "exchange_unavailable"),
            UnknownSymbolError: _unknown_symbol,
            InvalidInputError: _invalid_input,
            ValidationException: _validation_error,
        },
        openapi_config=OpenAPIConfig(
            title="Crypto risk API",
            version="0.1.0",
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
            description="Heuristic and LSTM volatility signals over stored and live crypto market data.",
        ),
    )


def _state(services: Services, keyring: KeyRing) -> State:
    return State({"services": services, "keyring": keyring})


def create_app_from_env() -> Litestar:
    """uvicorn factory: settings from the environment (logs are redacted from start-up on); the
    process's start-up heap is frozen once the app has started."""
    install_log_redaction()
    return create_app(get_serving_settings(), freeze_heap=True)
