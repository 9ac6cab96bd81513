"""The per-request Prometheus series (serving.api.request_metrics): the names and labels Litestar's
PrometheusMiddleware emitted, which the dashboards and alert rules read."""

from __future__ import annotations

import uuid

from litestar import Litestar, get
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from serving.api.app import MetricsController
from serving.api.request_metrics import RequestMetricsMiddleware


@get("/items/{n:int}")
async def item(n: int) -> dict[str, int]:
    if n == 5:
        raise RuntimeError("a handler bug")
    return {"n": n}


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_requests_are_counted_and_timed_per_route_template_and_status():
    app_name = f"test-{uuid.uuid4().hex[:8]}"  # the registry is process-wide: this test's own series
    app = Litestar([item, MetricsController], middleware=[RequestMetricsMiddleware(app_name, "^/metrics$")])
    with TestClient(app) as client:
        for n in (1, 2, 5):
            client.get(f"/items/{n}")
        client.get("/metrics")
    ok = {"app_name": app_name, "method": "GET", "path": "/items/{n}", "status_code": "200"}
    failed = {**ok, "status_code": "500"}
    assert _sample("crypto_api_requests_total", **ok) == 2
    assert _sample("crypto_api_requests_total", **failed) == 1
    assert _sample("crypto_api_requests_error_total", **failed) == 1
    assert _sample("crypto_api_requests_error_total", **ok) is None
    assert _sample("crypto_api_request_duration_seconds_count", **ok) == 2
    assert _sample("crypto_api_request_duration_seconds_sum", **ok) > 0
    assert _sample("crypto_api_requests_in_progress", **ok) == 0
    scraped = {**ok, "path": "/metrics"}
    assert _sample("crypto_api_requests_total", **scraped) is None  # the scrape itself is excluded
