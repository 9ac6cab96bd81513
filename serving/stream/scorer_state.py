"""The scorer's state and per-batch work, without Kafka: records in, messages out.

One batch goes through three steps (`serving.stream.scorer` drives them):

1. `ingest(records)` (event loop, microseconds per record): validate each value with `parse_tick`
   (invalid → a dead-letter message carrying the original bytes), add valid ticks to the symbol's bars,
   and remember per tick the newest closed bar it is to be scored at.
2. `refresh(work)` (a worker thread via `asyncio.to_thread`: polars and the forecaster release the GIL
   for the heavy part, and the event loop keeps fetching meanwhile): for every symbol that closed a bar
   in the batch (or has no score yet, or whose forecast came from another model version) compute the
   features with `compute_features` over the held bars, the heuristic signal at each newly closed bar,
   and the ML forecast of every such bar in ONE `predict` call.
3. `emit(work)` (event loop): exactly one `predictions` message per valid tick, in input order (so per
   symbol order is kept), plus alerts.

Steps 1 and 3 have two paths with the same outputs. A batch of `min_vector_batch` (64) valid ticks or
more goes as columns: the values validated ahead (`tick_batch.ParsedTicks`), the bars of each symbol
updated once per batch (`batch_bars`), the price-move rule run over each symbol's run of ticks
(`batch_alerts`), and the messages spliced into one template per (symbol, scored bar, late flag,
partition) (`prediction_wire`). A smaller batch goes tick by tick (`SymbolBars.add`, `on_tick`,
msgspec per message), where numpy's fixed cost per call would outweigh its gain; the columns path
falls back to it where it cannot be exact (a symbol's timestamps going backwards in the batch: that
symbol's price-move rule runs tick by tick). Both share one state (bars, alert gates and windows), so
batches of either kind follow each other; `test_stream_batch_path.py` compares the two on random
streams byte for byte. Only `latency_ms` differs: the columns path reads the clock once per batch.

No record can stop a batch: a record that fails to parse OR to score (an exception anywhere in the
three steps, not only `InvalidTick`) becomes a dead letter with the reason (`code: ExceptionClass:
message`) and the original bytes, and the batch goes on, so its offsets advance and a restarted scorer
never re-reads a poison message forever. A value too large for the dead-letter topic is cut to
`dlq_max_value_bytes`, and the headers say so and give its size.

A feature-frame champion (`LoadedModel.is_frame`: HAR+, its residual, ...) reads every symbol it was
fitted on at once (`serving.core.frames`): a refresh then computes the features of all those symbols
the book holds (the others' newest rows, as they stand), builds the cross-symbol frame and scores the
refreshed symbols' bars from it. When another symbol of the frame has no bar at the scored time (its
ticks are late, or it has none yet), or the model returns NaN (too little history, a hole), that bar
gets no forecast: its ticks are still sent, with `predicted_volatility` and the risk fields null, the
reason is counted (`Counters.missing_forecasts`, the metric `crypto_scorer_forecasts_missing_total`),
and nothing is dead-lettered (the ticks were valid and scored). The bar is forecast again in the batch
in which the late symbol's bar arrives (a frame model refreshes every held symbol of the frame whose
newest score lacks a forecast), and that re-forecast is checked by the forecast alert.

Every forecast carries its uncertainty (`lib.forecast.describe_uncertainty`): the predictive intervals
(null without a dispersion), VaR and ES at 99 % of a unit long position over the forecast horizon.

Scores are therefore per closed bar: every tick of a bar gets the signal and forecast of the newest bar
closed before it, like the API, which serves the newest closed bar. The features are the pipeline's:
`compute_features` over at least `FEATURE_BARS` = LOOKBACK_BARS + the model's sequence length closed
bars, so even the oldest bar of the model's input window has its full look-back.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter

import msgspec
import numpy as np
import polars as pl

from crypto_platform.lib import forecast
from crypto_platform.lib.features import compute_features
from crypto_platform.lib.model.windows import FEATURE_BARS, latest_window
from crypto_platform.lib.signals import heuristic_signal
from crypto_platform.lib.stream.alerts import Alert, AlertConfig, AlertEngine
from crypto_platform.lib.stream.bars import BarBook
from crypto_platform.lib.stream.ticks import (
    DEFAULT_MAX_FUTURE_MS,
    InvalidTick,
    Tick,
    format_timestamp,
    parse_tick,
)
from serving.core import frames
from serving.core.model_store import LoadedModel
from serving.stream.batch_alerts import DequeCopies, apply_price_moves, plan_price_moves
from serving.stream.batch_bars import NO_BAR, BarSteps, apply_plan, plan_ticks
from serving.stream.prediction_wire import (
    AFTER_OFFSET,
    AFTER_TIMESTAMP,
    Interval,
    Prediction,
    PredictionTemplate,
    Source,
    encode_column,
    encode_prediction,
)
from serving.stream.tick_batch import MIN_VECTOR_BATCH, ParsedTicks, format_timestamps, quoted_timestamps

log = logging.getLogger(__name__)

HEURISTIC_HORIZON_MIN = 60  # the API's default horizon for `nowcast_ret`
# Dead letters must fit the broker's default message.max.bytes (1,048,588 for a record batch): the value
# is cut to this, leaving room for the key (cut to DLQ_MAX_KEY_BYTES) and the headers.
DEFAULT_DLQ_MAX_VALUE_BYTES = 960 * 1024
DLQ_MAX_KEY_BYTES = 16 * 1024
MAX_REASON_CHARS = 500
# Reason codes of failures that are not `InvalidTick` (the part before ":" in the reason header).
PARSE_ERROR = "parse_error"  # the parser raised something else: a parser bug, the record still moves on
SCORE_ERROR = "score_error"  # the tick was valid but adding, scoring or encoding it failed
KEEP_SCORES = 4  # closed-bar scores kept per symbol after a batch (only the newest is used later)
MAX_TEMPLATES = 4096  # prediction templates kept (cleared past this; a few per symbol are live)
_PARTITION, _TOPIC = attrgetter("partition"), attrgetter("topic")
_OFFSET, _TIMESTAMP = attrgetter("offset"), attrgetter("timestamp")


@dataclass(frozen=True, slots=True)
class InputRecord:
    """What the scorer reads from one consumed record: the attributes of aiokafka's `ConsumerRecord`,
    which the scorer passes as is (no copy per message)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # the record's timestamp (producer create time, ms): the start of the latency clock
    key: bytes | None
    value: bytes | None


