"""Alert rules of the scorer, de-duplicated so that one market event is one alert.

Rules (per symbol):
- `turbulent_regime`: the heuristic regime at a newly closed bar *enters* `turbulent` (a transition:
  a symbol that stays turbulent does not alert again). value = vol24, threshold = the turbulent vol.
- `price_move`: the price moved by at least `price_move_threshold` (fraction) against the lowest or
  highest price seen within the last `price_move_window_ms` (event time). value = the signed move.
- `forecast_volatility`: the ML forecast of the next `horizon_bars` bars' volatility reaches
  `forecast_threshold` (default: `lib.forecast.turbulent_forecast_threshold`, the level from which
  every face describes the forecast as turbulent).

De-duplication is a small state machine per (symbol, type), `Gate`: it fires when the condition holds
while *armed* and at least `cooldown_ms` after its last alert, then disarms; it re-arms only once the
value has fallen back below `rearm_ratio` × threshold (hysteresis), so a value hovering around the
threshold or a move still inside its window cannot fire again. A gate starts disarmed when its first
observation already holds the condition (a scorer restarting into a turbulent market does not announce
an "entry" it did not see).

Severity: `critical` when |value| ≥ `critical_multiple` × threshold, else `warning`. Timestamps are event
times (the tick's or the bar's), so a replay produces the same alerts at any speed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from crypto_platform.lib.forecast import turbulent_forecast_threshold
from crypto_platform.lib.signals import vol_thresholds
from crypto_platform.lib.stream.ticks import format_timestamp

TURBULENT_REGIME = "turbulent_regime"
PRICE_MOVE = "price_move"
FORECAST_VOLATILITY = "forecast_volatility"
ALERT_TYPES: tuple[str, ...] = (TURBULENT_REGIME, PRICE_MOVE, FORECAST_VOLATILITY)


@dataclass(frozen=True)
class AlertConfig:
    price_move_threshold: float = 0.03
    price_move_window_ms: int = 5 * 60_000
    forecast_threshold: float | None = None  # None: lib.forecast's turbulent forecast threshold
    cooldown_ms: int = 15 * 60_000
    rearm_ratio: float = 0.8
    critical_multiple: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.rearm_ratio <= 1:
            raise ValueError(f"rearm_ratio must be in (0, 1], got {self.rearm_ratio}")
        if self.price_move_threshold <= 0 or self.price_move_window_ms <= 0 or self.cooldown_ms < 0:
            raise ValueError("price_move_threshold and price_move_window_ms must be > 0, cooldown_ms ≥ 0")


@dataclass(frozen=True)
class Alert:
    type: str
    severity: str  # "warning" | "critical"
    symbol: str
    value: float
    threshold: float
    message: str
    timestamp: str  # ISO-8601 UTC of the event (tick or bar)
    timestamp_ms: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Gate:
    """Fire once per event: armed → fire (disarm) → re-arm after the condition cleared (hysteresis)."""

    __slots__ = ("armed", "cooldown_ms", "last_fired_ms", "seen")

    def __init__(self, cooldown_ms: int) -> None:
        self.cooldown_ms = cooldown_ms
        self.armed = True
        self.last_fired_ms: int | None = None
        self.seen = False

    def update(self, active: bool, cleared: bool, now_ms: int) -> bool:
        if not self.seen:
            self.seen = True
            if active:  # already in the condition at the first look: not an event we witnessed start
                self.armed = False
                return False
        if not self.armed:
            if cleared:
                self.armed = True
            return False
        if not active:
            return False
        if self.last_fired_ms is not None and now_ms - self.last_fired_ms < self.cooldown_ms:
            return False
        self.armed = False
        self.last_fired_ms = now_ms
        return True


class MoveWindow:
    """Min and max price over a sliding event-time window, O(1) amortised per tick (monotonic deques)."""

    __slots__ = ("highs", "lows", "window_ms")

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.highs: deque[tuple[int, float]] = deque()
        self.lows: deque[tuple[int, float]] = deque()

    def add(self, ts: int, price: float) -> tuple[float, float]:
        """Add a price and return (lowest, highest) in the window, this price included."""
        horizon = ts - self.window_ms
        highs, lows = self.highs, self.lows
        while highs and highs[-1][1] <= price:
            highs.pop()
        highs.append((ts, price))
        while lows and lows[-1][1] >= price:
            lows.pop()
        lows.append((ts, price))
        while highs[0][0] < horizon:
            highs.popleft()
        while lows[0][0] < horizon:
            lows.popleft()
        return lows[0][1], highs[0][1]


class AlertEngine:
    def __init__(self, timeframe: str, horizon_bars: int = 24, config: AlertConfig | None = None) -> None:
        self.config = config or AlertConfig()
        self.timeframe = timeframe
        _, self.turbulent_vol = vol_thresholds(timeframe)
        self.horizon_bars = horizon_bars
        self._gates: dict[tuple[str, str], Gate] = {}
        self._windows: dict[str, MoveWindow] = {}
        # The price-move rule runs on every tick: its window and gate per symbol in one lookup.
        self._price_rule: dict[str, tuple[MoveWindow, Gate]] = {}
        # The price-move rule's levels: a move of `move_threshold` fires, one under `move_rearm` re-arms.
        self.move_threshold = self.config.price_move_threshold
        self.move_rearm = self.config.price_move_threshold * self.config.rearm_ratio

    @property
    def forecast_threshold(self) -> float:
        configured = self.config.forecast_threshold
        if configured is not None:
            return configured
        return turbulent_forecast_threshold(self.timeframe, self.horizon_bars)

    def _gate(self, symbol: str, kind: str) -> Gate:
        gate = self._gates.get((symbol, kind))
        if gate is None:
            gate = self._gates[(symbol, kind)] = Gate(self.config.cooldown_ms)
        return gate

    def _alert(self, kind: str, symbol: str, value: float, threshold: float, ts: int, text: str) -> Alert:
        critical = abs(value) >= self.config.critical_multiple * threshold
        return Alert(
            type=kind,
            severity="critical" if critical else "warning",
            symbol=symbol,
            value=value,
            threshold=threshold,
            message=f"{symbol}: {text}",
            timestamp=format_timestamp(ts),
            timestamp_ms=ts,
        )

    def price_rule(self, symbol: str) -> tuple[MoveWindow, Gate]:
        """The symbol's price-move window and gate (created on first use): the state `on_tick` steps,
        which a batch evaluation of the same rule (serving.stream.batch_alerts) steps too."""
        rule = self._price_rule.get(symbol)
        if rule is None:
            window = self._windows[symbol] = MoveWindow(self.config.price_move_window_ms)
            rule = self._price_rule[symbol] = (window, self._gate(symbol, PRICE_MOVE))
        return rule

    def price_move_alert(self, symbol: str, move: float, ts_ms: int) -> Alert:
        """The alert of a price move that fired its gate."""
        minutes = self.config.price_move_window_ms / 60_000
        text = f"price moved {move:+.2%} within {minutes:g} min"
        return self._alert(PRICE_MOVE, symbol, move, self.move_threshold, ts_ms, text)

    def on_tick(self, symbol: str, ts_ms: int, price: float) -> Alert | None:
        """Price-move rule; call with every in-order tick (late ticks are skipped by the scorer)."""
        rule = self._price_rule.get(symbol) or self.price_rule(symbol)
        window, gate = rule
        low, high = window.add(ts_ms, price)
        up, down = price / low - 1.0, price / high - 1.0
        move = up if up >= -down else down
        magnitude = abs(move)
        if not gate.update(magnitude >= self.move_threshold, magnitude < self.move_rearm, ts_ms):
            return None
        return self.price_move_alert(symbol, move, ts_ms)

    def on_regime(self, symbol: str, bar_ts_ms: int, vol: float, regime: str) -> Alert | None:
        """Turbulent-regime entry, evaluated at each newly closed bar."""
        threshold = self.turbulent_vol
        turbulent = regime == "turbulent"
        if not self._gate(symbol, TURBULENT_REGIME).update(turbulent, not turbulent, bar_ts_ms):
            return None
        return self._alert(
            TURBULENT_REGIME,
            symbol,
            vol,
            threshold,
            bar_ts_ms,
            f"entered the turbulent regime (vol24 {vol:.4f} ≥ {threshold:.4f} per {self.timeframe} bar)",
        )

    def on_forecast(self, symbol: str, bar_ts_ms: int, predicted: float) -> Alert | None:
        """Forecast-volatility rule, evaluated when a new forecast is made (a bar closed, a new model)."""
        threshold = self.forecast_threshold
        if not self._gate(symbol, FORECAST_VOLATILITY).update(
            predicted >= threshold, predicted < threshold * self.config.rearm_ratio, bar_ts_ms
        ):
            return None
        return self._alert(
            FORECAST_VOLATILITY,
            symbol,
            predicted,
            threshold,
            bar_ts_ms,
            f"forecast volatility of the next {self.horizon_bars} bars {predicted:.4f} ≥ {threshold:.4f}",
        )
