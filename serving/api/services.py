"""What every interface works with, built once per process from settings (`build_services`).

The REST controllers, the GraphQL schema and the gRPC servicer all call `serving.api.operations` with
the same `Services`; tests inject their own pieces (data dir, history DB, model store, clock) through
`build_services` / `create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated

from litestar.datastructures import State
from litestar.params import Dependency

from crypto_platform.lib.market.symbols import InvalidSymbolError, normalize_symbol
from crypto_platform.lib.market.timeframes import UnsupportedTimeframeError, validate_timeframe
from crypto_platform.lib.storage import ObjectStore, open_store
from serving.api.encoded import EncodedAnswers
from serving.api.metrics import (
    HISTORY_DROPPED,
    HISTORY_WRITE_ERRORS,
    Counters,
    model_changed,
    watch_history_queue,
)
from serving.api.schemas import MAX_EXCHANGE_CHARS, MAX_SYMBOL_CHARS, MAX_TIMEFRAME_CHARS
from serving.api.scoring import FeatureCache
from serving.api.settings import ServingSettings
from serving.core.auth import KeyRing
from serving.core.history import History
from serving.core.market import LiveLoader, MarketService
from serving.core.model_store import ModelStore
from serving.core.ratelimit import MinuteLimiter
from serving.core.redaction import register_secret, register_url_secrets

log = logging.getLogger(__name__)
MAX_VALID_MARKETS = 1024


class InvalidInputError(ValueError):
    """Input that fails validation; `errors` names every bad field: [{"key": field, "message": why}].

    Interface-neutral: REST answers 400 with the errors in `extra`, GraphQL a BAD_USER_INPUT error,
    gRPC INVALID_ARGUMENT. Field names are the snake_case request fields.
    """

    def __init__(self, errors: list[Mapping[str, str]]) -> None:
        self.errors = [{"key": str(e["key"]), "message": str(e["message"])} for e in errors]
        super().__init__("; ".join(f"{e['key']}: {e['message']}" for e in self.errors))

    @property
    def fields(self) -> list[str]:
        return [e["key"] for e in self.errors]


@dataclass
class Services:
    settings: ServingSettings
    market: MarketService
    features: FeatureCache
    history: History
    models: ModelStore
    counters: Counters
    keyring: KeyRing
    limiter: MinuteLimiter  # the process's one request budget (REST, GraphQL and gRPC spend from it)
    started_at: float = field(default_factory=time.time)
    answers: EncodedAnswers = field(default_factory=EncodedAnswers)  # REST's pre-encoded ml-signal bodies
    # Inputs already found valid → their normalised form: clients repeat the same few, and normalising
    # and checking them was a measurable share of a cached ml-signal request.
    _valid_markets: dict[tuple[str, str, str], tuple[str, str, str]] = field(default_factory=dict, repr=False)

    @cached_property
    def symbols(self) -> tuple[str, ...]:
        return tuple(normalize_symbol(s) for s in self.settings.platform.symbols)

    def validate_market(self, symbol: str, exchange: str, timeframe: str) -> tuple[str, str, str]:
        """Whitelisted (symbol, exchange, timeframe), or InvalidInputError naming every bad field and why.
        Lengths are checked first, with REST's bounds, and an over-long value is never echoed back."""
        key = (symbol, exchange, timeframe)
        valid = self._valid_markets.get(key)
        if valid is None:
            valid = self._validate_market(symbol, exchange, timeframe)
            if len(self._valid_markets) >= MAX_VALID_MARKETS:  # spellings of served markets: few
                self._valid_markets.clear()
            self._valid_markets[key] = valid
        return valid

    def _validate_market(self, symbol: str, exchange: str, timeframe: str) -> tuple[str, str, str]:
        errors = [
            {"key": key, "message": f"must be 1 to {most} characters, got {len(value)}"}
            for key, value, most in (
                ("symbol", symbol, MAX_SYMBOL_CHARS),
                ("exchange", exchange, MAX_EXCHANGE_CHARS),
                ("timeframe", timeframe, MAX_TIMEFRAME_CHARS),
            )
            if not 1 <= len(value) <= most
        ]
        if errors:
            raise InvalidInputError(errors)
        unified = symbol
        try:
            unified = normalize_symbol(symbol)
            if unified not in self.symbols:
                errors.append(
                    {
                        "key": "symbol",
                        "message": f"{unified} is not served; served: {', '.join(self.symbols)}",
                    }
                )
        except InvalidSymbolError as exc:
            errors.append({"key": "symbol", "message": str(exc)})
        ex, served = exchange.strip().lower(), self.settings.platform.exchange
        if ex != served:
            errors.append(
                {
                    "key": "exchange",
                    "message": f"exchange {exchange!r} is not served; use {served!r}",
                }
            )
        tf = timeframe
        try:
            tf = validate_timeframe(timeframe)
        except UnsupportedTimeframeError as exc:
            errors.append({"key": "timeframe", "message": str(exc)})
        if errors:
            raise InvalidInputError(errors)
        return unified, ex, tf


