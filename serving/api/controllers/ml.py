"""The LSTM (or baseline champion) volatility forecast, its explanation, and the served model."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import Parameter

from serving.api import schemas
from serving.api.controllers.signals import _plain
from serving.api.schemas import UNAVAILABLE
from serving.api.scoring import (
    check_model_timeframe,
    iso_ms,
    iso_now,
    ml_prediction,
    occlusion_attributions,
    signal_response,
)
from serving.api.security import admin_guard
from serving.api.services import Svc


class MLController(Controller):
    path = "/crypto"
    tags = ("ml",)

    @post("/ml-signal", status_code=200, responses=UNAVAILABLE)
    async def ml_signal(self, svc: Svc, data: schemas.MLSignalRequest) -> schemas.MLSignalResponse:
        """Forecast of the next 24 bars' realized volatility at the newest closed bar. 503 while no
        model is loaded."""
        symbol, exchange, timeframe = svc.validate_market(data.symbol, data.exchange, data.timeframe)
        model = svc.models.require()
        check_model_timeframe(model, timeframe)
        # Cached features inline, a miss in a worker thread (see SignalsController.signal); the forecast
        # is memoised per (model version, bar), and a fresh one (~1-2 ms of numpy) runs inline: a thread
        # hop would cost about as much as it saves.
        snap = await svc.features.snapshot_async(symbol, timeframe)
        prediction, seconds = ml_prediction(model, snap)
        heuristic = None
        if data.include_heuristic:
            # Part of this prediction's record, not a separately served signal.
            heuristic = signal_response(snap, exchange, 60, explain=False)
        response = schemas.MLSignalResponse(
            symbol=symbol,
            method="ml",
            timestamp=iso_now(),
            model_version=model.version,
            ml_prediction=prediction,
            exchange=exchange,
            timeframe=timeframe,
            source=snap.bars.source,
            heuristic_comparison=heuristic,
        )
        svc.history.record_prediction(
            {
                "symbol": symbol,
                "exchange": exchange,
                "timeframe": timeframe,
                "model_version": model.version,
                "predicted_volatility": prediction.predicted_volatility,
                "current_volatility": prediction.current_volatility,
                "volatility_regime": prediction.volatility_regime,
                "bar_ts": snap.last_ts,
                "source": response.source,
            },
            _plain(response),
        )
        svc.counters.prediction(symbol, model.version, seconds)
        return response

    @get("/ml-predictions/tail", sync_to_thread=True)
    def tail(
        self, svc: Svc, n: Annotated[int, Parameter(ge=1, le=schemas.MAX_TAIL)] = 50
    ) -> schemas.TailResponse:
        """The last `n` ML predictions served, newest first."""
        items = svc.history.tail_predictions(n)
        return schemas.TailResponse(count=len(items), items=items)

    @post("/ml-explain", status_code=200, sync_to_thread=True, responses=UNAVAILABLE)
    def explain(self, svc: Svc, data: schemas.MLExplainRequest) -> schemas.MLExplainResponse:
        """Occlusion attribution of the current forecast to each input feature: the forecast minus the
        forecast with that feature's 48-bar history set to its training mean (window mean for models
        without a normaliser). Positive: the feature's actual history pushes the forecast up."""
        symbol, _, timeframe = svc.validate_market(data.symbol, data.exchange, data.timeframe)
        model = svc.models.require()
        check_model_timeframe(model, timeframe)
        snap = svc.features.snapshot(symbol, timeframe)
        base, reference, rows = occlusion_attributions(model, snap)
        return schemas.MLExplainResponse(
            symbol=symbol,
            model_version=model.version,
            method="occlusion",
            reference=reference,
            predicted_volatility=base,
            bar_timestamp=iso_ms(snap.last_ts),
            source=snap.bars.source,
            attributions=rows,
        )


class ModelController(Controller):
    path = "/ml/model"
    tags = ("ml",)

    @get("/info", sync_to_thread=False)
    def info(self, svc: Svc) -> schemas.ModelInfo:
        model = svc.models.current
        if model is None:
            return schemas.ModelInfo(
                model_loaded=False,
                model_name=svc.models.model_name,
                alias=svc.models.alias,
                last_error=svc.models.last_error,
            )
        return schemas.ModelInfo(
            model_loaded=True,
            model_name=model.name,
            alias=model.alias,
            model_version=model.version,
            model_family=model.family,
            run_id=model.run_id,
            load_time=iso_ms(int(model.load_time * 1000)),
            metrics=model.metrics,
            sequence_length=model.sequence_length,
            feature_columns=list(model.feature_columns),
            timeframe=model.timeframe,
            last_error=svc.models.last_error,
        )

    @post("/reload", status_code=200, sync_to_thread=True, guards=[admin_guard])
    def reload(self, svc: Svc) -> schemas.ReloadResponse:
        """Re-resolve the alias now and swap in its version (admin key). A failed load keeps the old model."""
        outcome = svc.models.refresh()
        return schemas.ReloadResponse(
            success=outcome.success,
            old_version=outcome.old_version,
            new_version=outcome.new_version,
            message=outcome.message,
        )
