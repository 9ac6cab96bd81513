"""Closed OHLCV bars and the features computed from them."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter

from crypto_platform.lib.model.windows import FEATURE_BARS
from serving.api import operations, schemas
from serving.api.services import Svc

SymbolQ = Annotated[str, Parameter(min_length=1, max_length=32, description="e.g. BTC/USDT")]
ExchangeQ = Annotated[str, Parameter(min_length=1, max_length=32)]
TimeframeQ = Annotated[str, Parameter(min_length=1, max_length=8)]


class MarketController(Controller):
    path = "/crypto"
    tags = ("market",)

    @get("/ohlcv", sync_to_thread=True)
    def ohlcv(
        self,
        svc: Svc,
        symbol: SymbolQ,
        exchange: ExchangeQ = "binance",
        timeframe: TimeframeQ = "1h",
        limit: Annotated[int, Parameter(ge=1, le=schemas.MAX_LIMIT)] = 200,
    ) -> schemas.OhlcvResponse:
        """The last `limit` closed bars (the candle still open is never included)."""
        return operations.ohlcv(svc, symbol, exchange, timeframe, limit)

    @get("/features", sync_to_thread=True)
    def features(
        self,
        svc: Svc,
        symbol: SymbolQ,
        exchange: ExchangeQ = "binance",
        timeframe: TimeframeQ = "1h",
        n: Annotated[int, Parameter(ge=1, le=FEATURE_BARS)] = 48,
    ) -> schemas.FeaturesResponse:
        """Features of the last `n` bars, as the API computes them (lib.features.compute_features);
        null where a window is incomplete (warm-up or a hole in the bars)."""
        return operations.features(svc, symbol, exchange, timeframe, n)
