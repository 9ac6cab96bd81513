"""A large poll batch goes through the scorer as columns (bars, price-move rule, message templates);
a small one tick by tick. Both must give the same bars, alerts, state and bytes: checked here on
random streams with several symbols, bar closes, late and out-of-order ticks, big moves and invalid
records, against the tick-by-tick path (`min_vector_batch` past any batch) and against the lib's own
`SymbolBars.add` and `AlertEngine.on_tick`."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.model.intervals import fit_dispersion
from crypto_platform.lib.model.windows import FEATURE_BARS
from crypto_platform.lib.stream.alerts import AlertConfig, AlertEngine
from crypto_platform.lib.stream.bars import BarBook
from crypto_platform.lib.stream.ticks import Tick, encode_tick, format_timestamp
from crypto_platform_tests.unit.test_stream_scorer_state import model as scorer_model
from serving.stream.batch_alerts import DequeCopies, price_moves
from serving.stream.batch_bars import NO_BAR, add_ticks
from serving.stream.prediction_wire import (
    AFTER_OFFSET,
    AFTER_TIMESTAMP,
    VARIABLE_FIELDS,
    Interval,
    Prediction,
    PredictionTemplate,
    Source,
    encode_column,
    encode_prediction,
)
from serving.stream.scorer_state import InputRecord, OutputTopics, ScorerState
from serving.stream.tick_batch import TickBatchParser, quoted_timestamps

HOUR_MS = 3_600_000
T0 = 1_748_736_000_000  # 2025-06-01T00:00Z
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
TOPICS = OutputTopics("preds", "alerts", "dlq")
ALWAYS_ONE_BY_ONE = 10**9  # a `min_vector_batch` no batch reaches


def _stream(seed: int, n: int, symbols=SYMBOLS, jumpy: bool = True, disorder: bool = True) -> list[Tick]:
    """Ticks over ~4 hours: a random walk per symbol with some big jumps (price-move alerts), ties
    (a symbol's time again, at its price or another), and with `disorder` some ticks out of order
    inside their bar and some late (for a bar already closed)."""
    rng = np.random.default_rng(seed)
    prices = {s: 100.0 * (i + 1) for i, s in enumerate(symbols)}
    last_ts: dict[str, int] = {}
    clock = T0 + int(rng.integers(0, HOUR_MS))
    out = []
    for _ in range(n):
        symbol = symbols[int(rng.integers(len(symbols)))]
        clock += int(rng.integers(0, 4 * HOUR_MS // n + 1))
        ts = clock
        step = rng.normal(0, 2e-3)
        roll = rng.random() if disorder else 0.07 + 0.93 * rng.random()
        if roll < 0.05:
            ts = clock - int(rng.integers(1, 120_000))  # out of order: often inside the open bar
        elif roll < 0.07:
            ts = clock - int(rng.integers(HOUR_MS, 2 * HOUR_MS))  # late: its bar has closed
        elif roll < 0.12 and symbol in last_ts:
            ts = last_ts[symbol]  # a tie: the symbol's last time, at its last price or another
            step = 0.0 if roll < 0.095 else step
        if jumpy and rng.random() < 0.01:
            step = float(rng.choice([-1, 1])) * rng.uniform(0.03, 0.12)
        if roll >= 0.07:
            last_ts[symbol] = ts
        prices[symbol] = max(prices[symbol] * (1 + step), 1e-6)
        volume = float(rng.choice([0.0, rng.exponential(1.0)]))
        out.append(Tick(symbol, prices[symbol], volume, max(ts, 1)))
    return out


def _records(ticks: list[Tick], partitions: int = 3, sent_ms: int = 0) -> list[InputRecord]:
    """Records as the scorer reads them (timestamp 0: no latency, so the bytes can be compared)."""
    return [
        InputRecord("prices", i % partitions, 1000 + i, sent_ms, t.symbol.encode(), encode_tick(t))
        for i, t in enumerate(ticks)
    ]


def _book_state(book: BarBook) -> dict:
    state = {}
    for symbol, bars in sorted(book.symbols.items()):
        bar = bars.open_bar
        state[symbol] = (
            bars.frame().rows(),
            None if bar is None else (bar.row(), bar.first_ms, bar.last_ms, bar.ticks),
            bars.last_closed_ts,
            bars.ticks,
            bars.late_ticks,
        )
    return state


def _alert_state(engine: AlertEngine) -> dict:
    gates = {k: (g.armed, g.last_fired_ms, g.seen) for k, g in engine._gates.items()}
    windows = {s: (list(w.highs), list(w.lows)) for s, w in engine._windows.items()}
    return {"gates": gates, "windows": windows}


def _run(state: ScorerState, batches: list[list[InputRecord]], columns: bool = True):
    parser = TickBatchParser(state.symbols)
    outputs = []
    for batch in batches:
        parsed = parser.parse_columns([r.value for r in batch], T0) if columns else None
        work = state.ingest(batch, parsed)
        state.refresh(work)
        out, alerts = state.emit(work)
        outputs.append(([(m.topic, m.key, m.value, m.headers) for m in out], alerts))
    return outputs


def _batches(records: list[InputRecord], sizes: list[int]) -> list[list[InputRecord]]:
    out, start = [], 0
    for size in sizes:
        out.append(records[start : start + size])
        start += size
    out.append(records[start:])
    return out


def _pair(**kwargs) -> tuple[ScorerState, ScorerState]:
    clock = kwargs.pop("clock_ms", lambda: T0 + 6 * HOUR_MS)
    config = kwargs.pop("alert_config", AlertConfig(cooldown_ms=60_000))
    batch = ScorerState(SYMBOLS, "1h", TOPICS, clock_ms=clock, alert_config=config, **kwargs)
    single = ScorerState(
        SYMBOLS,
        "1h",
        TOPICS,
        clock_ms=clock,
        alert_config=config,
        min_vector_batch=ALWAYS_ONE_BY_ONE,
        **kwargs,
    )
    return batch, single


def _encoded(
    constants: dict, topic: str, partition: int, ms: int, price: float, offset: int, latency: int | None
) -> bytes:
    """The message `encode_prediction` writes for these variable fields over the template's constants."""
    fields = {k: v for k, v in constants.items() if k not in ("topic", "partition")}
    return encode_prediction(
        Prediction(
            timestamp=format_timestamp(ms),
            price=price,
            source=Source(topic, partition, offset),
            latency_ms=latency,
            **fields,
        )
    )


def _add_ticks(book: BarBook, names: list[str], ticks: list[Tick]):
    """`add_ticks` on `ticks` as the columns the parser hands over."""
    return add_ticks(
        book,
        names,
        np.array([names.index(t.symbol) for t in ticks]),
        np.array([t.price for t in ticks]),
        np.array([t.volume for t in ticks]),
        np.array([t.timestamp_ms for t in ticks]),
    )


@pytest.mark.parametrize(("seed", "disorder"), [(1, True), (2, True), (3, False), (4, False)])
def test_random_streams_give_the_same_messages_alerts_and_state_as_tick_by_tick(seed, disorder):
    ticks = _stream(seed, 3000, disorder=disorder)
    # Batch sizes mix both paths in one state: a small batch goes tick by tick, the next as columns.
    sizes = [700, 20, 900, 5, 300]
    batch, single = _pair()
    fast = _run(batch, _batches(_records(ticks), sizes))
    slow = _run(single, _batches(_records(ticks), sizes))
    assert fast == slow
    alerts = [a for _, found in fast for a in found]
    assert {a.type for a in alerts} >= {"price_move"}  # the streams do exercise the alert rule
    assert batch.counters == single.counters
    assert batch.counters.valid == len(ticks) and (batch.counters.late > 0) == disorder
    assert _book_state(batch.book) == _book_state(single.book)
    assert _alert_state(batch.alerts) == _alert_state(single.alerts)
    assert batch.scores == single.scores


def test_invalid_records_are_dead_letters_with_their_reasons_among_columns():
    ticks = _stream(9, 400)
    records = _records(ticks)
    bad = {
        10: b"not json",
        11: None,
        50: json.dumps({"symbol": "BTC/USDT", "price": -1, "volume": 1, "timestamp": "x"}).encode(),
        90: json.dumps(
            {"symbol": "DOGE/USDT", "price": 1, "volume": 1, "timestamp": format_timestamp(T0)}
        ).encode(),
        # Valid, but not the fast path's shape: parse_tick accepts it, and it is scored among the columns.
        120: json.dumps(
            {"symbol": "ethusdt", "price": 7.5, "volume": 1, "timestamp": "2025-06-01T01:00:00+00:00"}
        ).encode(),
    }
    for row, value in bad.items():
        r = records[row]
        records[row] = InputRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, value)
    batch, single = _pair()
    fast = _run(batch, [records])
    slow = _run(single, [records], columns=False)
    assert fast == slow
    dead = [headers for topic, _, _, headers in fast[0][0] if topic == "dlq"]
    assert [dict(h)["reason"].split(b":")[0] for h in dead] == [
        b"bad_json",
        b"bad_json",  # a tombstone (no value)
        b"bad_price",
        b"unknown_symbol",
    ]
    assert batch.counters.valid == 400 - 4


