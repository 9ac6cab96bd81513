"""Bars for one symbol and window: from the exchange, the simulator, or ("auto") the exchange if reachable.

`auto` asks the exchange once per process (a short probe, remembered) and, if it is unreachable,
serves simulated bars with a loud warning, so a laptop without network still runs the whole
pipeline. Once the exchange has answered, later failures raise instead of falling back: mixing real
and simulated bars in one dataset would be worse than a failed (retryable) partition. An unknown
symbol is the caller's error and never falls back either.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import polars as pl

from crypto_platform.lib.market.client import ExchangeClient, ExchangeUnavailableError, get_exchange_client
from crypto_platform.lib.market.schema import Gap, empty_ohlcv, find_gaps
from crypto_platform.lib.market.simulator import SIMULATED_SOURCE, SIMULATION_ORIGIN_MS, simulate_ohlcv
from crypto_platform.lib.market.symbols import normalize_symbol
from crypto_platform.lib.market.timeframes import timeframe_ms, validate_timeframe
from crypto_platform.settings import MARKET_SOURCES, Settings, get_settings

log = logging.getLogger(__name__)

EXCHANGE_SOURCE = "exchange"
# Auto mode's one look at the exchange: long enough for a slow answer, short enough that an
# offline run does not wait out the full retry budget.
PROBE_BUDGET_S = 5.0


@dataclass(frozen=True)
class MarketData:
    """Bars of [since, until) and where they really came from ("exchange" or "simulated")."""

    frame: pl.DataFrame
    source: str
    requests: int
    gaps: list[Gap] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # The clock the bars were cut at (the exchange's for exchange data, the host's for simulated):
    # closed bars of the window were asked for up to `now_ms`; None = unknown (then assume the host's).
    now_ms: int | None = None


# config key of a client → (reachable, why not)
_probe_outcomes: dict[tuple[str, str], tuple[bool, str]] = {}
_probe_lock = threading.Lock()


def reset_exchange_probe() -> None:
    """Forget auto mode's remembered probe outcomes (tests; or after the network came back)."""
    with _probe_lock:
        _probe_outcomes.clear()


def _exchange_reachable(client: ExchangeClient, settings: Settings) -> tuple[bool, str]:
    # The lock is held through the probe so concurrent callers wait for the one probe, not probe too.
    with _probe_lock:
        known = _probe_outcomes.get(client.config_key)
        if known is not None:
            return known
        try:
            client.probe(min(PROBE_BUDGET_S, settings.exchange_retry_budget_s))
            outcome = (True, "")
        except ExchangeUnavailableError as exc:
            outcome = (False, str(exc))
        _probe_outcomes[client.config_key] = outcome
        return outcome


def _simulated(
    symbol: str, timeframe: str, since_ms: int, until_ms: int | None, now: int, seed: int
) -> pl.DataFrame:
    """Simulated bars of [since, until) that have closed by `now`: the simulator itself has no clock."""
    bar_ms = timeframe_ms(timeframe)
    end = now // bar_ms * bar_ms if until_ms is None else min(until_ms, now // bar_ms * bar_ms)
    if end <= max(since_ms, SIMULATION_ORIGIN_MS):
        return empty_ohlcv()
    return simulate_ohlcv(symbol, timeframe, since_ms, end, seed=seed)


def market_now_ms(source: str, settings: Settings | None = None) -> int:
    """The market's clock for `source`: the exchange's (one /time request, cached by the client) for
    exchange data, the host's for simulated data.

    Schedules and sensors that judge "which bars have closed" must read the same clock the bars were
    cut at; against a replay server frozen or moved in the past, the host's clock would be wrong by
    months. `auto` reads the exchange's clock and falls back to the host's when it cannot be reached
    (as the bars themselves would).
    """
    settings = settings or get_settings()
    if source.strip().lower() == SIMULATED_SOURCE:
        return int(time.time() * 1000)
    try:
        return get_exchange_client(settings).now_ms()
    except ExchangeUnavailableError:
        if source.strip().lower() == EXCHANGE_SOURCE:
            raise
        return int(time.time() * 1000)


def load_bars(
    symbol: str,
    timeframe: str,
    since_ms: int,
    until_ms: int | None,
    source: str = "auto",
    settings: Settings | None = None,
    client: ExchangeClient | None = None,
    now_ms: int | None = None,
) -> MarketData:
    """Closed bars of `symbol` with ts in [since_ms, until_ms) (until None = up to now).

    source: "exchange" (the client; errors raise), "simulated" (the seeded simulator), or "auto".
    `client` defaults to the process's shared client for `settings`; `now_ms` to the exchange's
    clock for exchange data and the host's for simulated data.
    """
    settings = settings or get_settings()
    source = source.strip().lower()
    if source not in MARKET_SOURCES:
        raise ValueError(f"source must be one of {MARKET_SOURCES}, got {source!r}")
    unified = normalize_symbol(symbol)
    tf = validate_timeframe(timeframe)
    if until_ms is not None and until_ms < since_ms:
        raise ValueError(f"until_ms ({until_ms}) is before since_ms ({since_ms})")

    warnings: list[str] = []
    if source != "simulated":
        client = client or get_exchange_client(settings)
        reachable, reason = (True, "") if source == EXCHANGE_SOURCE else _exchange_reachable(client, settings)
        if reachable:
            result = client.fetch_ohlcv(unified, tf, since_ms, until_ms, now_ms=now_ms)
            return MarketData(
                result.frame, EXCHANGE_SOURCE, result.requests, result.gaps, warnings, now_ms=result.now_ms
            )
        message = (
            f"SIMULATED DATA: the exchange is unreachable, so {unified} {tf} bars come from the seeded "
            f"simulator (seed {settings.simulator_seed}), not the market. Reason: {reason}"
        )
        log.warning(message)
        warnings.append(message)

    now = int(time.time() * 1000) if now_ms is None else now_ms
    frame = _simulated(unified, tf, since_ms, until_ms, now, settings.simulator_seed)
    return MarketData(frame, SIMULATED_SOURCE, 0, find_gaps(frame, timeframe_ms(tf)), warnings, now_ms=now)