class OutMessage(msgspec.Struct, frozen=True, gc=False):
    """One message to produce (one or more per consumed record: a Struct is cheap to build, and holds
    only bytes and strings, so the collector never tracks it)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class BarScore:
    bar_ts: int
    risk_score: float | None
    vol_regime: str | None
    nowcast_ret: float | None
    vol: float | None
    predicted_volatility: float | None = None
    model_version: str | None = None  # the version that made `predicted_volatility` (None: no forecast)
    scored_with: str | None = None  # the model version present when this bar was scored (even if None)
    intervals: tuple[Interval, ...] | None = None  # None: no forecast, or a model without dispersion
    value_at_risk: float | None = None
    expected_shortfall: float | None = None
    var_level: float | None = None


def _intervals(risk: forecast.ForecastUncertainty | None) -> tuple[Interval, ...] | None:
    if risk is None or risk.intervals is None:
        return None
    return tuple(Interval(i.level, i.lower, i.upper) for i in risk.intervals)


_EMPTY_SCORE = BarScore(0, None, None, None, None)
_NO_SCORES: dict[int, BarScore] = {}


class _Scored(msgspec.Struct, gc=False):
    record: InputRecord
    tick: Tick
    bar_ts: int | None  # newest closed bar of the symbol after this tick (what the tick is scored at)
    closed: tuple[int, ...]
    late: bool


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """Where a batch's records come from, as columns (one row per record)."""

    topic: str | None  # the one topic they were read from (None: several)
    partitions: np.ndarray  # int64
    offsets: np.ndarray  # int64
    sent: np.ndarray  # int64: the record timestamps (ms; ≤ 0: none)

    @classmethod
    def of(cls, records: list[InputRecord]) -> RecordColumns:
        n = len(records)
        topics = set(map(_TOPIC, records))
        return cls(
            next(iter(topics)) if len(topics) == 1 else None,
            np.fromiter(map(_PARTITION, records), dtype=np.int64, count=n),
            np.fromiter(map(_OFFSET, records), dtype=np.int64, count=n),
            np.fromiter(map(_TIMESTAMP, records), dtype=np.int64, count=n),
        )

    def subset(self, rows: np.ndarray) -> RecordColumns:
        return RecordColumns(self.topic, self.partitions[rows], self.offsets[rows], self.sent[rows])


@dataclass
class TickColumns:
    """A batch's valid ticks as columns (input order), and what adding them to the bars did."""

    records: list[InputRecord]
    names: list[str]  # symbol id → symbol
    symbol_ids: np.ndarray  # int64 per tick
    price: np.ndarray  # float64
    volume: np.ndarray  # float64
    ts: np.ndarray  # int64 epoch ms
    steps: BarSteps | None = None  # per tick: late, scored-at bar, closed bar (`batch_bars`)
    sources: RecordColumns | None = None  # the records' partitions, offsets, timestamps (None: not yet)

    def record_columns(self) -> RecordColumns:
        if self.sources is None:
            self.sources = RecordColumns.of(self.records)
        return self.sources

    def ticks(self) -> list[Tick]:
        names = self.names
        return [
            Tick(names[i], p, v, t)
            for i, p, v, t in zip(
                self.symbol_ids.tolist(),
                self.price.tolist(),
                self.volume.tolist(),
                self.ts.tolist(),
                strict=True,
            )
        ]

    def scored(self) -> list[_Scored]:
        """The ticks as `_add_each` leaves them (what `emit` goes through one by one)."""
        steps = self.steps
        assert steps is not None
        return [
            _Scored(
                record,
                tick,
                scored_at if scored_at != NO_BAR else None,
                (closed,) if closed != NO_BAR else (),
                late,
            )
            for record, tick, scored_at, closed, late in zip(
                self.records,
                self.ticks(),
                steps.scored_at.tolist(),
                steps.closed.tolist(),
                steps.late.tolist(),
                strict=True,
            )
        ]

    def subset(self, rows: np.ndarray) -> TickColumns:
        steps = self.steps
        return TickColumns(
            [self.records[row] for row in rows.tolist()],
            self.names,
            self.symbol_ids[rows],
            self.price[rows],
            self.volume[rows],
            self.ts[rows],
            BarSteps(steps.late[rows], steps.scored_at[rows], steps.closed[rows]) if steps else None,
            self.sources.subset(rows) if self.sources is not None else None,
        )


def _next_offsets(records: list[InputRecord], sources: RecordColumns) -> dict[tuple[str, int], int]:
    """(topic, partition) → the offset after its last record in `records` (what `ingest` commits)."""
    if sources.topic is None:
        return {(r.topic, r.partition): r.offset + 1 for r in records}
    found, first_from_end = np.unique(sources.partitions[::-1], return_index=True)
    last = sources.offsets[len(records) - 1 - first_from_end] + 1
    return {(sources.topic, p): o for p, o in zip(found.tolist(), last.tolist(), strict=True)}