def test_forecasts_intervals_and_a_failed_symbol_are_written_as_one_by_one():
    """With a model (forecasts with intervals, a refresh per bar close) and one symbol whose scoring
    fails (its ticks are dead letters), the batch path writes the same bytes."""

    model = scorer_model("3", dispersion=fit_dispersion(np.random.default_rng(0).normal(0.0, 0.4, size=500)))
    batch, single = _pair(model=lambda: model)
    for state in (batch, single):
        for symbol in SYMBOLS:
            state.seed(symbol, simulate_ohlcv(symbol, "1h", T0 - (FEATURE_BARS + 10) * HOUR_MS, T0, seed=3))
        state.refresh(state.warm_work())
    ticks = _stream(5, 1500, jumpy=False)
    fast_batches = _batches(_records(ticks), [600, 300])
    slow_batches = _batches(_records(ticks), [600, 300])
    fast, slow = [], []
    for state, batches, sink in ((batch, fast_batches, fast), (single, slow_batches, slow)):
        parser = TickBatchParser(state.symbols)
        for i, records in enumerate(batches):
            work = state.ingest(records, parser.parse_columns([r.value for r in records], T0))
            state.refresh(work)
            if i == 1:
                work.failed_symbols["ETH/USDT"] = RuntimeError("features failed")
            out, alerts = state.emit(work)
            sink.append(([(m.topic, m.key, m.value, m.headers) for m in out], alerts))
    assert fast == slow
    values = [json.loads(v) for topic, _, v, _ in fast[0][0] if topic == "preds"]
    assert any(v["predicted_volatility"] is not None and v["intervals"] for v in values)
    dead = [dict(h)["reason"] for topic, _, _, h in fast[1][0] if topic == "dlq"]
    assert dead and set(dead) == {b"score_error: RuntimeError: features failed"}


