"""The scorer on a real Kafka broker (in-process `Scorer`): round trip with per-symbol order, the
dead-letter queue, warm start with a real MLflow champion, and features equal to the `features` asset."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from aiokafka import AIOKafkaProducer

from crypto_platform.lib.features import MODEL_FEATURES
from crypto_platform.lib.model.windows import FEATURE_BARS, latest_window
from crypto_platform.lib.signals import heuristic_signal
from crypto_platform.lib.storage import open_store, read_partitioned
from crypto_platform.lib.stream.ticks import Tick, encode_tick
from crypto_platform_tests.fixtures.api import write_pipeline_store
from crypto_platform_tests.integration.scorer_support import (
    HOUR_MS,
    InProcessScorer,
    end_and_committed,
    now_ms,
    platform_settings,
    produce,
    produce_ticks,
    read_topic,
    ticks_for,
    values,
)
from serving.core.model_store import ModelStore
from serving.stream.scorer import Scorer, ScorerConfig

pytestmark = pytest.mark.integration

SYMBOLS = ("BTC/USDT", "ETH/USDT")


@pytest.fixture(scope="module")
def live_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline's ohlcv and features partitions for 40 days up to the current hour (exclusive), so
    the stored bars are the freshest closed bars by the real clock and the scorer warm-starts from them."""
    root = tmp_path_factory.mktemp("scorer-store")
    write_pipeline_store(root, SYMBOLS, now_ms() // HOUR_MS * HOUR_MS, 32)
    return root


def make_scorer(bootstrap: str, topics, store: Path, **overrides) -> Scorer:
    settings = platform_settings(store, SYMBOLS, overrides.pop("mlflow_uri", "sqlite:///unused.db"))
    config = ScorerConfig(
        bootstrap_servers=bootstrap,
        topics=topics,
        settings=settings,
        group_id=f"g-{topics.prices}",
        batch_size=500,
        model_name=overrides.pop("model_name", None),
        **overrides,
    )
    return Scorer(config)


def test_round_trip_keeps_per_symbol_order_and_scores_every_tick(kafka_broker, kafka_topics, live_store):
    bootstrap = kafka_broker.bootstrap_servers
    runner = InProcessScorer(make_scorer(bootstrap, kafka_topics, live_store)).start()
    try:
        ticks = ticks_for(SYMBOLS, 400, now_ms() - 30_000, step_ms=50)
        positions = produce_ticks(bootstrap, kafka_topics.prices, ticks)
        records = read_topic(bootstrap, kafka_topics.predictions, until_count=len(ticks))
    finally:
        runner.stop()
    assert len(records) == len(ticks)
    by_offset = {}
    per_symbol: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for record in records:  # one partition's records come back in partition order
        body = json.loads(record.value)
        assert record.key == body["symbol"].encode()
        source = body["source"]
        assert source["topic"] == kafka_topics.prices
        by_offset[(source["partition"], source["offset"])] = body
        per_symbol[body["symbol"]].append((record.partition, source["offset"]))
    assert set(by_offset) == set(positions)
    for tick, position in zip(ticks, positions, strict=True):
        body = by_offset[position]
        assert body["symbol"] == tick.symbol and body["price"] == tick.price
        assert body["risk_score"] is not None and body["vol_regime"] in ("calm", "normal", "turbulent")
        assert body["predicted_volatility"] is None and body["model_version"] is None  # no model
        assert body["latency_ms"] >= 0
    for symbol, seen in per_symbol.items():
        assert len({p for p, _ in seen}) == 1, f"{symbol} predictions spread over partitions"
        expected = [pos[1] for tick, pos in zip(ticks, positions, strict=True) if tick.symbol == symbol]
        assert [offset for _, offset in seen] == expected, f"{symbol} out of order"


def test_every_malformed_kind_lands_in_the_dlq_and_scoring_carries_on(kafka_broker, kafka_topics, live_store):
    bootstrap = kafka_broker.bootstrap_servers
    t = now_ms()
    good = encode_tick(Tick("BTC/USDT", 64000.0, 0.1, t - 1000, "test"))
    future = encode_tick(Tick("BTC/USDT", 64000.0, 0.1, t + 3_600_000, "test"))
    stamp = json.loads(good)["timestamp"]

    def doc(**fields) -> bytes:
        base = {"symbol": "BTC/USDT", "price": 64000.0, "volume": 0.1, "timestamp": stamp}
        base.update(fields)
        return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()

    malformed = {
        "bad_json": b'{"symbol": "BTC/USDT", "price": 1',
        "not_object": b"[64000.0]",
        "missing_field": doc(price=...),
        "bad_type": doc(price="64000"),
        "not_finite": doc(price=...)[:-1] + b',"price":NaN}',
        "bad_price": doc(price=-1.0),
        "bad_volume": doc(volume=-5),
        "unknown_symbol": doc(symbol="DOGE/USDT"),
        "bad_timestamp": doc(timestamp="not a time"),
        "future_timestamp": future,
    }
    messages = [(b"BTC/USDT", good)]
    for raw in malformed.values():
        messages += [(b"BTC/USDT", raw), (b"BTC/USDT", good)]
    runner = InProcessScorer(make_scorer(bootstrap, kafka_topics, live_store)).start()
    try:
        positions = asyncio.run(produce(bootstrap, kafka_topics.prices, messages))
        dead = read_topic(bootstrap, kafka_topics.dlq, until_count=len(malformed))
        predictions = read_topic(bootstrap, kafka_topics.predictions, until_count=len(malformed) + 1)
    finally:
        runner.stop()
    assert len(dead) == len(malformed) and len(predictions) == len(malformed) + 1
    reasons = {}
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        code = headers["reason"].split(":", 1)[0]
        reasons[code] = record
        assert record.value == malformed[code]  # the original bytes, untouched
        assert headers["source_topic"] == kafka_topics.prices
        position = (int(headers["source_partition"]), int(headers["source_offset"]))
        assert messages[positions.index(position)][1] == record.value
    assert set(reasons) == set(malformed)
    good_positions = {positions[i] for i, (_, raw) in enumerate(messages) if raw == good}
    assert {(b["source"]["partition"], b["source"]["offset"]) for b in values(predictions)} == good_positions


async def _allow_large_messages(bootstrap: str, topic: str, max_bytes: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(max_bytes)})]
        )
    finally:
        await admin.close()


