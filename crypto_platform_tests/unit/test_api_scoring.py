"""The serving path's forecast memo: one forward pass per (model version, closed bar)."""

from __future__ import annotations

import numpy as np

from crypto_platform.lib.features import MODEL_FEATURES, compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.model.windows import FEATURE_BARS, SEQUENCE_LENGTH
from serving.api.scoring import FeatureSnapshot, ml_prediction
from serving.core.market import Bars
from serving.core.model_store import LoadedModel

HOUR_MS = 3_600_000
END_MS = 1_700_000_000_000 // HOUR_MS * HOUR_MS


def _snapshot() -> FeatureSnapshot:
    frame = simulate_ohlcv("BTC/USDT", "1h", END_MS - FEATURE_BARS * HOUR_MS, END_MS)
    bars = Bars("BTC/USDT", "1h", frame, "simulated", "store", END_MS - HOUR_MS)
    return FeatureSnapshot(bars, compute_features(frame, "1h"))


def _model(version: str, calls: list[np.ndarray], level: float) -> LoadedModel:
    def predict(X: np.ndarray) -> np.ndarray:
        calls.append(X)
        return np.full(X.shape[0], level)

    return LoadedModel(
        name="crypto-volatility",
        version=version,
        alias="champion",
        family="lstm",
        run_id=f"run-{version}",
        load_time=0.0,
        metrics={},
        sequence_length=SEQUENCE_LENGTH,
        feature_columns=MODEL_FEATURES,
        timeframe="1h",
        horizon_bars=24,
        predict=predict,
    )


def test_a_bar_is_forecast_once_per_model_version():
    snap = _snapshot()
    calls: list[np.ndarray] = []
    v1 = _model("1", calls, 0.02)
    first, _ = ml_prediction(v1, snap)
    again, _ = ml_prediction(v1, snap)
    assert len(calls) == 1
    assert calls[0].shape == (1, SEQUENCE_LENGTH, len(MODEL_FEATURES))
    assert first.predicted_volatility == again.predicted_volatility == 0.02

    # A reloaded champion (another version) is never answered from the old version's memo.
    v2 = _model("2", calls, 0.05)
    swapped, _ = ml_prediction(v2, snap)
    assert len(calls) == 2
    assert swapped.predicted_volatility == 0.05

    # A new bar is a new snapshot: forecast afresh.
    ml_prediction(v1, _snapshot())
    assert len(calls) == 3