def build_services(
    settings: ServingSettings,
    *,
    store: ObjectStore | None = None,
    market: MarketService | None = None,
    history: History | None = None,
    model_store: ModelStore | None = None,
    now_ms: Callable[[], int] | None = None,
    live_loader: LiveLoader | None = None,
) -> Services:
    """Everything stateful, built from `settings` unless injected: the object store at
    `platform.data_location`, the history DB at `history_url`, the model store on
    `platform.mlflow_tracking_uri`. `now_ms` freezes the market clock (replays, tests)."""
    platform = settings.platform
    register_configured_secrets(settings)
    if market is None:
        if store is None:
            store = open_store(platform.data_location, platform.s3_endpoint_url)
        market = MarketService(
            platform,
            store,
            settings.market_cache_ttl_s,
            settings.max_stale_bars,
            now_ms=now_ms,
            live_loader=live_loader,
        )
    history = history or History(
        settings.history_url,
        on_write_error=HISTORY_WRITE_ERRORS.inc,
        queue_max=settings.history_queue_max,
        enqueue_wait_s=settings.history_enqueue_wait_s,
        on_drop=HISTORY_DROPPED.inc,
    )
    watch_history_queue(history)
    models = model_store or ModelStore(
        platform.mlflow_tracking_uri, settings.model_name, settings.model_alias, settings.model_poll_s
    )
    models.on_change = model_changed
    model_changed(models.current)
    keyring = KeyRing(settings.api_keys, settings.key_pepper, settings.require_key)
    limiter = MinuteLimiter(settings.rate_limit_per_minute)
    return Services(settings, market, FeatureCache(market), history, models, Counters(), keyring, limiter)


def register_configured_secrets(settings: ServingSettings) -> None:
    """Every credential this process was configured with, masked by value in whatever it lets go
    (serving.core.redaction): the API keys, the pepper, the admin key, the userinfo of each URL."""
    platform = settings.platform
    register_secret(settings.key_pepper, platform.admin_api_key, *(spec.key for spec in settings.api_keys))
    register_url_secrets(
        platform.mlflow_tracking_uri,
        platform.exchange_api_url,
        platform.s3_endpoint_url,
        platform.serving_url,
        settings.history_url,
    )


@asynccontextmanager
async def serving_lifetime(services: Services, start_model_poller: bool = True) -> AsyncIterator[None]:
    """The model poller for the lifetime of a server (REST or gRPC), then the history drained.

    Start-up waits up to `model_startup_wait_s` for the first load attempt; if MLflow is unreachable
    the server still starts (model endpoints answer "unavailable") and the poller keeps trying.
    """
    models = services.models
    task = None
    if start_model_poller:
        first = asyncio.Event()
        task = asyncio.create_task(models.run_poller(first))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first.wait(), timeout=services.settings.model_startup_wait_s)
        if models.current is None:
            log.warning("starting without a model: %s (retrying in the background)", models.last_error)
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        services.history.close()


def provide_services(state: State) -> Services:
    return state.services


# Handlers declare `svc: Svc`. Validation is skipped: the value comes from our own state, and Litestar
# would otherwise try to convert the Services dataclass (locks and all) field by field.
Svc = Annotated[Services, Dependency(skip_validation=True)]
