"""The batch fast path accepts only what `parse_tick` accepts, with the same `Tick`; everything else is
left to `parse_tick` (None), so dead letters keep their exact reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto_platform.lib.stream.ticks import InvalidTick, Tick, encode_tick, format_timestamp, parse_tick
from serving.stream.tick_batch import TickBatchParser, format_timestamps, timestamps_ms

NOW = 1_748_737_800_000  # 2025-06-01T00:30:00Z
KNOWN = frozenset({"BTC/USDT", "ETH/USDT"})


def _slow(value: bytes | None, known=KNOWN, now=NOW) -> Tick | None:
    try:
        return parse_tick(value, known, now)
    except InvalidTick:
        return None


def _tick_bytes(**fields: object) -> bytes:
    base: dict[str, object] = {
        "symbol": "BTC/USDT",
        "price": 64123.5,
        "volume": 0.25,
        "timestamp": "2025-06-01T00:29:59.500Z",
        "source": "simulated",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not _DROP}).encode()


_DROP = object()

EDGE_VALUES: list[bytes | None] = [
    _tick_bytes(),
    _tick_bytes(symbol="btcusdt"),
    _tick_bytes(symbol="eth-usdt", source=""),
    _tick_bytes(source=_DROP),
    _tick_bytes(source=None),
    _tick_bytes(price=5),  # an integer price is a float price
    _tick_bytes(extra={"nested": [1, 2, 3]}),
    _tick_bytes(timestamp="2024-02-29T12:00:00.000Z"),  # leap day
    _tick_bytes(timestamp="1970-01-01T00:00:00.001Z"),  # the first valid millisecond
    # Refused by the fast path, each for parse_tick to accept or explain:
    None,
    b"",
    b"not json",
    b"[1, 2]",
    b"x" * 20_000,
    _tick_bytes(symbol="DOGE/USDT"),  # unknown
    _tick_bytes(symbol="???"),
    _tick_bytes(symbol=7),
    _tick_bytes(price=0),
    _tick_bytes(price=-1.5),
    _tick_bytes(price=None),
    _tick_bytes(price="12"),
    _tick_bytes(price=_DROP),
    _tick_bytes(volume=-0.1),
    _tick_bytes(volume=_DROP),
    b'{"symbol":"BTC/USDT","price":1e999,"volume":1,"timestamp":"2025-06-01T00:29:59.500Z"}',
    b'{"symbol":"BTC/USDT","price":NaN,"volume":1,"timestamp":"2025-06-01T00:29:59.500Z"}',
    _tick_bytes(timestamp="2023-02-29T12:00:00.000Z"),  # no such day
    _tick_bytes(timestamp="2025-04-31T12:00:00.000Z"),
    _tick_bytes(timestamp="2025-13-01T12:00:00.000Z"),
    _tick_bytes(timestamp="2025-06-01T24:00:00.000Z"),
    _tick_bytes(timestamp="2025-06-01T23:60:00.000Z"),
    _tick_bytes(timestamp="2025-06-01T23:59:60.000Z"),
    _tick_bytes(timestamp="2025-06-01T00:29:59.500z"),
    _tick_bytes(timestamp="2025-06-01T00:29:59.500Z\x00"),
    _tick_bytes(timestamp="2025-06-01T00:29:59.5Z"),
    _tick_bytes(timestamp="2025-06-01T00:29:59.500+00:00"),
    _tick_bytes(timestamp="2025-06-01 00:29:59.500Z"),
    _tick_bytes(timestamp="2025-06-01T00:29:59.5٠0Z"),  # a non-ASCII digit
    _tick_bytes(timestamp="0000-01-01T00:00:00.000Z"),
    _tick_bytes(timestamp="1969-12-31T23:59:59.999Z"),  # before 1970
    _tick_bytes(timestamp="2025-06-01T00:31:00.001Z"),  # past the allowed clock skew
    _tick_bytes(timestamp=1748737799500),
    _tick_bytes(timestamp=None),
]


def test_every_edge_value_is_the_same_tick_or_left_to_parse_tick():
    fast = TickBatchParser(KNOWN, min_batch=1).parse(EDGE_VALUES, NOW)
    assert len(fast) == len(EDGE_VALUES)
    for value, tick in zip(EDGE_VALUES, fast, strict=True):
        if tick is not None:
            assert tick == _slow(value), value
    accepted = [tick is not None for tick in fast]
    assert accepted[:9] == [True] * 9  # the valid ones take the fast path
    assert not any(accepted[9:])  # the rest is for parse_tick (some of them valid in another spelling)
    assert _slow(EDGE_VALUES[-8]) is not None  # e.g. the "+00:00" offset: valid, but not the wire shape


def test_a_non_ascii_timestamp_leaves_its_neighbours_on_the_fast_path():
    values = [_tick_bytes(), _tick_bytes(timestamp="2025-06-01T00:29:59.5ü0Z"), _tick_bytes()]
    fast = TickBatchParser(KNOWN, min_batch=1).parse(values, NOW)
    assert fast == [_slow(values[0]), None, _slow(values[2])]


def test_an_empty_known_set_accepts_any_well_formed_symbol():
    fast = TickBatchParser((), min_batch=1).parse([_tick_bytes(symbol="doge_usdt")], NOW)
    assert fast == [_slow(_tick_bytes(symbol="doge_usdt"), known=())]
    assert fast[0].symbol == "DOGE/USDT"


moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 12, 31))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(moments, min_size=1, max_size=40))
def test_wire_timestamps_parse_to_the_epoch_millisecond(values):
    texts = [v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z" for v in values]
    ms, ok = timestamps_ms(texts)
    assert ok.all()
    epoch = datetime(1970, 1, 1)
    assert ms.tolist() == [
        (v.replace(microsecond=v.microsecond // 1000 * 1000) - epoch) // timedelta(milliseconds=1)
        for v in values
    ]


wire_like = st.text(alphabet="0123456789-T:.Z +z", min_size=20, max_size=26) | st.sampled_from(
    ["2025-02-29T00:00:00.000Z", "2024-02-29T23:59:59.999Z", "2100-02-29T00:00:00.000Z"]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(wire_like, min_size=1, max_size=20), st.sampled_from(["BTC/USDT", "ethusdt", "XRP/USDT"]))
def test_generated_ticks_agree_with_parse_tick(stamps, symbol):
    now = int(datetime(2101, 1, 1, tzinfo=UTC).timestamp() * 1000)
    values = [_tick_bytes(symbol=symbol, timestamp=stamp) for stamp in stamps]
    for value, tick in zip(values, TickBatchParser(KNOWN, min_batch=1).parse(values, now), strict=True):
        expected = _slow(value, now=now)
        if tick is not None:
            assert tick == expected
        elif expected is not None:  # a valid tick refused by the fast path: only a spelling it leaves out
            canonical = format_timestamp(expected.timestamp_ms) == json.loads(value)["timestamp"]
            assert not canonical or symbol != expected.symbol


def test_encoded_ticks_round_trip_through_the_fast_path():
    ticks = [Tick("ETH/USDT", 3000.0 + i, 0.5, NOW - 10_000 + i * 37, "exchange") for i in range(200)]
    fast = TickBatchParser(KNOWN, min_batch=1).parse([encode_tick(t) for t in ticks], NOW)
    assert fast == ticks


def test_a_small_batch_is_left_to_parse_tick_whole():
    values = [_tick_bytes()] * 3
    assert TickBatchParser(KNOWN, min_batch=4).parse(values, NOW) == [None, None, None]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=253_402_300_799_999), min_size=1, max_size=50))
def test_batch_formatting_writes_format_timestamps_text(values):
    assert format_timestamps(values, min_batch=1) == [format_timestamp(ms) for ms in values]


def test_batch_formatting_of_leap_days_and_out_of_range_values():
    leap_days = [951_782_400_000, 951_868_799_999, 4_107_542_400_000, 1_709_164_800_123]  # 2000, 2100, 2024
    beyond = [-1]  # before 1970: the record-by-record path writes it
    for values in (leap_days, leap_days + beyond):
        assert format_timestamps(values, min_batch=1) == [format_timestamp(ms) for ms in values]


def test_the_state_scores_a_batch_parsed_ahead_exactly_as_record_by_record():
    """Predictions, dead letters (with their reasons and headers) and alerts are those of `parse_tick`
    record by record, on a batch mixing valid, late, bar-closing and invalid records."""
    from aiokafka.structs import ConsumerRecord

    from serving.stream.scorer_state import OutputTopics, ScorerState

    hour = 3_600_000
    start = NOW - 3 * hour
    values: list[bytes | None] = []
    for i in range(300):
        ts = start + i * 36_000  # 300 ticks over 3 hours: bars close on the way
        symbol = "BTC/USDT" if i % 2 else "ethusdt"
        values.append(
            _tick_bytes(
                symbol=symbol, price=100.0 + (i % 17) * (1 if i % 3 else -1), timestamp=format_timestamp(ts)
            )
        )
    values[40] = _tick_bytes(timestamp=format_timestamp(start))  # late: its bar closed long ago
    values[41] = b"not json"
    values[42] = None
    values[43] = _tick_bytes(price=-3)
    values[44] = _tick_bytes(symbol="DOGE/USDT")
    values[45] = _tick_bytes(timestamp="2025-05-31T22:00:00+00:00")  # valid, another spelling
    records = [
        ConsumerRecord("prices", i % 3, i, NOW, 0, b"k", v, None, 0, 0, ()) for i, v in enumerate(values)
    ]

    def run(parsed: bool):
        state = ScorerState(KNOWN, "1h", OutputTopics("predictions", "alerts", "dlq"), clock_ms=lambda: NOW)
        ticks = TickBatchParser(KNOWN, min_batch=1).parse(values, NOW) if parsed else None
        work = state.ingest(records, ticks)
        state.refresh(work)
        out, alerts = state.emit(work)
        decoded = []
        for message in out:
            body = json.loads(message.value) if message.topic == "predictions" else message.value
            if isinstance(body, dict):
                body.pop("latency_ms")  # the wall clock at emission
            decoded.append((message.topic, message.key, body, message.headers))
        return decoded, alerts, state.counters

    fast, slow = run(parsed=True), run(parsed=False)
    assert fast == slow
    topics = [topic for topic, *_ in fast[0]]
    assert topics.count("dlq") == 4 and topics.count("predictions") == 296
