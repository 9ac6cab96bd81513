"""Liveness, readiness, the metrics summary, and the web UI's entry page."""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, MediaType, Request, Response, get
from litestar.response import File, Redirect

from serving.api import operations, schemas
from serving.api.schemas import UNAVAILABLE
from serving.api.security import caller_identity
from serving.api.services import Svc

UI_DIR = Path(__file__).resolve().parents[1] / "ui"


class SystemController(Controller):
    tags = ("system",)

    @get("/health", sync_to_thread=False)
    def health(self, svc: Svc) -> schemas.Health:
        """Liveness: the process answers. Depends on nothing else."""
        return operations.health(svc)

    @get("/ready", sync_to_thread=False, responses=UNAVAILABLE)
    def ready(self, request: Request, svc: Svc) -> Response[schemas.Readiness]:
        """Readiness: 200 once a champion model is loaded, else 503. Needs no key; the served version
        and the reason nothing is served are given to callers with a valid key only."""
        body = operations.readiness(svc, detailed=caller_identity(request, svc.keyring) is not None)
        return Response(body, status_code=200 if body.model_loaded else 503)

    @get("/", include_in_schema=False, sync_to_thread=False)
    def index(self) -> File:
        return File(UI_DIR / "index.html", content_disposition_type="inline", media_type=MediaType.HTML)

    @get("/docs", include_in_schema=False, sync_to_thread=False)
    def docs(self) -> Redirect:
        # Litestar's Swagger plugin loads its assets from a CDN; this page uses Swagger UI 5 (reads the
        # OpenAPI 3.1 Litestar emits) vendored under ui/vendor, so it works offline.
        return Redirect(path="/ui/docs.html")


class SummaryController(Controller):
    """Mounted under /v1 (so it shares the /v1 guards and rate limit)."""

    path = "/metrics"
    tags = ("system",)

    @get("/summary", sync_to_thread=False)
    def summary(self, svc: Svc) -> schemas.MetricsSummary:
        """Process counters since start: requests, signals, ML predictions, and whether ML is available."""
        return operations.metrics_summary(svc)
