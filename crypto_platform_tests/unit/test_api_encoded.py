"""Pre-encoded ml-signal answers (serving.api.encoded): the body a request gets is byte for byte what
encoding the answer with that request's time would give."""

from __future__ import annotations

import msgspec
import pytest

from serving.api import schemas
from serving.api.encoded import NOW_PLACEHOLDER, EncodedAnswer, EncodedAnswers


def _answer(now: str, heuristic: bool = True) -> schemas.MLSignalResponse:
    prediction = schemas.MLPrediction(
        predicted_volatility=0.0123, horizon_hours=24.0, volatility_regime="normal", risk_level="medium",
        current_volatility=None, confidence=0.7, prediction_timestamp=now,
        bar_timestamp="2026-12-03T09:00:00Z",
        intervals=[schemas.PredictionInterval(level=0.8, lower=0.009, upper=0.016)],
        value_at_risk=0.028, expected_shortfall=0.032, var_level=0.99,
    )  # fmt: skip
    comparison = schemas.SignalResponse(
        symbol="BTC/USDT", horizon_min=60, risk_score=0.4, nowcast_ret=0.001, vol_regime="normal",
        method="heuristic", exchange="binance", timeframe="1h", timestamp="2026-12-03T09:00:00Z",
        source="simulated",
    )  # fmt: skip
    return schemas.MLSignalResponse(
        symbol="BTC/USDT", method="ml", timestamp=now, model_version="7", ml_prediction=prediction,
        exchange="binance", timeframe="1h", source="simulated",
        heuristic_comparison=comparison if heuristic else None,
    )  # fmt: skip


@pytest.mark.parametrize("heuristic", [True, False])
def test_the_rendered_body_is_the_answer_encoded_with_the_request_time(heuristic):
    encoded = EncodedAnswer.of(_answer(NOW_PLACEHOLDER, heuristic), {"symbol": "BTC/USDT"})
    assert len(encoded.pieces) == 3  # split around both "now" fields
    for now in ("2026-12-03T09:59:59.000001Z", "2026-12-03T10:00:00.123456Z"):
        body = encoded.render(now)
        assert body == msgspec.json.encode(_answer(now, heuristic))
        decoded = msgspec.json.decode(body)
        assert decoded["timestamp"] == decoded["ml_prediction"]["prediction_timestamp"] == now
        assert decoded["ml_prediction"]["bar_timestamp"] == "2026-12-03T09:00:00Z"  # not a "now" field


def test_answers_are_built_once_per_key_and_the_oldest_evicted():
    built: list[str] = []

    def build(key: str):
        def make() -> EncodedAnswer:
            built.append(key)
            return EncodedAnswer.of(_answer(NOW_PLACEHOLDER), {"key": key})

        return make

    answers = EncodedAnswers(max_entries=2)
    first = answers.get("a", build("a"))
    assert answers.get("a", build("a")) is first
    answers.get("b", build("b"))
    answers.get("c", build("c"))  # evicts "a"
    answers.get("a", build("a"))
    assert built == ["a", "b", "c", "a"] and len(answers) == 2