def _columns_of(records: list[InputRecord], ticks: list[Tick]) -> TickColumns:
    names: dict[str, int] = {}
    ids = np.array([names.setdefault(t.symbol, len(names)) for t in ticks], dtype=np.int64)
    return TickColumns(
        records,
        list(names),
        ids,
        np.array([t.price for t in ticks], dtype=np.float64),
        np.array([t.volume for t in ticks], dtype=np.float64),
        np.array([t.timestamp_ms for t in ticks], dtype=np.int64),
    )


@dataclass
class BatchWork:
    ticks: list[_Scored] = field(default_factory=list)  # valid ticks added one by one, or
    columns: TickColumns | None = None  # valid ticks added as columns (a large batch)
    dlq: list[OutMessage] = field(default_factory=list)
    refresh_symbols: set[str] = field(default_factory=set)
    new_bars: dict[str, list[int]] = field(default_factory=dict)  # symbol → bars closed in the batch
    model: LoadedModel | None = None
    forecast_alerts: list[tuple[str, int, float]] = field(default_factory=list)  # model-change forecasts
    failed_symbols: dict[str, BaseException] = field(
        default_factory=dict
    )  # refresh failed: ticks dead-lettered
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) → next offset
    missing_forecasts: Counter = field(default_factory=Counter)  # reason → bars a frame model left unscored

    def batch_symbols(self) -> set[str]:
        """The symbols of the batch's valid ticks."""
        symbols = {t.tick.symbol for t in self.ticks}
        if self.columns is not None:
            symbols.update(self.columns.names[i] for i in np.unique(self.columns.symbol_ids).tolist())
        return symbols


@dataclass(frozen=True)
class OutputTopics:
    """Where outputs go (`serving.stream.config.Topics` has the same attributes and can be passed)."""

    predictions: str
    alerts: str
    dlq: str


@dataclass
class Counters:
    consumed: int = 0
    valid: int = 0
    late: int = 0
    dlq: Counter = field(default_factory=Counter)  # reason code → count
    alerts: Counter = field(default_factory=Counter)  # alert type → count
    forecasts: int = 0
    refreshes: int = 0
    missing_forecasts: Counter = field(default_factory=Counter)  # reason (serving.core.frames) → bars


