"""The prediction sink on a real Kafka broker: per-bar forecasts land in the history DB once, offsets
are committed after the rows are stored, and a replay of the whole topic (a crash before the commit,
or a new group) adds nothing."""

from __future__ import annotations

import asyncio
import time

import pytest

from crypto_platform.lib.stream.ticks import tick_key
from crypto_platform_tests.integration.scorer_support import InProcessScorer, end_and_committed, produce
from crypto_platform_tests.unit.test_prediction_sink import BAR, HOUR_MS, _prediction
from serving.core.history import HistoryReader
from serving.stream.prediction_sink import PredictionSink, SinkConfig

pytestmark = pytest.mark.integration


def _messages() -> list[tuple[bytes, bytes]]:
    out = []
    for bar in range(6):
        for symbol, value in (("BTC/USDT", 0.04), ("ETH/USDT", 0.06)):
            for tick_s in (1, 20, 40):  # three ticks of each bar carry the bar's one forecast
                out.append(
                    (
                        tick_key(symbol),
                        _prediction(symbol, BAR + bar * HOUR_MS, value + bar / 1000, "7", tick_s),
                    )
                )
    out.append((tick_key("ETH/USDT"), _prediction("ETH/USDT", BAR, None, None)))  # before the model loaded
    return out


def _run_sink(bootstrap: str, topic: str, url: str, group: str, until_consumed: int) -> PredictionSink:
    sink = PredictionSink(SinkConfig(bootstrap, topic, url, group_id=group, fetch_timeout_ms=100))
    running = InProcessScorer(sink).start()
    deadline = time.monotonic() + 60
    while sink.metrics.consumed._value.get() < until_consumed and time.monotonic() < deadline:
        time.sleep(0.1)
    running.stop()
    return sink


def _stored(url: str) -> list[tuple[str, int, float]]:
    with HistoryReader(url) as reader:
        return sorted(
            (r["symbol"], r["bar_ts"], r["predicted_volatility"]) for r in reader.served_forecasts(0, 2**62)
        )


def test_forecasts_are_stored_once_and_committed_after_the_write(kafka_running, kafka_topics, tmp_path):
    bootstrap, topic = kafka_running.bootstrap_servers, kafka_topics.predictions
    messages = _messages()
    asyncio.run(produce(bootstrap, topic, messages))
    url = f"sqlite:///{tmp_path / 'history.db'}"

    sink = _run_sink(bootstrap, topic, url, "sink-a", len(messages))
    stored = _stored(url)
    expected = sorted(
        (symbol, BAR + bar * HOUR_MS, value + bar / 1000)
        for bar in range(6)
        for symbol, value in (("BTC/USDT", 0.04), ("ETH/USDT", 0.06))
    )
    assert stored == expected
    assert sink.stored == 12 and sink.metrics.skipped.labels(reason="duplicate")._value.get() == 24
    assert sink.metrics.skipped.labels(reason="no_forecast")._value.get() == 1
    ends, committed = end_and_committed(bootstrap, topic, "sink-a")
    # every record's offset committed, after its batch was stored (two keys: one partition stays empty)
    assert {p: committed[p] for p, end in ends.items() if end} == {p: end for p, end in ends.items() if end}

    # another group reads the topic from the start (as a restart after a crash before the commit would):
    # the idempotent insert keeps one row per (symbol, bar, version)
    replay = _run_sink(bootstrap, topic, url, "sink-b", len(messages))
    assert replay.stored == 0 and _stored(url) == expected
