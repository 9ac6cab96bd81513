"""A poll batch of ticks at once: values validated in front of `parse_tick`, timestamps formatted.

`parse_tick` costs ~4 µs a record, most of it Python around one msgspec call: the optional fields
checked one by one, the symbol normalised through a cache, the timestamp sliced and looked up per
record. Here each value is decoded by msgspec into a struct whose types and bounds msgspec checks in C
(every field present, price > 0, volume ≥ 0), and the timestamps of the whole batch are parsed and
checked together with numpy (shape, digits, calendar ranges, the epoch arithmetic, not before 1970, not
too far ahead of the clock).

The fast path only ever accepts: a record it does not accept is answered `None`, and the caller parses
that one with `parse_tick`, which accepts or rejects it with its exact reason. For every record the fast
path accepts, `parse_tick` returns the same `Tick` (`test_stream_tick_batch.py` checks both on valid,
hostile and edge-case values), so dead letters, their reasons and the ticks scored are those of the
record-by-record path.

`parse_columns` answers with columns (`ParsedTicks`: symbol ids, prices, volumes, epoch ms; id −1
where `parse_tick` must decide), which the scorer's batch path reads without a `Tick` per record;
`parse` gives the same answer as one `Tick` or None per record.

`format_timestamps` writes `format_timestamp`'s text for a batch of epoch milliseconds: digits computed
column-wise, ~0.3 µs a tick instead of ~1.4; `quoted_timestamps` writes the same digits as JSON strings
(bytes, with a suffix), the form the prediction templates splice in.

numpy costs ~150 µs a call whatever the size, so a batch smaller than `MIN_VECTOR_BATCH` (a quiet stream:
a few ticks per poll) takes the record-by-record path, which is cheaper there.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Annotated

import msgspec
import numpy as np

from crypto_platform.lib.market.symbols import InvalidSymbolError, normalize_symbol
from crypto_platform.lib.stream.ticks import (
    DEFAULT_MAX_FUTURE_MS,
    DEFAULT_SOURCE,
    MAX_TICK_BYTES,
    Tick,
    format_timestamp,
)

MIN_VECTOR_BATCH = 64  # below this many records numpy's fixed cost per call outweighs its gain
MAX_SYMBOL_SPELLINGS = 10_000  # raw spellings remembered (cleared past this: symbols are few, spellings too)


class _StrictWire(msgspec.Struct, gc=False):
    """The wire format with every required field present, non-null and in range: what a valid tick
    is, checked by msgspec in C. Anything this refuses goes to `parse_tick` for its reason."""

    symbol: str
    price: Annotated[float, msgspec.Meta(gt=0.0)]
    volume: Annotated[float, msgspec.Meta(ge=0.0)]
    timestamp: str
    source: str | None = None


_decode_strict = msgspec.json.Decoder(_StrictWire).decode

# `YYYY-MM-DDTHH:MM:SS.mmmZ` (what `encode_tick` writes): 24 characters, separators and digits at fixed
# positions. The length is checked on the str itself: numpy's string types drop trailing NULs.
_WIDTH = 24
_SEPARATORS = {4: ord("-"), 7: ord("-"), 10: ord("T"), 13: ord(":"), 16: ord(":"), 19: ord("."), 23: ord("Z")}
_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22])
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
_MS_PER_DAY = 86_400_000


def timestamps_ms(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(epoch ms, ok) for wire timestamps; `ok` is False where a text is not exactly the wire shape
    with a real date and time (`parse_timestamp_ms` says why, or parses the other ISO-8601 forms)."""
    n = len(texts)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    # Code points (UCS-4) at fixed positions; longer texts are cut here and refused by the length check,
    # and a non-ASCII character (a digit of another script, say) fails the separator and digit checks.
    grid = np.array(texts, dtype=f"U{_WIDTH}").view(np.uint32).reshape(n, _WIDTH)
    ok = np.fromiter(map(len, texts), dtype=np.int64, count=n) == _WIDTH
    for position, byte in _SEPARATORS.items():
        ok &= grid[:, position] == byte
    digits = grid[:, _DIGITS].astype(np.int64) - ord("0")
    ok &= ((digits >= 0) & (digits <= 9)).all(axis=1)
    year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
    month = digits[:, 4] * 10 + digits[:, 5]
    day = digits[:, 6] * 10 + digits[:, 7]
    hour = digits[:, 8] * 10 + digits[:, 9]
    minute = digits[:, 10] * 10 + digits[:, 11]
    second = digits[:, 12] * 10 + digits[:, 13]
    millis = digits[:, 14] * 100 + digits[:, 15] * 10 + digits[:, 16]
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (hour <= 23) & (minute <= 59) & (second <= 59)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap)
    ok &= (day >= 1) & (day <= month_days)
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil; year ≥ 1 here).
    y = year - (month <= 2)
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = era * 146_097 + day_of_era - 719_468
    ms = days * _MS_PER_DAY + hour * 3_600_000 + minute * 60_000 + second * 1000 + millis
    return np.where(ok, ms, 0), ok