def _describe(error: BaseException) -> str:
    """`ExceptionClass: message`, the reason of a dead letter that is not an `InvalidTick`."""
    return f"{type(error).__name__}: {error}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class ScorerState:
    def __init__(
        self,
        symbols: Iterable[str],
        timeframe: str,
        topics: OutputTopics,
        model: Callable[[], LoadedModel | None] = lambda: None,
        alert_config: AlertConfig | None = None,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        keep_bars: int = FEATURE_BARS,
        clock_ms: Callable[[], int] | None = None,
        dlq_max_value_bytes: int = DEFAULT_DLQ_MAX_VALUE_BYTES,
        min_vector_batch: int = MIN_VECTOR_BATCH,
    ) -> None:
        self.symbols = frozenset(symbols)
        self.timeframe = timeframe
        self.topics = topics
        self.model = model
        self.max_future_ms = max_future_ms
        self.dlq_max_value_bytes = dlq_max_value_bytes
        # From this many valid ticks a batch is added, alerted and encoded as columns (the same outputs).
        self.min_vector_batch = min_vector_batch
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.book = BarBook(timeframe, max(keep_bars, FEATURE_BARS))
        self.alerts = AlertEngine(timeframe, config=alert_config)
        self.scores: dict[str, dict[int, BarScore]] = {}
        self.latest_features: dict[str, pl.DataFrame] = {}  # per symbol, from the last refresh
        self.counters = Counters()
        self._keys: dict[str, bytes] = {}  # symbol → its output key (encoded once)
        # (symbol, scored bar, late, topic, partition) → (the score it was written from, template parts)
        self._deque_copies = DequeCopies()  # the price-move windows as numpy (`batch_alerts`)
        self._templates: dict[tuple[str, int, bool, str, int], tuple[BarScore, tuple[bytes, ...]]] = {}

    # -- warm start --------------------------------------------------------------------------------

    def seed(self, symbol: str, bars: pl.DataFrame) -> int:
        return self.book.seed(symbol, bars)

    def warm_work(self) -> BatchWork:
        """Work that scores the newest stored bar of every seeded symbol (run before the first batch)."""
        work = BatchWork(model=self.model())
        work.refresh_symbols = {s for s, b in self.book.symbols.items() if b.closed_count}
        return work

    # -- step 1 ------------------------------------------------------------------------------------

    def ingest(
        self,
        records: Iterable[InputRecord],
        parsed: ParsedTicks | Iterable[Tick | None] | None = None,
    ) -> BatchWork:
        """`parsed`: the batch validated ahead (`serving.stream.tick_batch`): its columns, or one entry
        per record; a record it did not accept (a None, or no `parsed`) is parsed here by `parse_tick`,
        which rejects with the reason.

        From `min_vector_batch` valid ticks on, they are added to the bars as columns (`batch_bars`);
        fewer go one by one (numpy's fixed cost per call outweighs its gain there)."""
        model = self.model()
        work = BatchWork(model=model)
        if isinstance(parsed, ParsedTicks):
            columns = self._validate_columns(work, records, parsed)
            if len(columns.records) >= self.min_vector_batch:
                self._add_columns(work, columns)
            else:
                self._add_each(work, columns.records, columns.ticks())
        else:
            valid_records, valid_ticks = self._validate(work, records, parsed)
            if len(valid_ticks) >= self.min_vector_batch:
                self._add_columns(work, _columns_of(valid_records, valid_ticks))
            else:
                self._add_each(work, valid_records, valid_ticks)
        version = model.version if model is not None else None
        for symbol, scores in self.scores.items():
            newest = scores[max(scores)] if scores else None
            if newest is not None and newest.scored_with != version:
                work.refresh_symbols.add(symbol)  # a new champion: forecast again at the newest bar
        for symbol in work.batch_symbols():
            last = self.book.get(symbol).last_closed_ts
            if last is not None and last not in self.scores.get(symbol, {}):
                work.refresh_symbols.add(symbol)  # seeded after start, or never scored
        if model is not None and model.is_frame and work.refresh_symbols:
            # A bar of one symbol may complete another's frame: forecast again what still lacks one.
            for symbol in frames.frame_symbols(model, *work.refresh_symbols):
                scores = self.scores.get(symbol)
                if scores and scores[max(scores)].predicted_volatility is None:
                    work.refresh_symbols.add(symbol)
        return work

    def _validate(
        self, work: BatchWork, records: Iterable[InputRecord], parsed: Iterable[Tick | None] | None
    ) -> tuple[list[InputRecord], list[Tick]]:
        """The batch's valid ticks and their records (input order); the others become dead letters."""
        now = self.clock_ms()
        # Locals for what every record touches: this loop is the scorer's per-tick cost.
        offsets = work.offsets
        valid_records: list[InputRecord] = []
        valid_ticks: list[Tick] = []
        keep_record, keep_tick = valid_records.append, valid_ticks.append
        consumed = 0
        try:
            # strict=False: `repeat` never ends (the records do); `parsed` has one entry per record.
            for record, tick in zip(records, repeat(None) if parsed is None else parsed, strict=False):
                consumed += 1
                offsets[(record.topic, record.partition)] = record.offset + 1
                if tick is None:
                    tick = self._parse_or_reject(work, record, now)
                    if tick is None:
                        continue
                keep_record(record)
                keep_tick(tick)
        finally:
            self.counters.consumed += consumed
        return valid_records, valid_ticks

    def _add_each(self, work: BatchWork, records: list[InputRecord], ticks: list[Tick]) -> None:
        """Valid ticks into their symbols' bars one by one (`SymbolBars.add`)."""
        book, held = self.book, self.book.symbols
        scored = work.ticks
        valid = late = 0
        try:
            for record, tick in zip(records, ticks, strict=True):
                bars = held.get(tick.symbol) or book.get(tick.symbol)
                try:
                    ingested = bars.add(tick)
                except Exception as exc:
                    log.exception(
                        "adding a tick failed at %s:%d@%d", record.topic, record.partition, record.offset
                    )
                    self._score_failed(work, record, exc)
                    continue
                valid += 1
                if ingested.late:
                    late += 1
                closed = ingested.closed
                if closed:
                    work.new_bars.setdefault(tick.symbol, []).extend(closed)
                    work.refresh_symbols.add(tick.symbol)
                scored.append(_Scored(record, tick, bars.last_closed_ts, closed, ingested.late))
        finally:
            self.counters.valid += valid
            self.counters.late += late

    def _validate_columns(
        self, work: BatchWork, records: Iterable[InputRecord], parsed: ParsedTicks
    ) -> TickColumns:
        """The batch's valid ticks as columns; what the fast path did not accept is `parse_tick`'s."""
        records = records if isinstance(records, list) else list(records)
        sources = RecordColumns.of(records)
        work.offsets.update(_next_offsets(records, sources))
        self.counters.consumed += len(records)
        symbol_ids, price, volume, ts = parsed.symbol_ids, parsed.price, parsed.volume, parsed.ts
        now = self.clock_ms()
        for row in np.flatnonzero(symbol_ids < 0).tolist():
            tick = self._parse_or_reject(work, records[row], now)
            if tick is None:
                continue
            symbol_ids[row] = parsed.id_of(tick.symbol)
            price[row], volume[row], ts[row] = tick.price, tick.volume, tick.timestamp_ms
        valid = symbol_ids >= 0
        if valid.all():
            return TickColumns(records, parsed.names, symbol_ids, price, volume, ts, sources=sources)
        rows = np.flatnonzero(valid)
        kept = [records[row] for row in rows.tolist()]
        return TickColumns(
            kept,
            parsed.names,
            symbol_ids[rows],
            price[rows],
            volume[rows],
            ts[rows],
            sources=sources.subset(rows),
        )

    def _add_columns(self, work: BatchWork, columns: TickColumns) -> None:
        """Valid ticks into their symbols' bars as columns (`batch_bars`): the same bars and the same
        answers per tick as `_add_each`. A failure while working it out (the bars untouched) falls back
        to `_add_each`; one while changing a symbol's bars dead-letters that symbol's ticks."""
        records = columns.records
        try:
            steps, plans = plan_ticks(
                self.book, columns.names, columns.symbol_ids, columns.price, columns.volume, columns.ts
            )
        except Exception:
            log.exception("adding %d ticks as columns failed; adding them one by one", len(records))
            self._add_each(work, records, columns.ticks())
            return
        columns.steps = steps
        keep = np.ones(len(records), dtype=bool)
        for plan in plans:
            try:
                apply_plan(plan, columns.price, columns.volume, columns.ts)
            except Exception as exc:
                log.exception(
                    "adding the ticks of %s failed; they go to the dead-letter topic", plan.bars.symbol
                )
                keep[plan.index] = False
                for position in np.sort(plan.index).tolist():
                    self._score_failed(work, records[position], exc)
        if not keep.all():
            columns = columns.subset(np.flatnonzero(keep))
        work.columns = columns
        steps = columns.steps
        self.counters.valid += len(columns.records)
        self.counters.late += int(steps.late.sum())
        for position in np.flatnonzero(steps.closed != NO_BAR).tolist():
            symbol = columns.names[int(columns.symbol_ids[position])]
            work.new_bars.setdefault(symbol, []).append(int(steps.closed[position]))
            work.refresh_symbols.add(symbol)

    def _parse_or_reject(self, work: BatchWork, record: InputRecord, now: int) -> Tick | None:
        """`parse_tick` of one record; None when it is not a tick (it is then a dead letter, with why)."""
        try:
            return parse_tick(record.value, self.symbols, now, self.max_future_ms)
        except InvalidTick as exc:
            self._reject(work, record, exc.code, exc.reason, exc)
        except Exception as exc:  # parse_tick promises InvalidTick only; a bug must not block
            log.exception("the tick parser failed on %s:%d@%d", record.topic, record.partition, record.offset)
            self._reject(work, record, PARSE_ERROR, f"{PARSE_ERROR}: {_describe(exc)}", exc)
        return None

    def _score_failed(self, work: BatchWork, record: InputRecord, error: BaseException) -> None:
        """A valid tick that could not be added, scored or written: a dead letter saying what failed."""
        self._reject(work, record, SCORE_ERROR, f"{SCORE_ERROR}: {_describe(error)}", error)

    def _reject(
        self, work: BatchWork, record: InputRecord, code: str, reason: str, error: BaseException
    ) -> None:
        self.counters.dlq[code] += 1
        work.dlq.append(self._dead_letter(record, reason, type(error).__name__))

    def _dead_letter(self, record: InputRecord, reason: str, error_class: str) -> OutMessage:
        """The original key and bytes with why and where they came from (cut to fit the topic)."""
        headers = [
            ("reason", reason[:MAX_REASON_CHARS].encode(errors="replace")),
            ("error_class", error_class.encode()),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
            ("source_timestamp_ms", str(record.timestamp).encode()),
        ]
        value = bytes(record.value or b"")
        key = record.key
        if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
            headers += [("key_truncated", b"true"), ("key_bytes", str(len(key)).encode())]
            key = bytes(key[:DLQ_MAX_KEY_BYTES])
        if len(value) > self.dlq_max_value_bytes:
            # Whole it could never be written (the broker refuses it, and the batch would retry forever);
            # the source topic still holds the original at source_offset.
            headers += [("value_truncated", b"true"), ("value_bytes", str(len(value)).encode())]
            value = value[: self.dlq_max_value_bytes]
        return OutMessage(self.topics.dlq, key, value, tuple(headers))

    # -- step 2 (blocking; run in a thread) ------------------------------------------------------------

    def refresh(self, work: BatchWork) -> None:
        """Score the symbols of `work.refresh_symbols`; one symbol whose scoring fails does not fail the
        others: it is retried alone, and if it fails alone its ticks of this batch become dead letters."""
        symbols = sorted(work.refresh_symbols)
        if not symbols:
            return
        self.counters.refreshes += 1
        try:
            self._refresh(work, symbols)
        except Exception:
            log.exception("scoring %d symbols together failed; scoring them one by one", len(symbols))
            for symbol in symbols:
                try:
                    self._refresh(work, [symbol])
                except Exception as exc:
                    log.exception(
                        "scoring %s failed; its ticks of this batch go to the dead-letter topic", symbol
                    )
                    work.failed_symbols[symbol] = exc

    def _refresh(self, work: BatchWork, symbols: list[str]) -> None:
        model = work.model
        forecasting = model is not None and model.timeframe == self.timeframe
        frame_model = forecasting and model is not None and model.is_frame
        # A frame model reads the other symbols of its frame too (their newest rows, as held).
        read = frames.frame_symbols(model, *symbols) if frame_model and model is not None else symbols
        bars = self.book.frames(read)
        if bars.height == 0:
            return
        features = compute_features(bars, self.timeframe)
        windows: list[np.ndarray] = []
        targets: list[tuple[str, int]] = []
        new_scores: dict[tuple[str, int], BarScore] = {}
        per_symbol: dict[str, pl.DataFrame] = {}
        wanted = set(symbols)
        for (symbol,), part in features.group_by("symbol", maintain_order=True):
            part = part.drop("symbol")
            per_symbol[symbol] = part
            if symbol not in wanted:
                continue  # read for the frame only: scored when its own bars close
            self.latest_features[symbol] = part
            last = int(part["ts"][-1])
            bars_to_score = sorted({*work.new_bars.get(symbol, ()), last})
            for bar_ts in bars_to_score:
                upto = part.filter(pl.col("ts") <= bar_ts) if bar_ts != last else part
                new_scores[(symbol, bar_ts)] = self._heuristic(upto, bar_ts)
                if frame_model:
                    targets.append((symbol, bar_ts))
                elif forecasting and model is not None:
                    try:
                        window = latest_window(
                            upto, model.feature_columns, self.timeframe, model.sequence_length
                        )
                    except ValueError:
                        continue  # a hole or too little history: this bar has no forecast
                    windows.append(window.X[0])
                    targets.append((symbol, bar_ts))
        forecasts: dict[tuple[str, int], float] = {}
        if frame_model and targets and model is not None:
            forecasts = self._frame_forecasts(work, model, per_symbol, targets, read)
        elif windows and model is not None:
            predicted = np.asarray(model.predict(np.stack(windows).astype(np.float32)), dtype=np.float64)
            self.counters.forecasts += len(windows)
            for target, value in zip(targets, predicted.reshape(-1), strict=True):
                value = float(value)
                if math.isfinite(value) and value >= 0:
                    forecasts[target] = value
        version = model.version if model is not None else None
        dispersion = model.dispersion if model is not None else None
        for (symbol, bar_ts), score in new_scores.items():
            value = forecasts.get((symbol, bar_ts))
            scores = self.scores.setdefault(symbol, {})
            previous = scores.get(bar_ts)
            risk = forecast.describe_uncertainty(value, dispersion) if value is not None else None
            scores[bar_ts] = BarScore(
                score.bar_ts,
                score.risk_score,
                score.vol_regime,
                score.nowcast_ret,
                score.vol,
                value,
                version if value is not None else None,
                version,
                _intervals(risk),
                risk.value_at_risk if risk is not None else None,
                risk.expected_shortfall if risk is not None else None,
                risk.var_level if risk is not None else None,
            )
            # A re-forecast of a bar already scored (a new model) is checked against the alert rule
            # here; forecasts of bars closed in this batch are checked when their closing tick is emitted.
            if previous is not None and value is not None and bar_ts not in work.new_bars.get(symbol, ()):
                work.forecast_alerts.append((symbol, bar_ts, value))

    def _frame_forecasts(
        self,
        work: BatchWork,
        model: LoadedModel,
        per_symbol: dict[str, pl.DataFrame],
        targets: list[tuple[str, int]],
        symbols: tuple[str, ...] | list[str],
    ) -> dict[tuple[str, int], float]:
        """A frame model's forecasts of `targets` from the cross-symbol frame of `symbols`; the targets
        it cannot forecast (another symbol stale or empty, a NaN) are counted per reason."""
        frame = frames.cross_symbol_features(per_symbol, self.timeframe)
        scored = frames.score_frame(model, frame, targets, symbols)
        self.counters.forecasts += len(scored.forecasts)
        for (symbol, bar_ts), (reason, message) in scored.missing.items():
            work.missing_forecasts[reason] += 1
            self.counters.missing_forecasts[reason] += 1
            log.info("no forecast for %s at %s: %s", symbol, format_timestamp(bar_ts), message)
        return scored.forecasts

    def _heuristic(self, features: pl.DataFrame, bar_ts: int) -> BarScore:
        try:
            sig = heuristic_signal(features, self.timeframe, HEURISTIC_HORIZON_MIN)
        except ValueError:
            return BarScore(bar_ts, None, None, None, None)
        return BarScore(bar_ts, _finite(sig.risk_score), sig.vol_regime, _finite(sig.nowcast_ret), sig.vol)

    # -- step 3 ------------------------------------------------------------------------------------

    def emit(self, work: BatchWork) -> tuple[list[OutMessage], list[Alert]]:
        """Prediction messages (one per valid tick, input order) and alerts, dead letters first."""
        predictions: list[OutMessage] = []
        alerts: list[Alert] = []
        for symbol, bar_ts, value in work.forecast_alerts:
            alert = self.alerts.on_forecast(symbol, bar_ts, value)
            if alert is not None:
                alerts.append(alert)
        predictions_topic = self.topics.predictions
        encode = encode_prediction
        if work.columns is not None and not self._emit_columns(work, work.columns, predictions, alerts):
            work.ticks = work.columns.scored()
        for symbol in {item.tick.symbol for item in work.ticks}:
            self._deque_copies.forget(symbol)  # `on_tick` below changes the symbol's windows in place
        # Tick timestamps written for the whole batch at once; bar timestamps repeat: each written once.
        tick_texts = format_timestamps([item.tick.timestamp_ms for item in work.ticks])
        bar_texts: dict[int, str] = {}
        for item, tick_text in zip(work.ticks, tick_texts, strict=True):
            tick, record = item.tick, item.record
            failed = work.failed_symbols.get(tick.symbol)
            if failed is not None:
                self._score_failed(work, record, failed)
                continue
            try:
                message, tick_alerts = self._prediction(item, predictions_topic, encode, tick_text, bar_texts)
            except Exception as exc:
                self._reject_scored(work, record, exc)
                continue
            predictions.append(message)
            if tick_alerts:
                alerts.extend(tick_alerts)
        out: list[OutMessage] = [*work.dlq, *predictions]
        for alert in alerts:
            self.counters.alerts[alert.type] += 1
            out.append(
                OutMessage(self.topics.alerts, alert.symbol.encode(), json.dumps(alert.to_dict()).encode())
            )
        self._forget_old_scores(work)
        self.book.trim()
        return out, alerts

    def _emit_columns(
        self, work: BatchWork, columns: TickColumns, predictions: list[OutMessage], alerts: list[Alert]
    ) -> bool:
        """`emit` for ticks added as columns: the same messages and alerts in the same order as tick by
        tick, with the price-move rule run per symbol over the batch (`batch_alerts`) and the messages
        written from one template per (symbol, scored bar, late, partition) (`prediction_wire`). False
        (nothing done) when the price-move rule could not be worked out as columns: the caller then
        emits the ticks one by one, where a tick that fails is a dead letter of its own.

        One difference: `latency_ms` is read off one clock reading per batch (taken once the batch is
        scored, before it is written) instead of one per tick: the batch's writing (~1 µs a tick) is
        not in it."""
        lost = None
        if work.failed_symbols:
            failed = np.array([name in work.failed_symbols for name in columns.names], dtype=bool)
            lost = failed[columns.symbol_ids]
        kept = columns if lost is None else columns.subset(np.flatnonzero(~lost))
        steps = kept.steps
        assert steps is not None
        names, ids = kept.names, kept.symbol_ids
        in_order = np.flatnonzero(~steps.late)  # late ticks are not seen by the price-move rule
        by_symbol = in_order[np.argsort(ids[in_order], kind="stable")]
        parts = [
            part for part in np.split(by_symbol, np.flatnonzero(np.diff(ids[by_symbol])) + 1) if part.size
        ]
        runs = [(names[int(ids[part[0]])], kept.ts[part], kept.price[part]) for part in parts]
        try:
            plans = plan_price_moves(self.alerts, runs, self._deque_copies)
        except Exception:
            log.exception(
                "the price-move rule over %d ticks as columns failed; emitting them one by one", len(ids)
            )
            return False
        if lost is not None:
            for position in np.flatnonzero(lost).tolist():
                error = work.failed_symbols[columns.names[int(columns.symbol_ids[position])]]
                record = columns.records[position]
                self._score_failed(work, record, error)
        # Alerts with their tick's position: a tick's bar alerts come before its price-move alert.
        raised: list[tuple[int, int, Alert]] = []
        broken = np.zeros(ids.size, dtype=bool)  # ticks whose alerts failed: dead letters, as one by one
        for position in np.flatnonzero(steps.closed != NO_BAR).tolist():
            symbol = names[int(ids[position])]
            try:
                score = self.scores.get(symbol, _NO_SCORES).get(int(steps.closed[position]))
                raised.extend((position, 0, alert) for alert in self._bar_alerts(symbol, score))
            except Exception as exc:
                self._reject_scored(work, kept.records[position], exc)
                broken[position] = True
        on_tick = self.alerts.on_tick
        for part, (symbol, ts, price), plan in zip(parts, runs, plans, strict=True):
            if plan is not None:
                found = apply_price_moves(self.alerts, plan, self._deque_copies)
                raised.extend((int(part[j]), 1, alert) for j, alert in found)
                continue
            self._deque_copies.forget(symbol)
            for position, when, value in zip(part.tolist(), ts.tolist(), price.tolist(), strict=True):
                try:  # timestamps going backwards: the rule tick by tick
                    alert = on_tick(symbol, when, value)
                except Exception as exc:
                    self._reject_scored(work, kept.records[position], exc)
                    broken[position] = True
                    continue
                if alert is not None:
                    raised.append((position, 1, alert))
        raised.sort(key=lambda entry: entry[:2])
        alerts.extend(alert for position, _, alert in raised if not broken[position])
        if broken.any():
            kept = kept.subset(np.flatnonzero(~broken))
        predictions.extend(self._encode_columns(work, kept))
        return True

    def _reject_scored(self, work: BatchWork, record: InputRecord, exc: BaseException) -> None:
        """`_score_failed`, logged with the tick's position (inside an `except`)."""
        log.exception("scoring the tick at %s:%d@%d failed", record.topic, record.partition, record.offset)
        self._score_failed(work, record, exc)

    def _encode_columns(self, work: BatchWork, columns: TickColumns) -> list[OutMessage]:
        """The prediction messages of `columns` (input order), each spliced into its group's template."""
        steps = columns.steps
        assert steps is not None
        records = columns.records
        sources = columns.record_columns()
        partitions = sources.partitions
        if sources.topic is not None:  # one input topic (the scorer's case): a route is a partition
            present = np.unique(partitions)
            route_list = [(sources.topic, p) for p in present.tolist()]
            route_ids = np.searchsorted(present, partitions)
        else:
            routes: dict[tuple[str, int], int] = {}
            route_ids = np.array(
                [routes.setdefault((r.topic, r.partition), len(routes)) for r in records], dtype=np.int64
            )
            route_list = list(routes)
        _, bar_ids = np.unique(steps.scored_at, return_inverse=True)
        group_key = ((bar_ids * len(columns.names) + columns.symbol_ids) * len(route_list) + route_ids) * 2
        group_key += steps.late
        _, first, group_ids = np.unique(group_key, return_index=True, return_inverse=True)
        templates: list[tuple[bytes, ...] | None] = []
        message_keys: list[bytes] = []
        for position in first.tolist():
            symbol = columns.names[int(columns.symbol_ids[position])]
            source_topic, partition = route_list[int(route_ids[position])]
            try:
                parts = self._template(
                    symbol,
                    int(steps.scored_at[position]),
                    bool(steps.late[position]),
                    source_topic,
                    partition,
                )
            except Exception:  # a score msgspec cannot write: its ticks are dead letters, as one by one
                log.exception("writing the predictions of %s failed", symbol)
                parts = None
            templates.append(parts)
            key = self._keys.get(symbol)
            if key is None:
                key = self._keys[symbol] = symbol.encode()
            message_keys.append(key)
        keyed = list(zip(message_keys, templates, strict=True))  # per group: (message key, template)
        # The field names after the timestamp and after the offset are written onto each value here.
        timestamps = quoted_timestamps(columns.ts, AFTER_TIMESTAMP)
        prices = encode_column(columns.price.tolist())
        offsets = encode_column(sources.offsets.tolist(), AFTER_OFFSET)
        sent = sources.sent
        now = time.time_ns() // 1_000_000
        if sent.size and int(sent.min()) > 0:
            latencies = encode_column((now - sent).tolist())
        else:  # a record without a timestamp has no latency
            latencies = encode_column([now - t if t > 0 else None for t in sent.tolist()])
        topic = self.topics.predictions
        join = b"".join
        if all(parts is not None for parts in templates):
            return [
                OutMessage(topic, key, join((head, stamp, price, after_price, offset, latency, tail)))
                for (key, (head, after_price, tail)), stamp, price, offset, latency in zip(
                    map(keyed.__getitem__, group_ids.tolist()),
                    timestamps,
                    prices,
                    offsets,
                    latencies,
                    strict=True,
                )
            ]
        out: list[OutMessage] = []
        for position, (group, stamp, price, offset, latency) in enumerate(
            zip(group_ids.tolist(), timestamps, prices, offsets, latencies, strict=True)
        ):
            parts = templates[group]
            if parts is None:
                record = records[position]
                error = ValueError(
                    f"the prediction of {columns.names[int(columns.symbol_ids[position])]} cannot be written"
                )
                self._score_failed(work, record, error)
                continue
            head, after_price, tail = parts
            out.append(
                OutMessage(
                    topic, message_keys[group], join((head, stamp, price, after_price, offset, latency, tail))
                )
            )
        return out

    def _template(
        self, symbol: str, bar_ts: int, late: bool, topic: str, partition: int
    ) -> tuple[bytes, ...]:
        """The template of a symbol's predictions scored at `bar_ts` (NO_BAR: none) from one partition,
        kept while the bar's score stays the same object (a refresh replaces it)."""
        score, bar_text = _EMPTY_SCORE, None
        if bar_ts != NO_BAR:
            score = self.scores.get(symbol, _NO_SCORES).get(bar_ts, _EMPTY_SCORE)
        key = (symbol, bar_ts, late, topic, partition)
        cached = self._templates.get(key)
        if cached is not None and cached[0] is score:
            return cached[1]
        if bar_ts != NO_BAR:
            bar_text = format_timestamp(bar_ts)
        parts = PredictionTemplate(
            {
                "symbol": symbol,
                "risk_score": score.risk_score,
                "vol_regime": score.vol_regime,
                "nowcast_ret": score.nowcast_ret,
                "predicted_volatility": score.predicted_volatility,
                "model_version": score.model_version,
                "bar_timestamp": bar_text,
                "late": late,
                "topic": topic,
                "partition": partition,
                "intervals": score.intervals,
                "value_at_risk": score.value_at_risk,
                "expected_shortfall": score.expected_shortfall,
                "var_level": score.var_level,
            }
        ).spliced
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
        self._templates[key] = (score, parts)
        return parts

    def _prediction(
        self,
        item: _Scored,
        predictions_topic: str,
        encode: Callable[[Prediction], bytes],
        tick_text: str,
        bar_texts: dict[int, str],
    ) -> tuple[OutMessage, list[Alert] | None]:
        """One tick's prediction message and the alerts it raises (none of them is emitted if this raises)."""
        tick, record = item.tick, item.record
        symbol = tick.symbol
        alerts: list[Alert] | None = None
        scores = self.scores.get(symbol, _NO_SCORES)
        for bar_ts in item.closed:
            alerts = (alerts or []) + self._bar_alerts(symbol, scores.get(bar_ts))
        if not item.late:
            alert = self.alerts.on_tick(symbol, tick.timestamp_ms, tick.price)
            if alert is not None:
                alerts = [*(alerts or ()), alert]
        bar_ts = item.bar_ts
        score = scores.get(bar_ts, _EMPTY_SCORE) if bar_ts is not None else _EMPTY_SCORE
        bar_text = None
        if bar_ts is not None:
            bar_text = bar_texts.get(bar_ts)
            if bar_text is None:
                bar_text = bar_texts[bar_ts] = format_timestamp(bar_ts)
        now = time.time_ns() // 1_000_000
        payload = Prediction(
            symbol,
            tick_text,
            tick.price,
            score.risk_score,
            score.vol_regime,
            score.nowcast_ret,
            score.predicted_volatility,
            score.model_version,
            bar_text,
            item.late,
            Source(record.topic, record.partition, record.offset),
            now - record.timestamp if record.timestamp > 0 else None,
            score.intervals,
            score.value_at_risk,
            score.expected_shortfall,
            score.var_level,
        )
        key = self._keys.get(symbol)
        if key is None:
            key = self._keys[symbol] = symbol.encode()
        return OutMessage(predictions_topic, key, encode(payload)), alerts

    def _bar_alerts(self, symbol: str, score: BarScore | None) -> list[Alert]:
        if score is None:
            return []
        found = []
        if score.vol_regime is not None and score.vol is not None:
            alert = self.alerts.on_regime(symbol, score.bar_ts, score.vol, score.vol_regime)
            if alert is not None:
                found.append(alert)
        if score.predicted_volatility is not None:
            alert = self.alerts.on_forecast(symbol, score.bar_ts, score.predicted_volatility)
            if alert is not None:
                found.append(alert)
        return found

    def _forget_old_scores(self, work: BatchWork) -> None:
        for symbol in work.refresh_symbols:
            scores = self.scores.get(symbol)
            if scores and len(scores) > KEEP_SCORES:
                for bar_ts in sorted(scores)[:-KEEP_SCORES]:
                    del scores[bar_ts]

    def process(self, records: Iterable[InputRecord]) -> tuple[list[OutMessage], list[Alert], BatchWork]:
        """All three steps inline (tests, tools); the scorer process runs step 2 in a thread."""
        work = self.ingest(records)
        self.refresh(work)
        out, alerts = self.emit(work)
        return out, alerts, work
