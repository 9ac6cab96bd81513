"""Ticks on the `crypto-prices` topic: one trade/price observation of one symbol.

Wire format (UTF-8 JSON object): `{"symbol": "BTC/USDT", "price": 64123.5, "volume": 0.25,
"timestamp": "2025-06-01T00:30:00.123Z", "source": "simulated"}`. The Kafka key is the normalised symbol
(`tick_key`), so every tick of a symbol lands on one partition and stays ordered.

`parse_tick` is the scorer's gate: anything it rejects goes to the dead-letter topic with the
`InvalidTick.reason`, a short stable code (`bad_json`, `missing_field:price`, ...) followed by a detail
after ": " where one helps. Dashboards group by the code (`InvalidTick.code`), so codes never change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import msgspec

from crypto_platform.lib.market.symbols import InvalidSymbolError, normalize_symbol

REQUIRED_FIELDS: tuple[str, ...] = ("symbol", "price", "volume", "timestamp")
DEFAULT_SOURCE = "unknown"
# A producer's clock may run a little ahead of ours; more than this and the tick is rejected, since a bar
# built from it would close every real bar before its time.
DEFAULT_MAX_FUTURE_MS = 60_000
# The reasons `parse_tick` can give (the part before any ":"), for metrics and documentation.
REASON_CODES: tuple[str, ...] = (
    "bad_json",
    "not_object",
    "missing_field",
    "bad_type",
    "not_finite",
    "bad_price",
    "bad_volume",
    "bad_symbol",
    "unknown_symbol",
    "bad_timestamp",
    "future_timestamp",
)


# Symbols repeat on every tick: normalise each spelling once (invalid ones raise and are not cached).
_normalize = lru_cache(maxsize=1024)(normalize_symbol)


class InvalidTick(ValueError):
    """A message on the prices topic that is not a usable tick; `reason` is `code[:field][: detail]`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def code(self) -> str:
        """The stable code alone (`missing_field:price: ...` → `missing_field`)."""
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class Tick:
    symbol: str  # normalised BASE/QUOTE
    price: float
    volume: float  # base-asset quantity traded with this tick (0 for a pure price observation)
    timestamp_ms: int  # UTC epoch milliseconds
    source: str = DEFAULT_SOURCE  # "exchange" | "simulated" | "replay" | ...


@lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def format_timestamp(ts_ms: int) -> str:
    """ISO-8601 UTC with milliseconds and a "Z": 2025-06-01T00:30:00.123Z."""
    # The scorer formats two timestamps per tick; ticks of one second share the strftime part.
    seconds, millis = divmod(ts_ms, 1000)
    return f"{_second_prefix(seconds)}{millis:03d}Z"


def encode_tick(tick: Tick) -> bytes:
    payload = {
        "symbol": tick.symbol,
        "price": tick.price,
        "volume": tick.volume,
        "timestamp": format_timestamp(tick.timestamp_ms),
        "source": tick.source,
    }
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def tick_key(symbol: str) -> bytes:
    """The Kafka key of a symbol's ticks: its normalised form (b"BTC/USDT")."""
    return normalize_symbol(symbol).encode()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timestamp_ms(value: object) -> int:
    """ISO-8601 text (a "Z" or an offset; without one it is read as UTC) → UTC epoch ms.

    Numbers are refused: the wire format is ISO-8601, and a bare number is ambiguous (s? ms? µs?).
    """
    if not isinstance(value, str):
        raise InvalidTick(f"bad_type:timestamp: expected an ISO-8601 string, got {type(value).__name__}")
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise InvalidTick(f"bad_timestamp: {value[:64]!r} is not ISO-8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic on the timedelta: exact to the millisecond (float seconds are not, past 2^53 µs).
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _number(payload: dict, name: str) -> float:
    value = payload[name]
    # bool is an int subclass in Python; `true` is not a price.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTick(f"bad_type:{name}: expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidTick(f"not_finite:{name}")
    return number


def _reject_constant(name: str) -> float:
    # json.loads accepts the non-standard NaN / Infinity literals; a tick carrying them is rejected
    # with its own reason instead of "bad_json", which would hide what the producer did.
    raise InvalidTick(f"not_finite: {name} literal")


_decode = msgspec.json.Decoder().decode


def _decode_slow(raw: bytes | bytearray | memoryview) -> object:
    try:
        return json.loads(bytes(raw), parse_constant=_reject_constant)
    except InvalidTick:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidTick(f"bad_json: {exc}"[:200]) from None


def parse_tick(
    raw: bytes | bytearray | memoryview | None,
    known_symbols: Collection[str],
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Tick:
    """Decode and validate one message value; raise `InvalidTick(reason)` for anything unusable.

    `known_symbols` holds normalised symbols (BTC/USDT); the tick's symbol is normalised first, so
    `btcusdt` is accepted as BTC/USDT. An empty collection accepts every well-formed symbol.
    """
    if raw is None:
        raise InvalidTick("bad_json: empty message (tombstone)")
    try:
        # msgspec's decoder is ~4× faster than json.loads (JSON is the scorer's largest per-tick cost).
        payload = _decode(raw)
    except msgspec.DecodeError:
        # Strict JSON refused it: json.loads tells why, in the same words as ever (a NaN literal, a
        # number too large for a float, or text that is not JSON at all).
        payload = _decode_slow(raw)
    if not isinstance(payload, dict):
        raise InvalidTick(f"not_object: got a JSON {type(payload).__name__}")
    for name in REQUIRED_FIELDS:
        if payload.get(name) is None:
            raise InvalidTick(f"missing_field:{name}")

    raw_symbol = payload["symbol"]
    if not isinstance(raw_symbol, str):
        raise InvalidTick(f"bad_type:symbol: expected a string, got {type(raw_symbol).__name__}")
    try:
        symbol = _normalize(raw_symbol)
    except InvalidSymbolError:
        raise InvalidTick(f"bad_symbol: {raw_symbol[:32]!r}") from None
    if known_symbols and symbol not in known_symbols:
        raise InvalidTick(f"unknown_symbol: {symbol}")

    price = _number(payload, "price")
    if price <= 0:
        raise InvalidTick(f"bad_price: {price!r} is not positive")
    volume = _number(payload, "volume")
    if volume < 0:
        raise InvalidTick(f"bad_volume: {volume!r} is negative")

    ts = parse_timestamp_ms(payload["timestamp"])
    if ts <= 0:
        raise InvalidTick(f"bad_timestamp: {ts} is not after 1970")
    if ts - now_ms > max_future_ms:
        raise InvalidTick(f"future_timestamp: {ts - now_ms} ms ahead of the scorer's clock")

    source = payload.get("source", DEFAULT_SOURCE)
    if not isinstance(source, str):
        raise InvalidTick(f"bad_type:source: expected a string, got {type(source).__name__}")
    return Tick(symbol=symbol, price=price, volume=volume, timestamp_ms=ts, source=source or DEFAULT_SOURCE)
