"""The `predictions` message: its fields in wire order, and a batch of them written from templates.

`Prediction` is the message, field by field: msgspec writes one (`encode_prediction`) for a tick scored
on its own. Within a poll batch most fields repeat: every tick of one symbol scored at one closed bar,
from one partition, shares its symbol, its score, its bar timestamp and its `late` flag; only the
tick's timestamp, price, offset and latency change. `PredictionTemplate` is a message with those four
left out: its constant fields written once by msgspec, in the struct's field order, and a batch of
values (each column written by msgspec in one call, then split) spliced in. The bytes are those
`encode_prediction` writes (`test_stream_batch_path.py` compares them on random values), which is
why the template is built from `Prediction`'s own field list rather than spelled out here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec


class Interval(msgspec.Struct, frozen=True, gc=False):
    level: float
    lower: float
    upper: float


class Source(msgspec.Struct, gc=False):
    topic: str
    partition: int
    offset: int


class Prediction(msgspec.Struct, gc=False):
    """The `predictions` message, field by field in wire order. A Struct, not a dict: msgspec encodes it
    ~35 % faster (no key per field to hash and write from a dict). Every float here is already finite
    or None (a NaN would be written as null)."""

    symbol: str
    timestamp: str
    price: float
    risk_score: float | None
    vol_regime: str | None
    nowcast_ret: float | None
    predicted_volatility: float | None
    model_version: str | None
    bar_timestamp: str | None
    late: bool
    source: Source
    latency_ms: int | None
    intervals: tuple[Interval, ...] | None
    value_at_risk: float | None
    expected_shortfall: float | None
    var_level: float | None


_encoder = msgspec.json.Encoder()
encode_prediction = _encoder.encode

# The fields a template leaves out, in wire order ("offset" inside "source").
VARIABLE_FIELDS = ("timestamp", "price", "offset", "latency_ms")


def _pieces(struct: type[msgspec.Struct], constants: dict[str, Any], out: list[bytes | str]) -> None:
    """The struct's JSON object as constant bytes and variable field names, in field order."""
    out.append(b"{")
    for position, name in enumerate(struct.__struct_fields__):
        out.append((b"," if position else b"") + _encoder.encode(name) + b":")
        if name in VARIABLE_FIELDS:
            out.append(name)
        elif name == "source":
            _pieces(Source, constants, out)
        else:
            out.append(_encoder.encode(constants[name]))
    out.append(b"}")


class PredictionTemplate:
    """A `Prediction` with every field but `VARIABLE_FIELDS` fixed (`constants`: field → value, the
    source's topic and partition among them)."""

    __slots__ = ("parts",)

    def __init__(self, constants: dict[str, Any]) -> None:
        pieces: list[bytes | str] = []
        _pieces(Prediction, constants, pieces)
        parts: list[bytes] = [b""]
        order: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                order.append(piece)
                parts.append(b"")
            else:
                parts[-1] += piece
        if tuple(order) != VARIABLE_FIELDS:
            raise ValueError(f"the prediction's variable fields are {order}, expected {VARIABLE_FIELDS}")
        self.parts = tuple(parts)  # constant bytes around the four variable values

    @property
    def spliced(self) -> tuple[bytes, bytes, bytes]:
        """(head, after the price, tail): the parts that differ from template to template. The other
        two (after the timestamp, after the offset) are field names only, `AFTER_TIMESTAMP` and
        `AFTER_OFFSET`, written once onto each timestamp and offset of a column instead:

            head + timestamp + AFTER_TIMESTAMP + price + after_price + offset + AFTER_OFFSET + latency + tail
        """
        head, _, after_price, _, tail = self.parts
        return head, after_price, tail


def encode_column(values: Sequence[Any], suffix: bytes = b"") -> list[bytes]:
    """Each value as msgspec writes it followed by `suffix`, for a column of strings, numbers or None:
    one encoder call for the whole column, split at its commas (none of these values contains one: a
    string here is a timestamp, never free text)."""
    if not values:
        return []
    written = _encoder.encode(values)[1:-1]
    if not suffix:
        return written.split(b",")
    if b"\0" in suffix:
        raise ValueError("a suffix must not hold a NUL byte")
    # No JSON number, null or timestamp holds a NUL byte: it marks where to split.
    return (written.replace(b",", suffix + b"\0") + suffix).split(b"\0")


# The constant parts between the variable fields that hold only field names (the same in every template).
_, AFTER_TIMESTAMP, _, AFTER_OFFSET, _ = PredictionTemplate(
    {name: None for name in (*Prediction.__struct_fields__, *Source.__struct_fields__)}
).parts
