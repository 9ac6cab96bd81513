"""Custom Prometheus metrics and the in-process counters behind /v1/metrics/summary.

The Prometheus objects live in the default registry that Litestar's PrometheusController exposes; they
are module-level because a registry refuses the same name twice (several apps in one test process
share them, which is harmless: tests read the summary counters, which are per app).
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

from serving.core.gc_pauses import GC_BUCKETS, GcPauseTimer

MODEL_LOADED = Gauge("crypto_api_model_loaded", "1 when a champion model is loaded and served, else 0")
MODEL_INFO = Info("crypto_api_model", "The served model: name, version, family, alias")
PREDICTION_LATENCY = Histogram(
    "crypto_api_prediction_latency_seconds",
    "Forecaster call time per ML prediction (inference only, features excluded)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
SIGNALS = Counter("crypto_api_signals", "Heuristic signals served", ["symbol"])
PREDICTIONS = Counter("crypto_api_ml_predictions", "ML predictions served", ["symbol", "model_version"])
HISTORY_WRITE_ERRORS = Counter(
    "crypto_api_history_write_errors", "History rows the database refused (logged, not stored)"
)
HISTORY_DROPPED = Counter(
    "crypto_api_history_dropped",
    "History rows dropped because the write-behind queue stayed full past the enqueue wait (logged)",
)
HISTORY_QUEUE_DEPTH = Gauge(
    "crypto_api_history_queue_depth", "History rows recorded and not yet written (queued or committing)"
)
HISTORY_QUEUE_CAPACITY = Gauge(
    "crypto_api_history_queue_capacity", "History rows the write-behind queue holds at most"
)

GC_PAUSE = Histogram(
    "crypto_api_gc_pause_seconds",
    "Wall time of each garbage collection in the API process, per generation: the event loop stands "
    "still meanwhile, so every request in flight waits that long",
    ["generation"],
    buckets=GC_BUCKETS,
)
GC_FROZEN_OBJECTS = Gauge(
    "crypto_api_gc_frozen_objects",
    "Objects frozen out of the collector's generations at start-up (0: not frozen, as in tests)",
)
GC_FROZEN_OBJECTS.set_function(gc.get_freeze_count)
# Process-wide like the histogram it feeds: one timer however many apps a process starts (a timer per
# app would count each collection once per app). Started by an app's lifespan, left running after.
GC_TIMER = GcPauseTimer(GC_PAUSE)


def watch_history_queue(history: Any) -> None:
    """Point the queue gauges at `history` (read at scrape time: nothing per request). Held weakly: an
    app built and dropped in a test leaves no history alive through the default registry."""
    ref = weakref.ref(history)
    HISTORY_QUEUE_DEPTH.set_function(lambda: getattr(ref(), "queue_depth", 0))
    HISTORY_QUEUE_CAPACITY.set(history.queue_max)


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


@dataclass
class Counters:
    """What /v1/metrics/summary reports for this process."""

    start_time: float = field(default_factory=time.time)
    requests_total: int = 0
    signals_total: int = 0
    ml_predictions_total: int = 0
    last_signal_at: float | None = None
    last_ml_prediction_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _predictions: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    def request(self) -> None:
        with self._lock:
            self.requests_total += 1

    def signal(self, symbol: str) -> None:
        SIGNALS.labels(symbol=symbol).inc()
        with self._lock:
            self.signals_total += 1
            self.last_signal_at = time.time()

    def prediction(self, symbol: str, version: str, seconds: float) -> None:
        counter = self._predictions.get((symbol, version))
        if counter is None:  # a label lookup takes the metric's lock: once per (symbol, version)
            counter = self._predictions[(symbol, version)] = PREDICTIONS.labels(
                symbol=symbol, model_version=version
            )
        counter.inc()
        PREDICTION_LATENCY.observe(seconds)
        with self._lock:
            self.ml_predictions_total += 1
            self.last_ml_prediction_at = time.time()

    def iso(self, name: str) -> str | None:
        return _iso(getattr(self, name))


def model_changed(model) -> None:
    """ModelStore hook: keep the model gauges in step with what is served."""
    if model is None:
        MODEL_LOADED.set(0)
        return
    MODEL_LOADED.set(1)
    MODEL_INFO.info(
        {"name": model.name, "version": model.version, "family": model.family, "alias": model.alias}
    )
