"""Closed OHLCV bars and the features computed from them."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter

from serving.api import schemas
from serving.api.scoring import FEATURE_BARS, features_rows, iso_ms
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
        symbol, exchange, timeframe = svc.validate_market(symbol, exchange, timeframe)
        bars = svc.market.bars(symbol, timeframe, limit)
        frame = bars.frame
        data = [
            schemas.OhlcvRow(ts=ts, open=o, high=h, low=lo, close=c, volume=v, time=iso_ms(ts))
            for ts, o, h, lo, c, v in frame.iter_rows()
        ]
        return schemas.OhlcvResponse(
            symbol=symbol,
            exchange=exchange,
            timeframe=timeframe,
            limit=limit,
            rows=len(data),
            source=bars.source,
            origin=bars.origin,
            data=data,
            warnings=list(bars.warnings) or None,
        )

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
        symbol, exchange, timeframe = svc.validate_market(symbol, exchange, timeframe)
        snap = svc.features.snapshot(symbol, timeframe)
        columns, rows = features_rows(snap, n)
        return schemas.FeaturesResponse(
            symbol=symbol,
            timeframe=timeframe,
            source=snap.bars.source,
            origin=snap.bars.origin,
            columns=columns,
            rows=rows,
        )
