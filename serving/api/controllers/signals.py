"""The heuristic risk signal: single, batch, history tail, and side by side with the ML forecast."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import Parameter

from serving.api import schemas
from serving.api.controllers.market import ExchangeQ, SymbolQ, TimeframeQ
from serving.api.model_store import ModelUnavailableError
from serving.api.scoring import (
    FeatureSnapshot,
    NotEnoughHistoryError,
    check_model_timeframe,
    iso_now,
    ml_prediction,
    signal_response,
)
from serving.api.services import Svc


def serve_signal(svc: Svc, symbol: str, exchange: str, timeframe: str, horizon_min: int, explain: bool):
    """Validate, compute (blocking on a cache miss) and record one signal."""
    symbol, exchange, timeframe = svc.validate_market(symbol, exchange, timeframe)
    return answer_signal(svc, svc.features.snapshot(symbol, timeframe), exchange, horizon_min, explain)


def answer_signal(
    svc: Svc, snap: FeatureSnapshot, exchange: str, horizon_min: int, explain: bool
) -> schemas.SignalResponse:
    symbol, timeframe = snap.bars.symbol, snap.bars.timeframe
    response = signal_response(snap, exchange, horizon_min, explain)
    svc.history.record_signal(
        {
            "symbol": symbol,
            "exchange": exchange,
            "timeframe": timeframe,
            "horizon_min": horizon_min,
            "risk_score": response.risk_score,
            "nowcast_ret": response.nowcast_ret,
            "vol_regime": response.vol_regime,
            "bar_ts": snap.last_ts,
            "source": response.source,
        },
        {**_plain(response), "recorded_at": iso_now()},
    )
    svc.counters.signal(symbol)
    return response


def _plain(struct: msgspec.Struct) -> dict:
    return msgspec.to_builtins(struct)


class SignalsController(Controller):
    path = "/crypto"
    tags = ("signals",)

    @post("/signal", status_code=200)
    async def signal(self, svc: Svc, data: schemas.SignalRequest) -> schemas.SignalResponse:
        """Heuristic risk signal at the newest closed bar. `limit` is accepted for compatibility: the
        signal depends only on the last 48 bars, so every limit ≥ 48 gives the same answer."""
        symbol, exchange, timeframe = svc.validate_market(data.symbol, data.exchange, data.timeframe)
        # Async on purpose: with the bar's features cached the answer takes microseconds, and only a
        # cache miss (store read, exchange call, feature computation) goes to a worker thread.
        snap = await svc.features.snapshot_async(symbol, timeframe)
        return answer_signal(svc, snap, exchange, data.horizon_min, data.explain)

    @post("/signal/batch", status_code=200, sync_to_thread=True)
    def batch(self, svc: Svc, data: schemas.SignalBatchRequest) -> schemas.SignalBatchResponse:
        """Signals for several symbols; per-symbol failures are listed in `errors`, not fatal."""
        if len(data.symbols) > svc.settings.max_batch:
            raise ValidationException(
                detail="Validation failed",
                extra=[{"key": "symbols", "message": f"at most {svc.settings.max_batch} per batch"}],
            )
        results, errors = [], []
        for symbol in data.symbols:
            try:
                results.append(
                    serve_signal(svc, symbol, data.exchange, data.timeframe, data.horizon_min, data.explain)
                )
            except HTTPException as exc:
                detail = exc.detail
                if isinstance(exc.extra, list) and exc.extra:
                    detail = "; ".join(f"{e.get('key')}: {e.get('message')}" for e in exc.extra)
                errors.append(schemas.BatchError(symbol=symbol, status_code=exc.status_code, detail=detail))
            except NotEnoughHistoryError as exc:
                errors.append(schemas.BatchError(symbol=symbol, status_code=503, detail=str(exc)))
        return schemas.SignalBatchResponse(count=len(results), results=results, errors=errors)

    @get("/signals/tail", sync_to_thread=True)
    def tail(
        self, svc: Svc, n: Annotated[int, Parameter(ge=1, le=schemas.MAX_TAIL)] = 50
    ) -> schemas.TailResponse:
        """The last `n` signals served, newest first."""
        items = svc.history.tail_signals(n)
        return schemas.TailResponse(count=len(items), items=items)

    @get("/signals/compare", sync_to_thread=True)
    def compare(
        self,
        svc: Svc,
        symbol: SymbolQ,
        exchange: ExchangeQ = "binance",
        timeframe: TimeframeQ = "1h",
        horizon_min: Annotated[int, Parameter(ge=1, le=10_080)] = 60,
    ) -> schemas.CompareResponse:
        """The heuristic signal and the ML forecast for the same bar (ML null with the reason when it
        is unavailable). Not recorded in the history: it is a view of the two, not a served signal."""
        symbol, exchange, timeframe = svc.validate_market(symbol, exchange, timeframe)
        snap = svc.features.snapshot(symbol, timeframe)
        heuristic = signal_response(snap, exchange, horizon_min, explain=False)
        model = svc.models.current
        ml = ml_error = None
        if model is None:
            ml_error = str(ModelUnavailableError(svc.models.last_error or "no model loaded"))
        else:
            try:
                check_model_timeframe(model, timeframe)
                ml, _ = ml_prediction(model, snap)
            except NotEnoughHistoryError as exc:
                ml_error = str(exc)
        return schemas.CompareResponse(
            symbol=symbol,
            timestamp=heuristic.timestamp,
            source=heuristic.source,
            heuristic=heuristic,
            ml_available=ml is not None,
            ml=ml,
            model_version=model.version if model and ml else None,
            ml_error=ml_error,
            regimes_agree=(ml.volatility_regime == heuristic.vol_regime) if ml else None,
        )
