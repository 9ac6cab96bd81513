"""A process's garbage-collection pauses, read from its Prometheus histogram of them (the scorer's
`crypto_scorer_gc_pause_seconds`, the API's `crypto_api_gc_pause_seconds`: `serving.core.gc_pauses`),
for the benchmarks that tell a collection apart from other causes of a latency tail."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

GENERATIONS = ("0", "1", "2")


def gc_pauses(metrics_text: str, metric: str) -> dict[str, dict[str, float | int]]:
    """Per generation ("0", "1", "2") and over all of them ("all"): how many collections, their total
    (ms), and how many took longer than 10 and 25 ms. Zeros where the histogram is absent."""
    count: dict[str, float] = dict.fromkeys(GENERATIONS, 0.0)
    total: dict[str, float] = dict.fromkeys(GENERATIONS, 0.0)
    within: dict[tuple[str, str], float] = {}  # (generation, le) → collections at most that long
    for family in text_string_to_metric_families(metrics_text):
        if family.name != metric:
            continue
        for sample in family.samples:
            generation = sample.labels.get("generation")
            if generation not in count:
                continue
            if sample.name == f"{metric}_count":
                count[generation] = sample.value
            elif sample.name == f"{metric}_sum":
                total[generation] = sample.value
            elif sample.name == f"{metric}_bucket":
                within[(generation, sample.labels["le"])] = sample.value

    def summary(generations: tuple[str, ...]) -> dict[str, float | int]:
        n = sum(count[g] for g in generations)
        return {
            "pauses": int(n),
            "total_ms": round(1000 * sum(total[g] for g in generations), 1),
            "ge_10ms": int(n - sum(within.get((g, "0.01"), count[g]) for g in generations)),
            "ge_25ms": int(n - sum(within.get((g, "0.025"), count[g]) for g in generations)),
        }

    return {**{g: summary((g,)) for g in GENERATIONS}, "all": summary(GENERATIONS)}
