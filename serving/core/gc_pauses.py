"""Garbage-collector pauses of a serving process: its start-up heap frozen, every collection timed.

Why: a serving process holds TensorFlow, polars, MLflow and its web framework, ~680k objects the
collector tracks once everything is imported (measured on the API). A full (generation-2) collection
walks every one of them, ~250 ms on a 2-core machine, and the event loop stands still meanwhile: every
request or tick in flight waits, which is what a p99 tail of ~100 ms at a p50 under 1 ms is made of.
What is alive when start-up ends (modules, the loaded model, caches) lives as long as the process, so
`freeze_startup_heap` moves it out of the collector's generations (`gc.freeze`): a full collection
then walks only what serving allocated since. A frozen object that later becomes garbage in a cycle is
never reclaimed, so only a process's entry point freezes (not an app built in a test process, which
builds and drops many).

`GcPauseTimer` times each collection into a Prometheus histogram labelled by generation
(`gc.callbacks`), so a pause shows up next to the latency it explains.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def freeze_startup_heap() -> int:
    """Collect what start-up left as garbage, then freeze every object still tracked; the number of
    objects now frozen (`gc.get_freeze_count`)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauseTimer:
    """Observes the wall time of every collection of this process into `histogram` (one label,
    `generation`) between `start` and `stop`."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._started: float | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            elapsed = time.perf_counter() - self._started
            self._started = None
            self._histogram.labels(generation=str(info.get("generation"))).observe(elapsed)

    def start(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
