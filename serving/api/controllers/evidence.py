"""Read-only evidence for the web UI's views: the overview, a symbol's track record, the model card,
the reports. Mounted under /v1 (same guards and rate limit as every other read)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import Dependency, Parameter

from serving.api import evidence
from serving.api import evidence_schemas as es
from serving.api.schemas import UNAVAILABLE
from serving.api.services import Svc

REGISTRY_TTL_S = 30.0  # the model view asks MLflow several things; versions change a few times a day
REGISTRY_WAIT_S = 10.0  # longer and the page answers "still asking", the answer cached for the next poll
STATE_KEY = "evidence_cache"


def provide_cache(state: State) -> evidence.TimedCache:
    """One cache per app (its state), so two apps in one process (tests) never share answers."""
    cache = state.get(STATE_KEY)
    if cache is None:
        cache = state[STATE_KEY] = evidence.TimedCache(REGISTRY_TTL_S)
    return cache


Cache = Annotated[evidence.TimedCache, Dependency(skip_validation=True)]
Bars = Annotated[
    int,
    Parameter(
        ge=evidence.SERIES_MIN_BARS,
        le=evidence.SERIES_MAX_BARS,
        description="closed bars to show (features use a week more)",
    ),
]


class EvidenceController(Controller):
    path = "/evidence"
    tags = ("evidence",)
    dependencies = {"cache": Provide(provide_cache, sync_to_thread=False)}  # noqa: RUF012 (Litestar reads it)

    @get("/overview", sync_to_thread=True)
    def overview(self, svc: Svc) -> es.Overview:
        """One row per configured symbol: price, 24 h change, realized vol, the champion's forecast (with
        its interval when the model gives one), regime and risk, a sparkline, source and freshness. A
        symbol without bars has a row with `error`. Not recorded in the history."""
        return evidence.overview(svc)

    @get("/symbol", sync_to_thread=True, responses=UNAVAILABLE)
    def symbol(
        self,
        svc: Svc,
        symbol: str,
        timeframe: str = "1h",
        bars: Bars = evidence.SERIES_DEFAULT_BARS,
    ) -> es.SymbolSeries:
        """Bars with realized volatility and regime spans, every forecast served at those bars against
        the realized volatility of the 24 bars after it, and the rolling live QLIKE of the champion
        against the best persistence baseline."""
        return evidence.symbol_series(svc, symbol, timeframe, bars)

    @get("/model", sync_to_thread=True)
    def model(self, svc: Svc, cache: Cache) -> es.ModelView:
        """Champion and challenger, the evaluation table of the champion's training run, the promotion
        history with reasons (registry tags), drift status from the newest feature_drift artifact."""
        return cache.get_within(
            "model",
            lambda: evidence.model_view(svc),
            REGISTRY_WAIT_S,
            lambda: evidence.registry_unavailable_view(
                svc, f"no answer within {REGISTRY_WAIT_S:.0f} s (still asking; reload in a moment)"
            ),
        )

    @get("/reports", sync_to_thread=True)
    def reports(self, svc: Svc, cache: Cache) -> es.ReportsView:
        """The daily reports stored (newest first) and the latest quality report per configured symbol."""
        return cache.get("reports", lambda: evidence.reports_view(svc))

    @get("/reports/daily/{day:str}", sync_to_thread=True)
    def daily_report(self, svc: Svc, day: str) -> es.DailyReportText:
        """One daily report's markdown. 400 for a day not written YYYY-MM-DD, 404 when there is none."""
        try:
            return evidence.daily_report(svc, day)
        except evidence.ReportNotFoundError as exc:
            raise NotFoundException(detail=str(exc)) from exc
