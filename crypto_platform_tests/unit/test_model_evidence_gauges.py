"""The API's model-evidence gauges read what the ML group wrote: the newest track record and drift report."""

from __future__ import annotations

import json
from pathlib import Path

from crypto_platform.lib.storage import LocalStore, drift_report_key, track_record_key
from crypto_platform.lib.track_record import CHAMPION, SeriesScore, TrackRecord
from serving.api.freshness import (
    DRIFT_DETECTED,
    LIVE_CHAMPION_WORSE,
    LIVE_QLIKE,
    TRACK_RECORD_DAY,
    ModelEvidence,
    publish_model_evidence,
    read_model_evidence,
)


def track_record(champion_qlike: float, har_qlike: float) -> TrackRecord:
    def score(name: str, qlike: float) -> SeriesScore:
        return SeriesScore(name, 48, qlike, 1e-6, 0.0, 1.0, 0.3)

    return TrackRecord(
        window_start="2025-03-01",
        window_end="2025-03-07",
        n_served=50,
        n_scored=48,
        n_pending=2,
        versions={"3": 48},
        sources={"api": 48},
        scores={CHAMPION: score(CHAMPION, champion_qlike), "har": score("har", har_qlike)},
        daily_qlike=[],
    )


def write(store: LocalStore, key: str, payload: dict) -> None:
    store.write_bytes(key, json.dumps(payload).encode())


def test_newest_results_become_gauges(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    write(store, track_record_key("2025-03-06"), track_record(0.2, 0.9).to_dict())  # older: ignored
    write(store, track_record_key("2025-03-07"), track_record(0.6, 0.5).to_dict())
    write(
        store,
        drift_report_key("2025-03-07"),
        {"feature_drift_detected": True, "label_drift_detected": False, "drifted_features": ["hl_range"]},
    )
    evidence = read_model_evidence(store)
    assert evidence.track_record_day == "2025-03-07"
    assert evidence.live_qlike == {CHAMPION: 0.6, "har": 0.5}
    assert evidence.champion_worse is True
    assert (evidence.feature_drift, evidence.label_drift, evidence.drifted_features) == (True, False, 1)

    publish_model_evidence(evidence)
    assert LIVE_QLIKE.labels(forecaster="har")._value.get() == 0.5
    assert LIVE_CHAMPION_WORSE._value.get() == 1.0
    assert DRIFT_DETECTED.labels(kind="feature")._value.get() == 1.0
    assert TRACK_RECORD_DAY._value.get() == 1741305600.0  # 2025-03-07T00:00Z


def test_no_results_publish_no_series(tmp_path: Path) -> None:
    evidence = read_model_evidence(LocalStore(tmp_path))
    assert evidence == ModelEvidence()
    publish_model_evidence(ModelEvidence(live_qlike={"har": 0.4}))
    publish_model_evidence(evidence)  # a forecaster that left the track record loses its series
    assert not [s for metric in LIVE_QLIKE.collect() for s in metric.samples]
