"""What the handlers work with, built once per app (tests inject their own pieces through create_app)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.params import Dependency

from crypto_platform.lib.market.symbols import InvalidSymbolError, normalize_symbol
from crypto_platform.lib.market.timeframes import UnsupportedTimeframeError, validate_timeframe
from serving.api.history import History
from serving.api.market import MarketService
from serving.api.metrics import Counters
from serving.api.model_store import ModelStore
from serving.api.scoring import FeatureCache
from serving.api.security import KeyRing
from serving.api.settings import ServingSettings


@dataclass
class Services:
    settings: ServingSettings
    market: MarketService
    features: FeatureCache
    history: History
    models: ModelStore
    counters: Counters
    keyring: KeyRing
    started_at: float = field(default_factory=time.time)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(normalize_symbol(s) for s in self.settings.platform.symbols)

    def validate_market(self, symbol: str, exchange: str, timeframe: str) -> tuple[str, str, str]:
        """Whitelisted (symbol, exchange, timeframe), or a 400 naming every bad field and why."""
        errors = []
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
            raise ValidationException(
                detail="Validation failed",
                extra=errors,
            )
        return unified, ex, tf


def provide_services(state: State) -> Services:
    return state.services


# Handlers declare `svc: Svc`. Validation is skipped: the value comes from our own state, and Litestar
# would otherwise try to convert the Services dataclass (locks and all) field by field.
Svc = Annotated[Services, Dependency(skip_validation=True)]