def test_latency_is_measured_per_batch_from_the_record_timestamps():
    ticks = _stream(6, 200)
    state = ScorerState(SYMBOLS, "1h", TOPICS, clock_ms=lambda: T0 + 6 * HOUR_MS)
    sent = [T0] * 100 + [0] * 100  # records without a timestamp have no latency
    records = [InputRecord("prices", 0, i, sent[i], b"k", encode_tick(t)) for i, t in enumerate(ticks)]
    ((out, _),) = _run(state, [records])
    latencies = [json.loads(v)["latency_ms"] for topic, _, v, _ in out if topic == "preds"]
    assert all(isinstance(x, int) and x > 0 for x in latencies[:100]) and len(set(latencies[:100])) == 1
    assert latencies[100:] == [None] * 100


@pytest.mark.parametrize(("seed", "disorder"), [(11, True), (12, True), (13, False)])
def test_bars_built_from_columns_are_those_of_symbol_bars_add(seed, disorder):
    ticks = _stream(seed, 2000, disorder=disorder)
    one_by_one, columns = BarBook("1h", 500), BarBook("1h", 500)
    columns.seed("SOL/USDT", simulate_ohlcv("SOL/USDT", "1h", T0 - 10 * HOUR_MS, T0, seed=1))
    one_by_one.seed("SOL/USDT", simulate_ohlcv("SOL/USDT", "1h", T0 - 10 * HOUR_MS, T0, seed=1))
    for lo, hi in ((0, 700), (700, 710), (710, 2000)):
        part = ticks[lo:hi]
        expected = [one_by_one.add(t) for t in part]
        names = list(SYMBOLS)
        steps = _add_ticks(columns, names, part)
        assert steps.late.tolist() == [e.late for e in expected]
        assert [(c,) if c != NO_BAR else () for c in steps.closed.tolist()] == [e.closed for e in expected]
        assert _book_state(columns) == _book_state(one_by_one)


