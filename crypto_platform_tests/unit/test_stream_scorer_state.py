"""The scorer's batch logic without Kafka: DLQ, one prediction per tick, bar-close refresh, forecasts."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.features import MODEL_FEATURES, compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.model.windows import FEATURE_BARS, SEQUENCE_LENGTH, latest_window
from crypto_platform.lib.signals import heuristic_signal
from crypto_platform.lib.stream.alerts import AlertConfig
from crypto_platform.lib.stream.ticks import Tick, encode_tick
from serving.core.model_store import LoadedModel
from serving.stream.scorer_state import InputRecord, OutputTopics, ScorerState

HOUR_MS = 3_600_000
T0 = 1_748_736_000_000  # 2025-06-01T00:00Z
TOPICS = OutputTopics("preds", "alerts", "dlq")
SYMBOLS = ("BTC/USDT", "ETH/USDT")
RV24 = MODEL_FEATURES.index("realized_vol_24")


def model(version: str, calls: list[int] | None = None, scale: float = 1.1, dispersion=None) -> LoadedModel:
    def predict(X: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(X.shape[0])
        return X[:, -1, RV24].astype(np.float64) * scale

    return LoadedModel(
        name="m",
        version=version,
        alias="champion",
        family="test",
        run_id=None,
        load_time=0.0,
        metrics={},
        sequence_length=SEQUENCE_LENGTH,
        feature_columns=MODEL_FEATURES,
        timeframe="1h",
        horizon_bars=24,
        predict=predict,
        dispersion=dispersion,
    )


class Offsets:
    def __init__(self) -> None:
        self.next = 0

    def record(self, value: bytes | None, partition: int = 0) -> InputRecord:
        self.next += 1
        return InputRecord("prices", partition, self.next - 1, T0, b"k", value)


def history(symbol: str) -> pl.DataFrame:
    return simulate_ohlcv(symbol, "1h", T0 - (FEATURE_BARS + 50) * HOUR_MS, T0, seed=5)


@pytest.fixture
def state_and_model():
    holder = {"model": model("1")}
    state = ScorerState(
        SYMBOLS, "1h", TOPICS, model=lambda: holder["model"], clock_ms=lambda: T0 + 2 * HOUR_MS
    )
    for symbol in SYMBOLS:
        state.seed(symbol, history(symbol))
    state.refresh(state.warm_work())
    return state, holder


def predictions(out) -> list[dict]:
    return [json.loads(m.value) for m in out if m.topic == "preds"]


def test_warm_start_scores_the_stored_bar_and_the_first_tick_has_a_forecast(state_and_model):
    state, _ = state_and_model
    ids = Offsets()
    tick = Tick("BTC/USDT", 100.0, 1.0, T0 + 60_000, "simulated")
    out, _, _ = state.process([ids.record(encode_tick(tick))])
    (pred,) = predictions(out)
    features = compute_features(history("BTC/USDT"), "1h")
    signal = heuristic_signal(features.tail(FEATURE_BARS), "1h", 60)
    window = latest_window(features.tail(FEATURE_BARS), MODEL_FEATURES, "1h").X
    assert pred["symbol"] == "BTC/USDT" and pred["price"] == 100.0
    assert pred["timestamp"] == "2025-06-01T00:01:00.000Z"
    assert pred["bar_timestamp"] == "2025-05-31T23:00:00.000Z"
    assert pred["risk_score"] == pytest.approx(signal.risk_score, rel=1e-9)
    assert pred["vol_regime"] == signal.vol_regime
    assert pred["nowcast_ret"] == pytest.approx(signal.nowcast_ret, rel=1e-9, abs=1e-15)
    assert pred["predicted_volatility"] == pytest.approx(float(window[0, -1, RV24]) * 1.1, rel=1e-6)
    assert pred["model_version"] == "1"
    assert pred["source"] == {"topic": "prices", "partition": 0, "offset": 0}
    assert pred["late"] is False and isinstance(pred["latency_ms"], int)


def test_invalid_ticks_go_to_the_dlq_with_the_original_bytes_and_the_rest_is_scored(state_and_model):
    state, _ = state_and_model
    ids = Offsets()
    good = encode_tick(Tick("ETH/USDT", 2500.0, 0.5, T0 + 1000))
    bad = [b"{oops", b'{"symbol":"DOGE/USDT","price":1,"volume":1,"timestamp":"2025-06-01T00:00:00Z"}', None]
    records = [
        ids.record(bad[0]),
        ids.record(good),
        ids.record(bad[1], 2),
        ids.record(bad[2]),
        ids.record(good),
    ]
    out, _, work = state.process(records)
    dead = [m for m in out if m.topic == "dlq"]
    assert [m.value for m in dead] == [b"{oops", bad[1], b""]
    headers = [dict(m.headers) for m in dead]
    assert [h["reason"].split(b":")[0] for h in headers] == [b"bad_json", b"unknown_symbol", b"bad_json"]
    assert headers[1]["source_partition"] == b"2" and headers[1]["source_offset"] == b"2"
    assert headers[0]["source_topic"] == b"prices" and dead[0].key == b"k"
    assert [p["source"]["offset"] for p in predictions(out)] == [1, 4]
    assert state.counters.dlq == {"bad_json": 2, "unknown_symbol": 1}
    assert work.offsets == {("prices", 0): 5, ("prices", 2): 3}


def test_a_bar_close_refreshes_features_and_forecasts_every_closed_symbol_in_one_call():
    calls: list[int] = []
    holder = {"model": model("1", calls)}
    state = ScorerState(
        SYMBOLS, "1h", TOPICS, model=lambda: holder["model"], clock_ms=lambda: T0 + 5 * HOUR_MS
    )
    full = {s: history(s) for s in SYMBOLS}
    for symbol in SYMBOLS:
        state.seed(symbol, full[symbol].head(full[symbol].height - 2))  # the last 2 bars come as ticks
    state.refresh(state.warm_work())
    assert calls == [2]  # both symbols' stored bars forecast together
    ids = Offsets()
    records = []
    for row_index in (-2, -1):
        for symbol in SYMBOLS:
            row = full[symbol].row(row_index, named=True)
            for offset_ms, price in ((0, row["open"]), (1, row["high"]), (2, row["low"]), (3, row["close"])):
                volume = row["volume"] / 4
                tick = Tick(symbol, price, volume, row["ts"] + offset_ms * 60_000)
                records.append(ids.record(encode_tick(tick)))
    records += [ids.record(encode_tick(Tick(s, 1.0, 0.0, T0 + 10))) for s in SYMBOLS]  # close the last bars
    out, _, work = state.process(records)
    assert work.new_bars == {
        "BTC/USDT": [T0 - 2 * HOUR_MS, T0 - HOUR_MS],
        "ETH/USDT": [T0 - 2 * HOUR_MS, T0 - HOUR_MS],
    }
    assert calls == [2, 4]  # one predict call for both closed bars of both symbols
    preds = predictions(out)
    assert len(preds) == len(records)
    for symbol in SYMBOLS:
        features = compute_features(full[symbol], "1h")
        mine = state.latest_features[symbol].tail(2)
        np.testing.assert_allclose(
            mine.select(MODEL_FEATURES).to_numpy(),
            features.tail(2).select(MODEL_FEATURES).to_numpy(),
            rtol=1e-9,
        )
        last = [p for p in preds if p["symbol"] == symbol][-1]
        expected = float(features["realized_vol_24"][-1]) * 1.1
        assert last["bar_timestamp"] == "2025-05-31T23:00:00.000Z"
        assert last["predicted_volatility"] == pytest.approx(expected, rel=1e-6)
        middle = [p for p in preds if p["symbol"] == symbol][4]  # first tick of the second live bar
        assert middle["bar_timestamp"] == "2025-05-31T22:00:00.000Z"
        assert middle["predicted_volatility"] == pytest.approx(
            float(features["realized_vol_24"][-2]) * 1.1, rel=1e-6
        )
    assert state.book.get("BTC/USDT").closed_count == FEATURE_BARS  # trimmed after the batch

    # A new champion: forecasts at the newest bar are made again with it, without a bar close.
    holder["model"] = model("2", calls, scale=2.0)
    out, _, _ = state.process([ids.record(encode_tick(Tick("BTC/USDT", 1.0, 0.0, T0 + 20)))])
    (pred,) = predictions(out)
    assert pred["model_version"] == "2" and calls[-1] == 2
    btc_rv24 = float(compute_features(full["BTC/USDT"], "1h")["realized_vol_24"][-1])
    assert pred["predicted_volatility"] == pytest.approx(btc_rv24 * 2.0, rel=1e-6)
    # Nothing new: no refresh, no forecaster call.
    before = len(calls)
    state.process([ids.record(encode_tick(Tick("BTC/USDT", 1.0, 0.0, T0 + 30)))])
    assert len(calls) == before


def test_without_a_model_forecasts_are_null_and_late_ticks_are_flagged():
    state = ScorerState(SYMBOLS, "1h", TOPICS, clock_ms=lambda: T0 + HOUR_MS)
    state.seed("BTC/USDT", history("BTC/USDT"))
    state.refresh(state.warm_work())
    ids = Offsets()
    late = Tick("BTC/USDT", 5.0, 1.0, T0 - 3 * HOUR_MS)
    fresh = Tick("ETH/USDT", 5.0, 1.0, T0)  # a symbol without history
    out, _, _ = state.process([ids.record(encode_tick(late)), ids.record(encode_tick(fresh))])
    first, second = predictions(out)
    assert first["late"] is True and first["predicted_volatility"] is None and first["model_version"] is None
    assert first["risk_score"] is not None
    assert second["risk_score"] is None and second["bar_timestamp"] is None
    assert state.counters.late == 1


def test_alerts_reach_the_alerts_topic_once_per_event():
    state = ScorerState(
        SYMBOLS,
        "1h",
        TOPICS,
        alert_config=AlertConfig(price_move_threshold=0.05),
        clock_ms=lambda: T0 + HOUR_MS,
    )
    ids = Offsets()
    prices = [100.0, 99.0, 97.0, 94.0, 93.0, 92.0]
    ticks = [Tick("BTC/USDT", p, 1.0, T0 + i * 1000) for i, p in enumerate(prices)]
    out, alerts, _ = state.process([ids.record(encode_tick(t)) for t in ticks])
    assert [a.type for a in alerts] == ["price_move"]
    (message,) = [json.loads(m.value) for m in out if m.topic == "alerts"]
    assert message["symbol"] == "BTC/USDT" and message["value"] == pytest.approx(-0.06)
    assert message["threshold"] == 0.05 and message["timestamp"] == "2025-06-01T00:00:03.000Z"
    assert len(predictions(out)) == 6


def test_poison_values_and_a_failure_to_score_one_tick_become_dead_letters_with_class_and_reason(
    state_and_model, monkeypatch
):
    state, _ = state_and_model
    ids = Offsets()
    good_btc = encode_tick(Tick("BTC/USDT", 64000.0, 0.5, T0 + 1000))
    good_eth = encode_tick(Tick("ETH/USDT", 2500.0, 0.5, T0 + 1000))
    huge_price = good_btc.replace(b'"price":64000.0', b'"price":' + b"9" * 400)
    nested = b"[" * 1000 + b"]" * 1000
    real_on_tick = state.alerts.on_tick

    def on_tick(symbol, ts, price):  # scoring ETH breaks (an alert-engine bug, say); BTC is unaffected
        if symbol == "ETH/USDT":
            raise ZeroDivisionError("division by zero")
        return real_on_tick(symbol, ts, price)

    monkeypatch.setattr(state.alerts, "on_tick", on_tick)
    records = [ids.record(huge_price), ids.record(good_btc), ids.record(nested), ids.record(good_eth)]
    out, _, work = state.process(records)
    dead = {int(dict(m.headers)["source_offset"]): m for m in out if m.topic == "dlq"}
    assert sorted(dead) == [0, 2, 3]
    reasons = {offset: dict(m.headers)["reason"].decode() for offset, m in dead.items()}
    classes = {offset: dict(m.headers)["error_class"] for offset, m in dead.items()}
    assert reasons[0].startswith("not_finite:price") and classes[0] == b"InvalidTick"
    assert reasons[2].startswith("not_object") and classes[2] == b"InvalidTick"
    assert (
        reasons[3] == "score_error: ZeroDivisionError: division by zero"
        and classes[3] == b"ZeroDivisionError"
    )
    assert dead[3].value == good_eth and dead[0].value == huge_price  # the original bytes
    assert [p["source"]["offset"] for p in predictions(out)] == [1]
    assert work.offsets == {("prices", 0): 4}  # every record moves the offset on
    assert state.counters.dlq == {"not_finite": 1, "not_object": 1, "score_error": 1}


def test_a_value_too_large_for_the_dlq_is_cut_and_says_so():
    state = ScorerState(SYMBOLS, "1h", TOPICS, clock_ms=lambda: T0, dlq_max_value_bytes=1000)
    big = b"x" * 20_000  # past MAX_TICK_BYTES as well
    out, _, _ = state.process([Offsets().record(big)])
    (dead,) = out
    headers = dict(dead.headers)
    assert dead.value == big[:1000]
    assert headers["value_truncated"] == b"true" and headers["value_bytes"] == b"20000"
    assert headers["reason"].startswith(b"too_large")
