"""The heuristic risk signal: single, batch, history tail, and side by side with the ML forecast."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from serving.api import operations, schemas
from serving.api.controllers.market import ExchangeQ, SymbolQ, TimeframeQ
from serving.api.controllers.tails import LINK_HEADER, Before, TailN, tail_response
from serving.api.services import Svc


class SignalsController(Controller):
    path = "/crypto"
    tags = ("signals",)

    @post("/signal", status_code=200)
    async def signal(self, svc: Svc, data: schemas.SignalRequest) -> schemas.SignalResponse:
        """Heuristic risk signal at the newest closed bar. `limit` is accepted for compatibility: the
        signal depends only on the last 48 bars, so every limit ≥ 48 gives the same answer."""
        # Async on purpose: with the bar's features cached the answer takes microseconds, and only a
        # cache miss (store read, exchange call, feature computation) goes to a worker thread.
        return await operations.signal(svc, data)

    @post("/signal/batch", status_code=200, sync_to_thread=True)
    def batch(self, svc: Svc, data: schemas.SignalBatchRequest) -> schemas.SignalBatchResponse:
        """Signals for several symbols; per-symbol failures are listed in `errors`, not fatal."""
        return operations.signal_batch(svc, data)

    @get("/signals/tail", sync_to_thread=True, response_headers=[LINK_HEADER])
    def tail(
        self, request: Request, svc: Svc, n: TailN = 50, before: Before = None
    ) -> Response[list[dict[str, Any]]]:
        """The last `n` signals served as a JSON list, newest last (each the response as served, plus
        `id` and `created_at`). Older pages: `before=<id>`, given by the `Link: rel="next"` header."""
        return tail_response(request, operations.signals_tail(svc, n, before), n)

    @get("/signals/compare", sync_to_thread=True)
    def compare(
        self,
        svc: Svc,
        symbol: SymbolQ,
        exchange: ExchangeQ = "binance",
        timeframe: TimeframeQ = "1h",
        horizon_min: Annotated[int, Parameter(ge=1, le=operations.MAX_HORIZON_MIN)] = 60,
    ) -> schemas.CompareResponse:
        """The heuristic signal and the ML forecast for the same bar (ML null with the reason when it
        is unavailable). Not recorded in the history: it is a view of the two, not a served signal."""
        return operations.compare(svc, symbol, exchange, timeframe, horizon_min)