def test_ticks_tied_with_the_open_bar_merge_as_symbol_bars_add_merges_them():
    """A batch's ticks at the open bar's first and last millisecond: the open bar keeps its open (an
    earlier arrival wins), the later arrival sets the close."""
    first = [Tick("BTC/USDT", 100.0, 1.0, T0 + 10_000), Tick("BTC/USDT", 101.0, 1.0, T0 + 20_000)]
    tied = [
        Tick("BTC/USDT", 105.0, 0.5, T0 + 20_000),
        Tick("BTC/USDT", 95.0, 0.25, T0 + 10_000),
        Tick("BTC/USDT", 99.0, 0.125, T0 + 20_000),
    ] * 2
    one_by_one, columns = BarBook("1h", 10), BarBook("1h", 10)
    for t in first:
        one_by_one.add(t)
        columns.add(t)
    for t in tied:
        one_by_one.add(t)
    add_ticks(
        columns,
        ["BTC/USDT"],
        np.zeros(len(tied), dtype=np.int64),
        np.array([t.price for t in tied]),
        np.array([t.volume for t in tied]),
        np.array([t.timestamp_ms for t in tied]),
    )
    assert _book_state(columns) == _book_state(one_by_one)
    bar = columns.get("BTC/USDT").open_bar
    assert (bar.open, bar.close, bar.high, bar.low) == (100.0, 99.0, 105.0, 95.0)


def test_the_scored_bar_of_each_tick_is_the_newest_closed_after_it():
    ticks = _stream(21, 1200)
    names = list(SYMBOLS)
    book, reference = BarBook("1h", 500), BarBook("1h", 500)
    steps = _add_ticks(book, names, ticks)
    expected = []
    for t in ticks:
        reference.add(t)
        last = reference.get(t.symbol).last_closed_ts
        expected.append(NO_BAR if last is None else last)
    assert steps.scored_at.tolist() == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 400_000),
            st.one_of(st.floats(50.0, 150.0, allow_nan=False), st.sampled_from([97.0, 100.0, 103.5])),
        ),
        min_size=1,
        max_size=120,
    ),
    st.booleans(),
    st.integers(1, 119),
    st.sampled_from([0.01, 0.03]),
)
def test_the_price_move_rule_over_a_run_is_on_tick_over_each_tick(points, backwards, split, threshold):
    """Any timestamps (monotonic runs go through numpy, the others are refused and replayed with
    `on_tick`), two batches in a row: the same alerts and the same windows and gates."""
    config = AlertConfig(price_move_threshold=threshold, cooldown_ms=30_000, price_move_window_ms=120_000)
    reference, batch = AlertEngine("1h", config=config), AlertEngine("1h", config=config)
    copies = DequeCopies()  # the numpy copies of the windows, kept from one run to the next
    clock = T0
    ts, prices = [], []
    for step, price in points:
        clock += step if step > 50_000 else step // 10  # mostly forward; a few big gaps
        ts.append(clock - step if backwards and step % 7 == 0 else clock)  # a few steps back, or none
        prices.append(price)
    for lo, hi in ((0, split), (split, len(ts))):
        part_ts, part_prices = ts[lo:hi], prices[lo:hi]
        expected = [
            (i, a)
            for i, (t, p) in enumerate(zip(part_ts, part_prices, strict=True))
            if (a := reference.on_tick("X", t, p))
        ]
        before = _alert_state(batch)
        (found,) = price_moves(
            batch, [("X", np.array(part_ts, dtype=np.int64), np.array(part_prices))], copies
        )
        if found is None:  # refused (timestamps going back): nothing changed; replay it as the scorer does
            assert _alert_state(batch) == before
            copies.forget("X")
            found = [
                (i, a)
                for i, (t, p) in enumerate(zip(part_ts, part_prices, strict=True))
                if (a := batch.on_tick("X", t, p))
            ]
        assert found == expected
        assert _alert_state(batch) == _alert_state(reference)