# 1970-01-01 … 9999-12-31T23:59:59.999 (four-digit years, as strftime writes them for these).
_FORMAT_MAX_MS = 253_402_300_799_999
_DIGIT_FIELDS = ((0, 4), (5, 2), (8, 2), (11, 2), (14, 2), (17, 2), (20, 3))  # (first column, width)


def _timestamp_grid(ms: np.ndarray, prefix: bytes, suffix: bytes) -> np.ndarray:
    """`prefix + format_timestamp(ms) + suffix` for each value (1970 … 9999), one row of bytes each."""
    n = ms.size
    days, in_day = np.divmod(ms, _MS_PER_DAY)
    # The civil date of a day count (H. Hinnant's civil_from_days; day 0 is 1970-01-01).
    z = days + 719_468
    era = z // 146_097
    day_of_era = z - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    march_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * march_month + 2) // 5 + 1
    month = np.where(march_month < 10, march_month + 3, march_month - 9)
    year = year_of_era + era * 400 + (month <= 2)
    hour, rest = np.divmod(in_day, 3_600_000)
    minute, rest = np.divmod(rest, 60_000)
    second, millis = np.divmod(rest, 1000)
    start = len(prefix)
    grid = np.empty((n, start + _WIDTH + len(suffix)), dtype=np.uint8)
    grid[:, :start] = np.frombuffer(prefix, dtype=np.uint8)
    grid[:, start + _WIDTH :] = np.frombuffer(suffix, dtype=np.uint8)
    for position, byte in _SEPARATORS.items():
        grid[:, start + position] = byte
    for value, (first, width) in zip(
        (year, month, day, hour, minute, second, millis), _DIGIT_FIELDS, strict=True
    ):
        for column in range(first + width - 1, first - 1, -1):
            value, digit = np.divmod(value, 10)
            grid[:, start + column] = digit + ord("0")
    return grid


def format_timestamps(values_ms: Sequence[int], min_batch: int = MIN_VECTOR_BATCH) -> list[str]:
    """`[format_timestamp(ms) for ms in values_ms]`, computed for the whole batch at once (from
    `min_batch` values on)."""
    n = len(values_ms)
    if n < min_batch:
        return [format_timestamp(ms) for ms in values_ms]
    ms = np.asarray(values_ms, dtype=np.int64)
    if int(ms.min()) < 0 or int(ms.max()) > _FORMAT_MAX_MS:
        return [format_timestamp(int(value)) for value in values_ms]
    grid = _timestamp_grid(ms, b"", b"")
    return [text.decode() for text in grid.view(f"S{_WIDTH}").ravel().tolist()]


def quoted_timestamps(values_ms: np.ndarray, suffix: bytes = b"") -> list[bytes]:
    """`format_timestamp(ms)` as a JSON string (quoted, as msgspec writes it) followed by `suffix`, for
    each value: bytes straight from the digit grid, no str in between."""
    if suffix.endswith(b"\0"):
        raise ValueError("a suffix must not end in a NUL byte (numpy's bytes drop trailing NULs)")
    ms = np.asarray(values_ms, dtype=np.int64)
    if ms.size == 0:
        return []
    if int(ms.min()) < 0 or int(ms.max()) > _FORMAT_MAX_MS:
        return [b'"' + format_timestamp(int(value)).encode() + b'"' + suffix for value in ms.tolist()]
    grid = _timestamp_grid(ms, b'"', b'"' + suffix)
    return grid.view(f"S{grid.shape[1]}").ravel().tolist()


@dataclass(frozen=True, slots=True)
class ParsedTicks:
    """A batch's values as columns (one row per value): where `symbol_ids` is −1, `parse_tick` must
    decide (the other columns hold nothing meaningful there). Symbols are ids into `names`, the
    parser's list (the same id for a symbol from batch to batch)."""

    symbol_ids: np.ndarray  # int64, −1: not accepted
    price: np.ndarray  # float64
    volume: np.ndarray  # float64
    ts: np.ndarray  # int64 epoch ms
    wires: list[_StrictWire]
    names: list[str]  # id → normalised symbol
    ids: dict[str, int]  # normalised symbol → id

    @property
    def accepted(self) -> np.ndarray:
        return self.symbol_ids >= 0

    def id_of(self, symbol: str) -> int:
        """The id of a normalised symbol (given one if it has none yet)."""
        found = self.ids.get(symbol)
        if found is None:
            found = self.ids[symbol] = len(self.names)
            self.names.append(symbol)
        return found

    def tick(self, row: int) -> Tick | None:
        symbol_id = int(self.symbol_ids[row])
        if symbol_id < 0:
            return None
        wire = self.wires[row]
        return Tick(
            self.names[symbol_id], wire.price, wire.volume, int(self.ts[row]), wire.source or DEFAULT_SOURCE
        )

    def ticks(self) -> list[Tick | None]:
        return [self.tick(row) for row in range(self.symbol_ids.size)]


