"""The LSTM (or baseline champion) volatility forecast, its explanation, and the served model."""

from __future__ import annotations

from typing import Any

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse

from serving.api import operations, schemas
from serving.api.controllers.tails import LINK_HEADER, Before, TailN, tail_response
from serving.api.schemas import UNAVAILABLE
from serving.api.security import admin_guard
from serving.api.services import Svc


class MLController(Controller):
    path = "/crypto"
    tags = ("ml",)

    @post(
        "/ml-signal",
        status_code=200,
        responses={200: ResponseSpec(schemas.MLSignalResponse, description="The forecast"), **UNAVAILABLE},
    )
    async def ml_signal(self, request: Request, data: schemas.MLSignalRequest) -> ASGIResponse:
        """Forecast of the next 24 bars' realized volatility at the newest closed bar. 503 while no
        model is loaded."""
        # The hot path (profiled under wrk): the services come from the app state rather than a
        # dependency (Litestar's DI resolution cost more than the lookup), and the body is the
        # pre-encoded answer with the time spliced in (serving.api.encoded), sent as it is.
        # Cached features inline, a miss in a worker thread (see SignalsController.signal).
        body = await operations.ml_signal_body(request.app.state.services, data)
        return ASGIResponse(body=body, media_type=MediaType.JSON)

    @get("/ml-predictions/tail", sync_to_thread=True, response_headers=[LINK_HEADER])
    def tail(
        self, request: Request, svc: Svc, n: TailN = 50, before: Before = None
    ) -> Response[list[dict[str, Any]]]:
        """The last `n` ML predictions served as a JSON list, newest last. Older pages: `before=<id>`,
        given by the `Link: rel="next"` header."""
        return tail_response(request, operations.predictions_tail(svc, n, before), n)

    @post("/ml-explain", status_code=200, sync_to_thread=True, responses=UNAVAILABLE)
    def explain(self, svc: Svc, data: schemas.MLExplainRequest) -> schemas.MLExplainResponse:
        """Occlusion attribution of the current forecast to each input feature: the forecast minus the
        forecast with that feature's 48-bar history set to its training mean (window mean for models
        without a normaliser). Positive: the feature's actual history pushes the forecast up."""
        return operations.ml_explain(svc, data)


class ModelController(Controller):
    path = "/ml/model"
    tags = ("ml",)

    @get("/info", sync_to_thread=False)
    def info(self, svc: Svc) -> schemas.ModelInfo:
        return operations.model_info(svc)

    @post("/reload", status_code=200, sync_to_thread=True, guards=[admin_guard])
    def reload(self, svc: Svc) -> schemas.ReloadResponse:
        """Re-resolve the alias now and swap in its version (admin key). A failed load keeps the old model."""
        return operations.reload_model(svc)
