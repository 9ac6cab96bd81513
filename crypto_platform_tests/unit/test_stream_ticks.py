"""Tick wire format and the scorer's validation gate (every rejection reason)."""

from __future__ import annotations

import json

import pytest

from crypto_platform.lib.stream.ticks import (
    InvalidTick,
    Tick,
    encode_tick,
    format_timestamp,
    parse_tick,
    parse_timestamp_ms,
    tick_key,
)

KNOWN = frozenset({"BTC/USDT", "ETH/USDT"})
NOW = 1_748_737_800_000  # 2025-06-01T00:30:00Z


def raw(**fields) -> bytes:
    base = {"symbol": "BTC/USDT", "price": 64000.5, "volume": 0.25, "timestamp": "2025-06-01T00:29:59.500Z"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def reason_of(payload: bytes, **kwargs) -> str:
    with pytest.raises(InvalidTick) as info:
        parse_tick(payload, KNOWN, NOW, **kwargs)
    return info.value.reason


def test_encode_parse_round_trip_keeps_every_field_and_the_millisecond():
    tick = Tick("ETH/USDT", 2500.25, 1.5, NOW - 1, "simulated")
    encoded = encode_tick(tick)
    assert json.loads(encoded)["timestamp"] == "2025-06-01T00:29:59.999Z"
    assert parse_tick(encoded, KNOWN, NOW) == tick


def test_timestamps_with_offsets_or_without_zone_are_utc():
    assert parse_timestamp_ms("2025-06-01T02:30:00+02:00") == NOW
    assert parse_timestamp_ms("2025-06-01T00:30:00") == NOW
    assert parse_timestamp_ms("2025-06-01T00:30:00.123456Z") == NOW + 123
    assert format_timestamp(NOW + 7) == "2025-06-01T00:30:00.007Z"


@pytest.mark.parametrize("ms", [0, 1, 7, 123, 999])
def test_the_wire_shape_parses_like_any_iso_timestamp(ms):
    # The wire's own `...SS.mmmZ` takes a cached per-second path: it must agree with the general one.
    for second in (NOW, NOW + 59_000, 951_782_400_000):  # 2000-02-29T00:00:00Z too
        text = format_timestamp(second + ms)
        assert parse_timestamp_ms(text) == second + ms
        assert parse_timestamp_ms(text.replace("Z", "+00:00")) == second + ms


@pytest.mark.parametrize(
    "text",
    [
        "2025-06-01T00:30+01.123Z",  # 19 characters before the dot that carry a zone, not seconds
        "2025-06-01 00:30:00.12xZ",
        "2025-02-30T00:30:00.123Z",
        "2025-06-01T24:30:00.123Z",
    ],
)
def test_look_alikes_of_the_wire_shape_are_refused(text):
    with pytest.raises(InvalidTick) as info:
        parse_timestamp_ms(text)
    assert info.value.code == "bad_timestamp"


def test_symbols_are_normalised_before_the_whitelist():
    tick = parse_tick(raw(symbol="btcusdt"), KNOWN, NOW)
    assert tick.symbol == "BTC/USDT"
    assert tick.source == "unknown"  # source is optional
    assert tick_key("eth-usdt") == b"ETH/USDT"


def test_an_empty_whitelist_accepts_any_valid_symbol():
    assert parse_tick(raw(symbol="DOGEUSDT"), (), NOW).symbol == "DOGE/USDT"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"", "bad_json"),
        (None, "bad_json"),
        (b"[1, 2]", "not_object"),
        (b'"BTC/USDT"', "not_object"),
        (raw(price=...), "missing_field:price"),
        (raw(symbol=None), "missing_field:symbol"),
        (raw(timestamp=...), "missing_field:timestamp"),
        (raw(volume=...), "missing_field:volume"),
        (raw(price="64000"), "bad_type:price"),
        (raw(price=True), "bad_type:price"),
        (raw(volume=[1]), "bad_type:volume"),
        (raw(symbol=42), "bad_type:symbol"),
        (raw(timestamp=1748737800000), "bad_type:timestamp"),
        (raw(source=7), "bad_type:source"),
        (b'{"symbol":"BTC/USDT","price":NaN,"volume":1,"timestamp":"2025-06-01T00:00:00Z"}', "not_finite"),
        (
            b'{"symbol":"BTC/USDT","price":1,"volume":Infinity,"timestamp":"2025-06-01T00:00:00Z"}',
            "not_finite",
        ),
        (
            b'{"symbol":"BTC/USDT","price":1e999,"volume":1,"timestamp":"2025-06-01T00:00:00Z"}',
            "not_finite:price",
        ),
        (raw(price=0), "bad_price"),
        (raw(price=-3.5), "bad_price"),
        (raw(volume=-0.1), "bad_volume"),
        (raw(symbol="SOL/USDT"), "unknown_symbol"),
        (raw(symbol="!!"), "bad_symbol"),
        (raw(timestamp="yesterday"), "bad_timestamp"),
        (raw(timestamp="1969-12-31T23:59:59Z"), "bad_timestamp"),
        (raw(timestamp="2025-06-01T00:31:00.001Z"), "future_timestamp"),
    ],
)
def test_every_malformed_kind_is_rejected_with_its_code(payload, code):
    reason = reason_of(payload)
    assert reason == code or reason.startswith(code + ":") or reason.startswith(code + " ")


def test_future_tolerance_is_configurable_and_the_code_is_the_prefix():
    ok = raw(timestamp="2025-06-01T00:31:00Z")  # exactly 60 s ahead: tolerated by default
    assert parse_tick(ok, KNOWN, NOW).timestamp_ms == NOW + 60_000
    with pytest.raises(InvalidTick) as info:
        parse_tick(ok, KNOWN, NOW, max_future_ms=1_000)
    assert info.value.code == "future_timestamp"
    assert isinstance(info.value, ValueError)


def test_zero_volume_is_a_valid_price_observation():
    assert parse_tick(raw(volume=0), KNOWN, NOW).volume == 0.0
