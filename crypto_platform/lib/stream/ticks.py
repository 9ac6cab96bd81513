"""Ticks on the `crypto-prices` topic: one trade/price observation of one symbol.

Wire format (UTF-8 JSON object): `{"symbol": "BTC/USDT", "price": 64123.5, "volume": 0.25,
"timestamp": "2025-06-01T00:30:00.123Z", "source": "simulated"}`. The Kafka key is the normalised symbol
(`tick_key`), so every tick of a symbol lands on one partition and stays ordered.

`parse_tick` is the scorer's gate: anything it rejects goes to the dead-letter topic with the
`InvalidTick.reason`, a short stable code (`bad_json`, `missing_field:price`, ...) followed by a detail
after ": " where one helps. Dashboards group by the code (`InvalidTick.code`), so codes never change.
Whatever the bytes, `parse_tick` returns a `Tick` or raises `InvalidTick`, nothing else: the size is
bounded before decoding (`MAX_TICK_BYTES`), msgspec decodes into a typed struct (a value of the wrong
kind stops it at once, a number beyond a float is refused), and the recursion of skipped deep nesting
and the slow path's own failures are turned into reasons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import msgspec

from crypto_platform.lib.market.symbols import InvalidSymbolError, normalize_symbol

REQUIRED_FIELDS: tuple[str, ...] = ("symbol", "price", "volume", "timestamp")
DEFAULT_SOURCE = "unknown"
# A producer's clock may run a little ahead of ours; more than this and the tick is rejected, since a bar
# built from it would close every real bar before its time.
DEFAULT_MAX_FUTURE_MS = 60_000
# A tick is ~130 bytes; a message past this is refused unread (bounded work per message, whatever it holds).
MAX_TICK_BYTES = 16 * 1024
# The reasons `parse_tick` can give (the part before any ":"), for metrics and documentation.
REASON_CODES: tuple[str, ...] = (
    "too_large",
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


class Tick(msgspec.Struct, frozen=True, gc=False):
    """A valid tick. A frozen msgspec Struct rather than a frozen dataclass: one is made per consumed
    record, and a Struct is built several times faster (a frozen dataclass sets each field through
    `object.__setattr__`); `gc=False` because it holds only scalars, so the collector never tracks it."""

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
    # The wire format's own shape (what `encode_tick` writes): `YYYY-MM-DDTHH:MM:SS.mmmZ`. Ticks of one
    # second share everything before the milliseconds, so that part is parsed once per second (cached)
    # and only the three digits per tick; anything else takes the general path below.
    if (
        len(value) == 24
        and value[23] == "Z"
        and value[19] == "."
        and value.isascii()
        and value[20:23].isdigit()
    ):
        seconds = _second_ms(value[:19])
        if seconds is not None:
            return seconds + int(value[20:23])
    return _parse_general_ms(value)


@lru_cache(maxsize=4096)
def _second_ms(text: str) -> int | None:
    """`YYYY-MM-DDTHH:MM:SS` (UTC) → epoch ms, or None when it is not one (the general path says why)."""
    if text[4] != "-" or text[7] != "-" or text[10] != "T" or text[13] != ":" or text[16] != ":":
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        return None
    return (moment.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


def _parse_general_ms(value: str) -> int:
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise InvalidTick(f"bad_timestamp: {value[:64]!r} is not ISO-8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic on the timedelta: exact to the millisecond (float seconds are not, past 2^53 µs).
    return (moment - _EPOCH) // timedelta(milliseconds=1)


class _WireTick(msgspec.Struct):
    """The wire format as msgspec decodes it: typed, so a value of the wrong kind stops the decoding at
    once (never a 1,000-deep array where a price belongs) and a number too large for a float is refused
    instead of becoming a 400-digit int. Unknown fields are skipped; null is read as absent."""

    symbol: str | None = None
    price: float | None = None
    volume: float | None = None
    timestamp: str | None = None
    source: str | None = None


_decode = msgspec.json.Decoder(_WireTick).decode
# Only for telling why a typed decode failed: each field's raw JSON text, checked one field at a time.
_decode_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_float = msgspec.json.Decoder(float).decode
_EXPECTED = {
    "symbol": "string",
    "price": "number",
    "volume": "number",
    "timestamp": "string",
    "source": "string",
}
_KIND_OF_FIRST_BYTE = {ord('"'): "string", ord("{"): "object", ord("["): "array", ord("t"): "boolean"}
_KIND_OF_FIRST_BYTE |= {ord("f"): "boolean", ord("n"): "null"}


def _json_kind(value: msgspec.Raw | bytes) -> str:
    """The kind of a JSON value from its first byte (the decoder already knows the text is valid JSON)."""
    text = bytes(value).lstrip()
    return _KIND_OF_FIRST_BYTE.get(text[0], "number") if text else "nothing"


def _reject_constant(name: str) -> float:
    # json.loads accepts the non-standard NaN / Infinity literals; a tick carrying them is rejected
    # with its own reason instead of "bad_json", which would hide what the producer did.
    raise InvalidTick(f"not_finite: {name} literal")


def _malformed(raw: bytes | bytearray | memoryview, error: msgspec.DecodeError) -> InvalidTick:
    """The reason for a message strict JSON refused, in json.loads' words where it has them (a NaN
    literal, the position of a syntax error). json.loads only explains: what it returns is never used,
    since it accepts what msgspec rightly refuses (NaN, lone surrogates)."""
    try:
        json.loads(bytes(raw), parse_constant=_reject_constant)
    except InvalidTick as exc:
        return exc
    except RecursionError:
        return InvalidTick("bad_json: nested too deeply")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int past the digit limit
        return InvalidTick(f"bad_json: {exc}"[:200])
    return InvalidTick(f"bad_json: {error}"[:200])


def _mistyped(raw: bytes | bytearray | memoryview, error: msgspec.ValidationError) -> InvalidTick:
    """The reason for a well-formed document the typed decode refused, in the order the fields are
    checked: not an object, a required field missing, then each field's kind, then numbers out of range."""
    try:
        fields = _decode_raw_fields(raw)
    except msgspec.ValidationError:
        return InvalidTick(f"not_object: got a JSON {_json_kind(bytes(raw))}")
    except (msgspec.MsgspecError, RecursionError):
        return InvalidTick(f"bad_type: {error}"[:200])
    for name in REQUIRED_FIELDS:
        if name not in fields or _json_kind(fields[name]) == "null":
            return InvalidTick(f"missing_field:{name}")
    for name, expected in _EXPECTED.items():
        value = fields.get(name)
        if value is None:
            continue
        kind = _json_kind(value)
        if kind not in (expected, "null"):
            return InvalidTick(f"bad_type:{name}: expected a {expected}, got a {kind}")
        if kind == "number":
            try:
                _decode_float(value)
            except msgspec.ValidationError:
                text = bytes(value)
                shown = text[:24].decode(errors="replace") + ("..." if len(text) > 24 else "")
                return InvalidTick(f"not_finite:{name}: {shown} is out of a float's range")
    return InvalidTick(f"bad_type: {error}"[:200])