def test_several_symbols_in_one_price_move_call_keep_apart():
    config = AlertConfig(price_move_threshold=0.02, cooldown_ms=0)
    reference, batch = AlertEngine("1h", config=config), AlertEngine("1h", config=config)
    rng = np.random.default_rng(4)
    runs = []
    for k, symbol in enumerate(SYMBOLS):
        ts = T0 + np.cumsum(rng.integers(100, 5000, size=300)).astype(np.int64)
        prices = (100.0 + 50 * k) * np.exp(np.cumsum(rng.normal(0, 4e-3, size=300)))
        runs.append((symbol, ts, prices))
    results = price_moves(batch, runs)
    for (symbol, ts, prices), found in zip(runs, results, strict=True):
        expected = [
            (i, a)
            for i, (t, p) in enumerate(zip(ts.tolist(), prices.tolist(), strict=True))
            if (a := reference.on_tick(symbol, t, p))
        ]
        assert found == expected and expected
    assert _alert_state(batch) == _alert_state(reference)


_optional = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
_text = st.one_of(st.none(), st.text(max_size=12))


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=12),
    st.lists(
        st.tuples(
            st.integers(0, 253_402_300_799_999),
            st.floats(min_value=1e-12, max_value=1e12, allow_nan=False),
            st.integers(0, 2**62),
            st.one_of(st.none(), st.integers(-(2**40), 2**40)),
        ),
        min_size=1,
        max_size=20,
    ),
    _optional,
    _text,
    _text,
    st.booleans(),
    st.text(max_size=10),
    st.integers(0, 1000),
    st.one_of(st.none(), st.lists(st.tuples(_optional, _optional, _optional), max_size=3)),
)
def test_a_template_writes_the_bytes_msgspec_writes(
    symbol, rows, value, regime, version, late, topic, partition, intervals
):
    intervals = (
        None if intervals is None else tuple(Interval(a or 0.0, b or 0.0, c or 0.0) for a, b, c in intervals)
    )
    constants = {
        "symbol": symbol,
        "risk_score": value,
        "vol_regime": regime,
        "nowcast_ret": value,
        "predicted_volatility": value,
        "model_version": version,
        "bar_timestamp": regime,
        "late": late,
        "topic": topic,
        "partition": partition,
        "intervals": intervals,
        "value_at_risk": value,
        "expected_shortfall": None,
        "var_level": value,
    }
    head, after_stamp, after_price, after_offset, tail = PredictionTemplate(constants).parts
    stamps = encode_column([format_timestamp(ms) for ms, *_ in rows])
    prices = encode_column([price for _, price, _, _ in rows])
    offsets = encode_column([offset for *_, offset, _ in rows])
    latencies = encode_column([latency for *_, latency in rows])
    for (ms, price, offset, latency), stamp, p, o, lat in zip(
        rows, stamps, prices, offsets, latencies, strict=True
    ):
        spliced = b"".join((head, stamp, after_stamp, p, after_price, o, after_offset, lat, tail))
        expected = _encoded(constants, topic, partition, ms, price, offset, latency)
        assert spliced == expected
        assert msgspec.json.decode(spliced)["price"] == price
    # The same bytes with the field names after the timestamp and the offset written onto the columns.
    head, after_price, tail = PredictionTemplate(constants).spliced
    stamps = quoted_timestamps(np.array([ms for ms, *_ in rows], dtype=np.int64), AFTER_TIMESTAMP)
    offsets = encode_column([offset for *_, offset, _ in rows], AFTER_OFFSET)
    for stamp, p, o, lat, (ms, price, offset, latency) in zip(
        stamps, prices, offsets, latencies, rows, strict=True
    ):
        expected = _encoded(constants, topic, partition, ms, price, offset, latency)
        assert b"".join((head, stamp, p, after_price, o, lat, tail)) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-62_000_000_000_000, 253_402_300_799_999), max_size=80),
    st.sampled_from([b"", b',"price":', b"}x"]),
)
def test_quoted_timestamps_are_msgspec_s_strings_of_format_timestamp(values, suffix):
    expected = [msgspec.json.encode(format_timestamp(ms)) + suffix for ms in values]
    assert quoted_timestamps(np.array(values, dtype=np.int64), suffix) == expected


def test_the_template_knows_every_field_of_the_message():
    fields = set(Prediction.__struct_fields__) - {"source"} | set(Source.__struct_fields__)
    constants = fields - set(VARIABLE_FIELDS)
    template = PredictionTemplate({name: None for name in constants} | {"symbol": "A", "late": False})
    assert len(template.parts) == len(VARIABLE_FIELDS) + 1
    with pytest.raises(KeyError):
        PredictionTemplate({"symbol": "A"})
