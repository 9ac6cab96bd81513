"""The scorer's GC pause histogram: what tells a collection apart from other causes of a latency tail."""

from __future__ import annotations

import gc

from serving.stream.metrics import ScorerMetrics


def _pauses(metrics: ScorerMetrics) -> float:
    return sum(
        metrics.registry.get_sample_value("crypto_scorer_gc_pause_seconds_count", {"generation": str(g)}) or 0
        for g in range(3)
    )


def test_collections_are_timed_while_watched_and_not_after():
    metrics = ScorerMetrics()
    metrics.watch_gc()
    metrics.watch_gc()  # twice is once
    try:
        gc.collect()
        gc.collect(0)
    finally:
        metrics.unwatch_gc()
    timed = _pauses(metrics)
    assert timed >= 2  # the two asked for (an automatic young collection may come on top)
    # One full collection asked for, counted once: the callback was not installed twice.
    assert metrics.registry.get_sample_value("crypto_scorer_gc_pause_seconds_count", {"generation": "2"}) == 1
    gc.collect()
    assert _pauses(metrics) == timed
