"""The scorer's Prometheus metrics (names fixed: the Grafana dashboards are built against them).

Each `ScorerMetrics` has its own registry, so several scorers in one process (tests, benchmarks) never
collide and the endpoint shows the scorer's metrics only (plus the process collector).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from serving.core.gc_pauses import GC_BUCKETS, GcPauseTimer

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ScorerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.consumed = Counter(
            "crypto_scorer_consumed_total", "Records consumed from the prices topic.", registry=r
        )
        self.produced = Counter(
            "crypto_scorer_produced_total",
            "Messages acknowledged by the broker, per topic.",
            ["topic"],
            registry=r,
        )
        self.dlq = Counter(
            "crypto_scorer_dlq_total",
            "Records sent to the dead-letter topic (malformed, or failed to score), per reason code.",
            ["reason"],
            registry=r,
        )
        self.dlq_unwritable = Counter(
            "crypto_scorer_dlq_unwritable_total",
            "Dead letters the broker would not take (too large, or refused on every retry): logged with "
            "their source offset and dropped, so they never block a batch.",
            registry=r,
        )
        self.forecasts_missing = Counter(
            "crypto_scorer_forecasts_missing_total",
            "Closed bars a feature-frame model could not forecast, per reason (stale_symbol: another "
            "symbol of its frame has no bar then; no_forecast: the model gave NaN). Their ticks are "
            "sent with a null forecast, not dead-lettered.",
            ["reason"],
            registry=r,
        )
        self.alerts = Counter("crypto_scorer_alerts_total", "Alerts emitted, per type.", ["type"], registry=r)
        self.lag = Gauge(
            "crypto_scorer_consumer_lag",
            "Records behind the partition's high watermark after the last batch.",
            ["partition"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "crypto_scorer_batch_seconds",
            "Wall time of one batch: validate, score, produce, wait for acks, commit.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_loaded = Gauge(
            "crypto_scorer_model_loaded", "1 when a champion model is loaded.", registry=r
        )
        self.model_version = Gauge(
            "crypto_scorer_model_version_info",
            "The champion version served (value 1).",
            ["version"],
            registry=r,
        )
        self.gc_pause_seconds = Histogram(
            "crypto_scorer_gc_pause_seconds",
            "Wall time of each garbage collection in the scorer process, per generation: the event loop "
            "is stopped meanwhile, so a long one shows up in the tick → prediction tail.",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=r,
        )
        self._version: str | None = None
        self._gc_timer = GcPauseTimer(self.gc_pause_seconds)

    def watch_gc(self) -> None:
        """Time every collection of this process (`gc.callbacks`) until `unwatch_gc`."""
        self._gc_timer.start()

    def unwatch_gc(self) -> None:
        self._gc_timer.stop()

    def set_model(self, version: str | None) -> None:
        if version == self._version:
            return
        if self._version is not None:
            self.model_version.remove(self._version)
        self._version = version
        self.model_loaded.set(0 if version is None else 1)
        if version is not None:
            self.model_version.labels(version=version).set(1)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics on `port` (a daemon thread of prometheus_client)."""
        start_http_server(port, addr=addr, registry=self.registry)
