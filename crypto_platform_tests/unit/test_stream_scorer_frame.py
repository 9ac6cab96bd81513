"""The scorer with a feature-frame champion (HAR+): the cross-symbol frame from every symbol's bars, a
stale symbol (no forecast, counted, never a dead letter) and the re-forecast once its bar arrives."""

from __future__ import annotations

import json

import polars as pl
import pytest

from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.model.intervals import value_at_risk
from crypto_platform.lib.model.windows import FEATURE_BARS
from crypto_platform.lib.stream.ticks import Tick, encode_tick
from crypto_platform_tests.fixtures.frame_models import FRAME_SYMBOLS, fit_har_plus_champion, frame_rows
from crypto_platform_tests.unit.test_frame_champion_serving import FIT_END_MS, served_model
from serving.core import frames
from serving.stream.scorer_state import InputRecord, OutputTopics, ScorerState

HOUR_MS = 3_600_000
T0 = 1_748_736_000_000  # 2025-06-01T00:00Z
LAST_BAR = T0 - HOUR_MS
TOPICS = OutputTopics("preds", "alerts", "dlq")


@pytest.fixture(scope="module")
def champion():
    forecaster, _ = fit_har_plus_champion(end_ms=FIT_END_MS)
    return forecaster


@pytest.fixture(scope="module")
def full() -> dict[str, pl.DataFrame]:
    return {s: simulate_ohlcv(s, "1h", T0 - (FEATURE_BARS + 50) * HOUR_MS, T0, seed=5) for s in FRAME_SYMBOLS}


def expected_at(champion, full: dict[str, pl.DataFrame], ts: int) -> dict[str, float]:
    bars = pl.concat([f.with_columns(pl.lit(s).alias("symbol")) for s, f in full.items()])
    out = champion.predict_frame(frame_rows(bars.filter(pl.col("ts") <= ts)))
    at = out[out["ts"] == ts]
    return dict(zip(at["symbol"], at["predicted_volatility"], strict=True))


class Offsets:
    def __init__(self) -> None:
        self.next = 0

    def record(self, tick: Tick) -> InputRecord:
        self.next += 1
        return InputRecord("prices", 0, self.next - 1, T0, b"k", encode_tick(tick))


def bar_ticks(ids: Offsets, symbol: str, row: dict, closing_ms: int) -> list[InputRecord]:
    """Ticks that rebuild `row` exactly (open, high, low, close), then one that closes its bar."""
    ticks = [
        Tick(symbol, price, row["volume"] / 4, row["ts"] + k * 60_000)
        for k, price in enumerate((row["open"], row["high"], row["low"], row["close"]))
    ]
    return [ids.record(t) for t in (*ticks, Tick(symbol, row["close"], 0.0, closing_ms))]


def predictions(out) -> list[dict]:
    return [json.loads(m.value) for m in out if m.topic == "preds"]


def test_a_frame_champion_scores_each_symbol_with_the_others_latest_rows(champion, full):
    model = served_model(champion)
    state = ScorerState(FRAME_SYMBOLS, "1h", TOPICS, model=lambda: model, clock_ms=lambda: T0 + HOUR_MS)
    for symbol in FRAME_SYMBOLS:
        state.seed(symbol, full[symbol].head(full[symbol].height - 1))  # the last bar comes as ticks
    state.refresh(state.warm_work())
    warm = expected_at(champion, full, LAST_BAR - HOUR_MS)
    for symbol in FRAME_SYMBOLS:
        (score,) = [s for ts, s in state.scores[symbol].items() if ts == LAST_BAR - HOUR_MS]
        assert score.predicted_volatility == pytest.approx(warm[symbol], rel=1e-9)
    ids = Offsets()

    # BTC closes the last bar first: ETH has no bar then, so BTC's bar has no forecast (yet).
    btc_row = full["BTC/USDT"].row(-1, named=True)
    out, _, work = state.process(bar_ticks(ids, "BTC/USDT", btc_row, T0 + 10))
    closing = predictions(out)[-1]
    assert closing["bar_timestamp"] == "2025-05-31T23:00:00.000Z"
    assert closing["predicted_volatility"] is None and closing["model_version"] is None
    assert closing["intervals"] is None and closing["value_at_risk"] is None
    assert closing["risk_score"] is not None  # the heuristic does not need the other symbol
    assert work.missing_forecasts == {frames.STALE: 1} and not [m for m in out if m.topic == "dlq"]
    assert state.counters.missing_forecasts == {frames.STALE: 1}

    # ETH's bar arrives: ETH is forecast, and BTC's bar is forecast again from the complete frame.
    eth_row = full["ETH/USDT"].row(-1, named=True)
    out, _, work = state.process(bar_ticks(ids, "ETH/USDT", eth_row, T0 + 20))
    expected = expected_at(champion, full, LAST_BAR)
    eth = predictions(out)[-1]
    assert eth["predicted_volatility"] == pytest.approx(expected["ETH/USDT"], rel=1e-6)
    assert work.missing_forecasts == {} and work.refresh_symbols == set(FRAME_SYMBOLS)
    assert state.scores["BTC/USDT"][LAST_BAR].predicted_volatility is not None  # in ETH's batch
    out, _, _ = state.process([ids.record(Tick("BTC/USDT", btc_row["close"], 0.0, T0 + 30))])
    (btc,) = predictions(out)
    assert btc["bar_timestamp"] == "2025-05-31T23:00:00.000Z" and btc["model_version"] == "1"
    assert btc["predicted_volatility"] == pytest.approx(expected["BTC/USDT"], rel=1e-6)
    for pred in (eth, btc):
        value = pred["predicted_volatility"]
        assert [i["level"] for i in pred["intervals"]] == [0.8, 0.95]
        assert pred["intervals"][0]["lower"] < value < pred["intervals"][0]["upper"]
        assert pred["value_at_risk"] == pytest.approx(float(value_at_risk(value, 0.99)))
        assert pred["expected_shortfall"] > pred["value_at_risk"] and pred["var_level"] == 0.99


def test_a_symbol_with_an_empty_buffer_leaves_the_others_without_forecasts_not_crashing(champion, full):
    model = served_model(champion)
    state = ScorerState(FRAME_SYMBOLS, "1h", TOPICS, model=lambda: model, clock_ms=lambda: T0 + HOUR_MS)
    state.seed("BTC/USDT", full["BTC/USDT"])  # ETH: nothing stored, no ticks yet
    state.refresh(state.warm_work())
    out, _, _ = state.process([Offsets().record(Tick("BTC/USDT", 100.0, 0.0, T0 + 10))])
    (pred,) = predictions(out)
    assert pred["predicted_volatility"] is None and pred["risk_score"] is not None
    assert state.counters.missing_forecasts[frames.STALE] >= 1
