"""Liveness, readiness, the metrics summary, and the web UI's entry page."""

from __future__ import annotations

import time
from pathlib import Path

from litestar import Controller, MediaType, Response, get
from litestar.response import File, Redirect

from serving.api import schemas
from serving.api.metrics import Counters
from serving.api.schemas import UNAVAILABLE
from serving.api.scoring import iso_now
from serving.api.services import Svc

UI_DIR = Path(__file__).resolve().parents[1] / "ui"


class SystemController(Controller):
    tags = ("system",)

    @get("/health", sync_to_thread=False)
    def health(self, svc: Svc) -> schemas.Health:
        """Liveness: the process answers. Depends on nothing else."""
        return schemas.Health(status="ok", time=iso_now(), uptime_s=round(time.time() - svc.started_at, 3))

    @get("/ready", sync_to_thread=False, responses=UNAVAILABLE)
    def ready(self, svc: Svc) -> Response[schemas.Readiness]:
        """Readiness: 200 once a champion model is loaded, else 503 with the reason."""
        model = svc.models.current
        if model is None:
            body = schemas.Readiness(status="not_ready", model_loaded=False, reason=svc.models.last_error)
            return Response(body, status_code=503)
        return Response(schemas.Readiness(status="ready", model_loaded=True, model_version=model.version))

    @get("/", include_in_schema=False, sync_to_thread=False)
    def index(self) -> File:
        return File(UI_DIR / "index.html", content_disposition_type="inline", media_type=MediaType.HTML)

    @get("/docs", include_in_schema=False, sync_to_thread=False)
    def docs(self) -> Redirect:
        # Swagger UI and friends load their assets from CDNs, and the one vendored on PyPI (swagger-ui-bundle,
        # Swagger UI 4) cannot read OpenAPI 3.1, which Litestar emits: a small self-contained page instead.
        return Redirect(path="/ui/docs.html")


class SummaryController(Controller):
    """Mounted under /v1 (so it shares the /v1 guards and rate limit)."""

    path = "/metrics"
    tags = ("system",)

    @get("/summary", sync_to_thread=False)
    def summary(self, svc: Svc) -> schemas.MetricsSummary:
        """Process counters since start: requests, signals, ML predictions, and whether ML is available."""
        c: Counters = svc.counters
        return schemas.MetricsSummary(
            start_time=c.iso("start_time") or "",
            requests_total=c.requests_total,
            signals_total=c.signals_total,
            ml_predictions_total=c.ml_predictions_total,
            last_signal_at=c.iso("last_signal_at"),
            last_ml_prediction_at=c.iso("last_ml_prediction_at"),
            ml_available=svc.models.current is not None,
        )
