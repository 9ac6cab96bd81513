"""Timeframes the platform accepts, and their length in milliseconds."""

from __future__ import annotations

import math
from datetime import UTC, datetime

HOUR_MS = 3_600_000

# Whitelist: only bar lengths the whole platform (features, regimes, partitions) is built for.
TIMEFRAME_MS: dict[str, int] = {
    "1m": 60_000,
    "5m": 5 * 60_000,
    "15m": 15 * 60_000,
    "30m": 30 * 60_000,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": 24 * HOUR_MS,
}


class UnsupportedTimeframeError(ValueError):
    """A timeframe outside the whitelist."""


def validate_timeframe(timeframe: str) -> str:
    tf = str(timeframe).strip()
    if tf not in TIMEFRAME_MS:
        raise UnsupportedTimeframeError(
            f"timeframe {timeframe!r} is not supported; use one of {', '.join(TIMEFRAME_MS)}"
        )
    return tf


def timeframe_ms(timeframe: str) -> int:
    return TIMEFRAME_MS[validate_timeframe(timeframe)]


def hours_per_bar(timeframe: str) -> float:
    return timeframe_ms(timeframe) / HOUR_MS


def sqrt_time_scale(timeframe: str) -> float:
    """√(bar length / 1 h): how a 1-hour volatility threshold scales to another bar length."""
    return math.sqrt(hours_per_bar(timeframe))


def bars_per_day(timeframe: str) -> int:
    return max(1, (24 * HOUR_MS) // timeframe_ms(timeframe))


def parse_instant(value: str | int) -> int:
    """UTC epoch ms from an ISO-8601 time (`2024-06-01T12:30Z`, naive = UTC) or an integer of ms."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)