def _decode_tick(raw: bytes | bytearray | memoryview) -> _WireTick:
    try:
        return _decode(raw)
    except msgspec.ValidationError as exc:
        raise _mistyped(raw, exc) from None
    except msgspec.DecodeError as exc:
        raise _malformed(raw, exc) from None
    except RecursionError:  # deep nesting inside a field the tick does not have (skipped recursively)
        raise InvalidTick("bad_json: nested too deeply") from None


_isfinite = math.isfinite


def parse_tick(
    raw: bytes | bytearray | memoryview | None,
    known_symbols: Collection[str],
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Tick:
    """Decode and validate one message value; raise `InvalidTick(reason)` for anything unusable.

    Nothing else escapes: whatever the bytes (any size, nesting, number or encoding), the answer is a
    `Tick` or an `InvalidTick`, so one hostile message can never stop the scorer.

    `known_symbols` holds normalised symbols (BTC/USDT); the tick's symbol is normalised first, so
    `btcusdt` is accepted as BTC/USDT. An empty collection accepts every well-formed symbol.
    """
    if raw is None:
        raise InvalidTick("bad_json: empty message (tombstone)")
    if len(raw) > MAX_TICK_BYTES:
        # Checked before decoding: a tick is ~130 bytes, and nothing bigger is worth parsing.
        raise InvalidTick(f"too_large: {len(raw)} bytes (limit {MAX_TICK_BYTES})")
    # msgspec's decoder is ~4× faster than json.loads (JSON is the scorer's largest per-tick cost).
    wire = _decode_tick(raw)
    if wire.symbol is None or wire.price is None or wire.volume is None or wire.timestamp is None:
        for name in REQUIRED_FIELDS:
            if getattr(wire, name) is None:
                raise InvalidTick(f"missing_field:{name}")

    raw_symbol = wire.symbol
    try:
        symbol = _normalize(raw_symbol)
    except InvalidSymbolError:
        raise InvalidTick(f"bad_symbol: {raw_symbol[:32]!r}") from None
    if known_symbols and symbol not in known_symbols:
        raise InvalidTick(f"unknown_symbol: {symbol}")

    price = wire.price
    if not _isfinite(price):
        raise InvalidTick("not_finite:price")
    if price <= 0:
        raise InvalidTick(f"bad_price: {price!r} is not positive")
    volume = wire.volume
    if not _isfinite(volume):
        raise InvalidTick("not_finite:volume")
    if volume < 0:
        raise InvalidTick(f"bad_volume: {volume!r} is negative")

    ts = parse_timestamp_ms(wire.timestamp)
    if ts <= 0:
        raise InvalidTick(f"bad_timestamp: {ts} is not after 1970")
    if ts - now_ms > max_future_ms:
        raise InvalidTick(f"future_timestamp: {ts - now_ms} ms ahead of the scorer's clock")
    return Tick(
        symbol=symbol, price=price, volume=volume, timestamp_ms=ts, source=wire.source or DEFAULT_SOURCE
    )
