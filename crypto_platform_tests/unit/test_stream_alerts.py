"""Alert rules and their de-duplication: one event, one alert."""

from __future__ import annotations

import math

import pytest

from crypto_platform.lib.signals import vol_thresholds
from crypto_platform.lib.stream.alerts import (
    FORECAST_VOLATILITY,
    PRICE_MOVE,
    TURBULENT_REGIME,
    AlertConfig,
    AlertEngine,
    Gate,
)

MIN = 60_000
HOUR = 60 * MIN
T0 = 1_748_736_000_000


def test_gate_fires_once_then_needs_the_value_to_clear_and_the_cooldown_to_pass():
    gate = Gate(cooldown_ms=10)
    assert gate.update(False, True, 0) is False
    assert gate.update(True, False, 1) is True
    assert [gate.update(True, False, t) for t in range(2, 50)] == [False] * 48  # still active: no repeat
    assert gate.update(False, False, 50) is False  # below the threshold but inside the hysteresis band
    assert gate.update(True, False, 51) is False  # so still disarmed
    assert gate.update(False, True, 52) is False  # cleared: re-armed
    assert gate.update(True, False, 53) is True


def test_gate_cooldown_delays_a_re_fire_after_a_quick_re_arm():
    gate = Gate(cooldown_ms=100)
    gate.update(False, True, 0)
    assert gate.update(True, False, 10)
    gate.update(False, True, 20)
    assert gate.update(True, False, 30) is False  # armed, but within the cooldown
    assert gate.update(True, False, 111) is True


def test_a_gate_that_starts_in_the_condition_does_not_announce_it():
    gate = Gate(cooldown_ms=0)
    assert gate.update(True, False, 0) is False
    assert gate.update(False, True, 1) is False
    assert gate.update(True, False, 2) is True


def test_turbulent_regime_alerts_on_entry_only():
    engine = AlertEngine("1h")
    _, turbulent = vol_thresholds("1h")
    regimes = ["normal", "turbulent", "turbulent", "turbulent", "normal", "turbulent"]
    vols = [0.01, 0.02, 0.03, 0.05, 0.01, 0.04]
    fired = [
        engine.on_regime("BTC/USDT", T0 + i * HOUR, v, r)
        for i, (v, r) in enumerate(zip(vols, regimes, strict=True))
    ]
    alerts = [a for a in fired if a is not None]
    assert [a.timestamp_ms for a in alerts] == [T0 + HOUR, T0 + 5 * HOUR]  # 2 entries, cooldown 15 min
    first = alerts[0]
    assert first.type == TURBULENT_REGIME and first.threshold == turbulent and first.value == 0.02
    assert first.severity == "warning" and alerts[1].severity == "critical"  # 0.04 ≥ 2 × 0.015
    assert set(first.to_dict()) >= {
        "type",
        "severity",
        "symbol",
        "value",
        "threshold",
        "message",
        "timestamp",
    }
    assert first.timestamp == "2025-06-01T01:00:00.000Z"


def test_a_price_storm_is_one_alert_per_symbol():
    engine = AlertEngine("1h", config=AlertConfig(price_move_threshold=0.03, price_move_window_ms=5 * MIN))
    alerts = []
    price = 100.0
    for i in range(600):  # a crash of 10 % over 100 s, then the price stays down, one tick a second
        price = max(90.0, price - 0.1)
        for symbol in ("BTC/USDT", "ETH/USDT"):
            alert = engine.on_tick(symbol, T0 + i * 1000, price)
            if alert is not None:
                alerts.append(alert)
    assert [(a.symbol, a.type) for a in alerts] == [("BTC/USDT", PRICE_MOVE), ("ETH/USDT", PRICE_MOVE)]
    assert alerts[0].value == pytest.approx(-0.03, abs=0.0011) and alerts[0].value < 0
    assert "within 5 min" in alerts[0].message


def test_a_move_outside_the_window_is_not_a_move_and_rises_count_too():
    engine = AlertEngine("1h", config=AlertConfig(price_move_threshold=0.02, price_move_window_ms=MIN))
    prices = [100.0, 101.0, 102.0, 103.0, 104.0]  # +1 % per minute: never 2 % within one minute
    assert all(engine.on_tick("X/USDT", T0 + i * MIN, p) is None for i, p in enumerate(prices))
    alert = engine.on_tick("X/USDT", T0 + 4 * MIN + 10_000, 107.0)
    assert alert is not None and alert.value == pytest.approx(107 / 104 - 1)


def test_forecast_volatility_threshold_defaults_to_the_turbulent_regime_of_the_horizon():
    engine = AlertEngine("1h", horizon_bars=24)
    threshold = vol_thresholds("1h")[1] * math.sqrt(24)
    assert engine.forecast_threshold == pytest.approx(threshold)
    assert engine.on_forecast("BTC/USDT", T0, threshold * 0.5) is None
    alert = engine.on_forecast("BTC/USDT", T0 + HOUR, threshold * 1.1)
    assert alert is not None and alert.type == FORECAST_VOLATILITY and alert.severity == "warning"
    assert engine.on_forecast("BTC/USDT", T0 + 2 * HOUR, threshold * 1.5) is None
    assert engine.on_forecast("BTC/USDT", T0 + 3 * HOUR, threshold * 0.9) is None  # within hysteresis
    assert engine.on_forecast("BTC/USDT", T0 + 4 * HOUR, threshold * 1.2) is None
    assert engine.on_forecast("BTC/USDT", T0 + 5 * HOUR, threshold * 0.7) is None  # cleared
    assert engine.on_forecast("BTC/USDT", T0 + 6 * HOUR, threshold * 2.5).severity == "critical"
    custom = AlertEngine("1h", config=AlertConfig(forecast_threshold=0.5))
    assert custom.forecast_threshold == 0.5


def test_config_is_validated():
    with pytest.raises(ValueError):
        AlertConfig(rearm_ratio=0)
    with pytest.raises(ValueError):
        AlertConfig(price_move_threshold=-1)