async def _produce_large(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        sent = [await (await producer.send(topic, value, key=key)) for key, value in messages]
        return [(m.partition, m.offset) for m in sent]
    finally:
        await producer.stop()


def test_poison_messages_go_to_the_dlq_with_their_reason_and_never_stall_the_scorer(
    kafka_broker, kafka_topics, live_store
):
    bootstrap = kafka_broker.bootstrap_servers
    stamp = json.loads(encode_tick(Tick("BTC/USDT", 1.0, 0.1, now_ms() - 1000, "test")))["timestamp"]
    head = '{"symbol":"BTC/USDT","volume":0.1,"timestamp":"' + stamp + '","price":'
    poison = {  # name → (bytes, reason code)
        "price_400_digits": ((head + "9" * 400 + "}").encode(), "not_finite"),
        "nested_1000_alone": (b"[" * 1000 + b"]" * 1000, "not_object"),
        "nested_1000_in_a_field": ((head + '1,"x":' + "[" * 1000 + "]" * 1000 + "}").encode(), "bad_json"),
        "nested_1000_objects": (b'{"a":' * 1000 + b"1" + b"}" * 1000, "bad_json"),
        "invalid_utf8": ((head + '1,"source":"\xff\xfe"}').encode("latin-1"), "bad_json"),
        "two_megabytes": (b'{"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}', "too_large"),
        "nan_price": ((head + "NaN}").encode(), "not_finite"),
    }
    asyncio.run(_allow_large_messages(bootstrap, kafka_topics.prices, 4 * 1024 * 1024))
    ticks = ticks_for(SYMBOLS, 40, now_ms() - 20_000, step_ms=100)
    messages: list[tuple[bytes, bytes]] = []
    names: list[str | None] = []
    for i, tick in enumerate(ticks):
        messages.append((tick.symbol.encode(), encode_tick(tick)))
        names.append(None)
        if i % 5 == 4 and i // 5 < len(poison):
            name = list(poison)[i // 5]
            messages.append((b"BTC/USDT", poison[name][0]))
            names.append(name)
    assert set(names) - {None} == set(poison)
    runner = InProcessScorer(make_scorer(bootstrap, kafka_topics, live_store)).start()
    try:
        positions = asyncio.run(_produce_large(bootstrap, kafka_topics.prices, messages))
        dead = read_topic(bootstrap, kafka_topics.dlq, until_count=len(poison), timeout_s=60)
        predictions = read_topic(bootstrap, kafka_topics.predictions, until_count=len(ticks), timeout_s=60)
        deadline = time.monotonic() + 30
        while True:  # the batch with the last record commits after its outputs are acknowledged
            ends, committed = end_and_committed(bootstrap, kafka_topics.prices, f"g-{kafka_topics.prices}")
            if all(committed[p] == end for p, end in ends.items() if end) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        alive = runner.thread.is_alive() and not runner.error
    finally:
        runner.stop()
    assert alive, "the scorer exited on a poison message"
    assert all(committed[p] == end for p, end in ends.items() if end), (ends, committed)
    by_position = dict(zip(positions, names, strict=True))
    predicted = {(b["source"]["partition"], b["source"]["offset"]) for b in values(predictions)}
    assert predicted == {pos for pos, name in by_position.items() if name is None}  # every valid one
    assert len(dead) == len(poison)
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        name = by_position[(int(headers["source_partition"]), int(headers["source_offset"]))]
        raw, code = poison[name]
        assert headers["reason"].split(":", 1)[0] == code, (name, headers["reason"])
        assert headers["error_class"] == "InvalidTick"
        if name == "two_megabytes":  # cut to fit the dead-letter topic; the size says what it was
            assert headers["value_truncated"] == "true" and int(headers["value_bytes"]) == len(raw)
            assert raw.startswith(record.value) and len(record.value) < 1024 * 1024
        else:
            assert record.value == raw  # the original bytes, untouched


def _stored_features(store: Path, symbol: str, last_closed: int) -> pl.DataFrame:
    frame, _ = read_partitioned(
        open_store(str(store)), "features", symbol, last_closed - 60 * 24 * HOUR_MS, last_closed + 1
    )
    return frame.sort("ts")


def test_warm_start_forecasts_at_the_first_tick_with_the_features_asset_values(
    kafka_broker, kafka_topics, live_store, api_champion
):
    bootstrap = kafka_broker.bootstrap_servers
    scorer = make_scorer(
        bootstrap,
        kafka_topics,
        live_store,
        model_name=api_champion.model_name,
        mlflow_uri=api_champion.tracking_uri,
        model_poll_s=0,
    )
    runner = InProcessScorer(scorer).start()
    try:
        t = now_ms()
        first = [Tick(s, 50_000.0, 0.2, t - 500, "test") for s in SYMBOLS]
        produce_ticks(bootstrap, kafka_topics.prices, first)
        records = read_topic(bootstrap, kafka_topics.predictions, until_count=len(first))
    finally:
        runner.stop()
    store = ModelStore(api_champion.tracking_uri, api_champion.model_name, "champion")
    assert store.refresh().success
    model = store.require()
    for body in values(records):
        symbol = body["symbol"]
        # The first tick of each symbol is scored with the warm-start bars: a forecast, at once.
        assert body["model_version"] == api_champion.lstm_version
        stored = _stored_features(live_store, symbol, now_ms())
        last_bar = int(stored["ts"][-1])
        assert body["bar_timestamp"].startswith(
            pl.from_epoch(pl.Series([last_bar]), time_unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%S")[0]
        )
        # Features parity: the scorer's features (compute_features over the FEATURE_BARS bars it holds)
        # equal the pipeline's `features` asset for the whole model window.
        mine = scorer.state.latest_features[symbol].tail(model.sequence_length)
        theirs = stored.tail(model.sequence_length)
        assert mine["ts"].to_list() == theirs["ts"].to_list()
        for column in (*MODEL_FEATURES, "ret", "vol24", "sma12", "sma48"):
            np.testing.assert_allclose(
                mine[column].to_numpy(), theirs[column].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=column
            )
        signal = heuristic_signal(stored.tail(FEATURE_BARS), "1h", 60)
        assert body["risk_score"] == pytest.approx(signal.risk_score, rel=1e-9)
        assert body["vol_regime"] == signal.vol_regime
        window = latest_window(stored.tail(FEATURE_BARS), model.feature_columns, "1h", model.sequence_length)
        expected = float(model.predict(window.X)[0])
        assert body["predicted_volatility"] == pytest.approx(expected, rel=1e-5)


def test_a_frame_champion_forecasts_every_symbol_from_the_cross_symbol_frame_with_its_risk(
    kafka_broker, kafka_topics, live_store, api_frame_champion
):
    """HAR+ (feature-frame contract) served by the scorer: each first tick is scored from the frame of
    both symbols' warm-start bars, with its intervals and 99 % VaR / ES."""
    from crypto_platform.lib.model.intervals import value_at_risk
    from crypto_platform_tests.fixtures.frame_models import frame_rows

    bootstrap = kafka_broker.bootstrap_servers
    scorer = make_scorer(
        bootstrap,
        kafka_topics,
        live_store,
        model_name=api_frame_champion.model_name,
        mlflow_uri=api_frame_champion.tracking_uri,
        model_poll_s=0,
    )
    runner = InProcessScorer(scorer).start()
    try:
        t = now_ms()
        first = [Tick(s, 50_000.0, 0.2, t - 500, "test") for s in SYMBOLS]
        produce_ticks(bootstrap, kafka_topics.prices, first)
        records = read_topic(bootstrap, kafka_topics.predictions, until_count=len(first))
    finally:
        runner.stop()
    stored = pl.concat(
        [_stored_features(live_store, s, now_ms()).with_columns(pl.lit(s).alias("symbol")) for s in SYMBOLS]
    ).select("symbol", "ts", "open", "high", "low", "close", "volume")
    last_bar = int(stored["ts"].max())
    out = api_frame_champion.forecaster.predict_frame(frame_rows(stored.sort("symbol", "ts")))
    at = out[out["ts"] == last_bar]
    expected = dict(zip(at["symbol"], at["predicted_volatility"], strict=True))
    bodies = values(records)
    assert {b["symbol"] for b in bodies} == set(SYMBOLS)
    for body in bodies:
        assert body["model_version"] == api_frame_champion.version
        value = body["predicted_volatility"]
        assert value == pytest.approx(expected[body["symbol"]], rel=1e-6)
        assert [i["level"] for i in body["intervals"]] == [0.8, 0.95]
        assert body["intervals"][1]["lower"] < value < body["intervals"][1]["upper"]
        assert body["value_at_risk"] == pytest.approx(float(value_at_risk(value, 0.99)))
        assert body["expected_shortfall"] > body["value_at_risk"] and body["var_level"] == 0.99
