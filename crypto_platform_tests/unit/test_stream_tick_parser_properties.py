"""The tick parser under hostile input: whatever the bytes, a valid `Tick` or `InvalidTick`, nothing else.

Generated inputs: arbitrary bytes, arbitrary JSON documents (deep nesting, integers of hundreds of digits,
NaN / Infinity literals, unicode keys and strings), tick-shaped objects whose fields hold any of those,
valid ticks with bytes flipped or cut, and brackets nested thousands deep (a field the tick has or not).
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto_platform.lib.stream.ticks import REASON_CODES, InvalidTick, Tick, encode_tick, parse_tick

NOW = 1_748_737_800_000  # 2025-06-01T00:30:00Z
KNOWN = frozenset({"BTC/USDT", "ETH/USDT"})
STAMP = "2025-06-01T00:29:59.500Z"

# Integers far beyond a float (10**400), and text with any code point json.dumps can write (lone
# surrogates included, as \ud800 escapes).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(
        ["BTC/USDT", "btcusdt", "ETH-USDT", STAMP, "2025-06-01T00:31:00Z", "9999-12-31T23:59:59"]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


def dumps(value: object) -> bytes:
    # allow_nan (the default) writes NaN / Infinity literals, which strict JSON forbids: the parser must
    # refuse them with a reason, not crash.
    return json.dumps(value).encode("utf-8", errors="surrogatepass")


tick_shaped = st.fixed_dictionaries(
    {
        "symbol": st.sampled_from(["BTC/USDT", "ethusdt"]) | json_values,
        "price": st.floats(min_value=1e-6, max_value=1e6) | json_values,
        "volume": st.floats(min_value=0, max_value=1e3) | json_values,
        "timestamp": st.just(STAMP) | json_values,
    },
    optional={"source": json_values, "extra": json_values},
).map(dumps)


def nested(depth: int, where: str) -> bytes:
    deep = "[" * depth + "]" * depth
    if where == "alone":
        return deep.encode()
    if where == "in_price":
        return f'{{"symbol":"BTC/USDT","price":{deep},"volume":1,"timestamp":"{STAMP}"}}'.encode()
    return f'{{"symbol":"BTC/USDT","price":1,"volume":1,"timestamp":"{STAMP}","x":{deep}}}'.encode()


deep_nesting = st.builds(nested, st.integers(1, 20_000), st.sampled_from(["alone", "in_price", "unknown"]))
huge_numbers = st.builds(
    lambda digits, field: dumps({"symbol": "BTC/USDT", "price": 1, "volume": 1, "timestamp": STAMP}).replace(
        f'"{field}": 1'.encode(), f'"{field}": {"9" * digits}'.encode()
    ),
    st.integers(300, 5000),
    st.sampled_from(["price", "volume"]),
)
valid = st.builds(
    Tick,
    st.sampled_from(sorted(KNOWN)),
    st.floats(min_value=1e-6, max_value=1e7),
    st.floats(min_value=0, max_value=1e4),
    st.integers(NOW - 10**9, NOW),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=10),  # a source is any real text
).map(encode_tick)


@st.composite
def damaged(draw) -> bytes:
    """A valid tick with bytes replaced and/or the end cut off."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


hostile = (
    st.binary(max_size=300)
    | json_values.map(dumps)
    | tick_shaped
    | deep_nesting
    | huge_numbers
    | damaged()
    | valid
    | st.none()
)


@settings(
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(hostile)
def test_any_input_gives_a_tick_or_invalid_tick_and_nothing_else(raw):
    try:
        tick = parse_tick(raw, KNOWN, NOW)
    except InvalidTick as exc:
        assert exc.code in REASON_CODES, exc.reason
        return
    # Anything accepted is a usable tick: a known symbol, a finite positive price, a finite volume.
    assert isinstance(tick, Tick)
    assert tick.symbol in KNOWN
    assert math.isfinite(tick.price) and tick.price > 0
    assert math.isfinite(tick.volume) and tick.volume >= 0
    assert 0 < tick.timestamp_ms <= NOW + 60_000


@settings(max_examples=200, deadline=None)
@given(valid)
def test_every_valid_tick_is_accepted(raw):
    assert parse_tick(raw, KNOWN, NOW).symbol in KNOWN