# What a value the strict decoder refused stands as in the columns (its row is not accepted).
_NO_WIRE = _StrictWire("", 0.0, 0.0, "")
_PRICE, _VOLUME = attrgetter("price"), attrgetter("volume")
_SYMBOL, _TIMESTAMP = attrgetter("symbol"), attrgetter("timestamp")


class TickBatchParser:
    """Validates a batch of record values against one set of known symbols (see the module doc)."""

    def __init__(
        self,
        known_symbols: Collection[str],
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        min_batch: int = MIN_VECTOR_BATCH,
    ) -> None:
        self.known_symbols = frozenset(known_symbols)
        self.max_future_ms = max_future_ms
        self.min_batch = min_batch  # smaller batches: every entry None (`parse_tick` is cheaper there)
        self._spellings: dict[str, int] = {}  # raw spelling → symbol id, for accepted ones only
        self._names: list[str] = []  # symbol id → normalised symbol
        self._ids: dict[str, int] = {}  # normalised symbol → id

    def _symbol_id(self, raw: str) -> int:
        """The id of the normalised known symbol `raw` spells, or −1 (not one: `parse_tick` says why)."""
        try:
            symbol = normalize_symbol(raw)
        except InvalidSymbolError:
            return -1
        if self.known_symbols and symbol not in self.known_symbols:
            return -1
        symbol_id = self._ids.get(symbol)
        if symbol_id is None:
            symbol_id = self._ids[symbol] = len(self._names)
            self._names.append(symbol)
        self._spellings[raw] = symbol_id
        return symbol_id

    def parse_columns(self, values: Sequence[bytes | None], now_ms: int) -> ParsedTicks | None:
        """The batch as columns (`ParsedTicks`), or None for a batch under `min_batch` (every value is
        then `parse_tick`'s)."""
        if len(values) < self.min_batch:
            return None
        if len(self._spellings) >= MAX_SYMBOL_SPELLINGS or len(self._names) >= MAX_SYMBOL_SPELLINGS:
            # New objects, not cleared ones: earlier batches' columns keep their own names.
            self._spellings, self._names, self._ids = {}, [], {}
        wires = self._decode(values)
        n = len(wires)
        ms, ok = timestamps_ms(list(map(_TIMESTAMP, wires)))  # _NO_WIRE's "" fails the shape
        ok &= (ms > 0) & (ms - now_ms <= self.max_future_ms)
        ids = np.fromiter(map(self._spellings.get, map(_SYMBOL, wires), repeat(-1)), dtype=np.int64, count=n)
        ids[~ok] = -1
        for row in np.flatnonzero((ids < 0) & ok).tolist():  # a spelling not seen yet (or refused)
            ids[row] = self._symbol_id(wires[row].symbol)
        return ParsedTicks(
            ids,
            np.fromiter(map(_PRICE, wires), dtype=np.float64, count=n),
            np.fromiter(map(_VOLUME, wires), dtype=np.float64, count=n),
            ms,
            wires,
            self._names,
            self._ids,
        )

    @staticmethod
    def _decode(values: Sequence[bytes | None]) -> list[_StrictWire]:
        """Each value decoded strictly, `_NO_WIRE` where it is refused. One `map` over the batch when
        every value decodes (the common case: no Python per value), else value by value."""
        if None not in values and max(map(len, values), default=0) <= MAX_TICK_BYTES:
            try:
                return list(map(_decode_strict, values))
            except (msgspec.MsgspecError, RecursionError):
                pass  # one of them is refused: find which, value by value
        wires: list[_StrictWire] = []
        append = wires.append
        for value in values:
            if value is None or len(value) > MAX_TICK_BYTES:
                append(_NO_WIRE)
                continue
            try:
                append(_decode_strict(value))
            except (msgspec.MsgspecError, RecursionError):  # refused (or deeply nested): parse it alone
                append(_NO_WIRE)
        return wires

    def parse(self, values: Sequence[bytes | None], now_ms: int) -> list[Tick | None]:
        """One entry per value: its `Tick`, or None where `parse_tick` must decide."""
        columns = self.parse_columns(values, now_ms)
        if columns is None:
            return [None] * len(values)
        return columns.ticks()
