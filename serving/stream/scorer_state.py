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

import msgspec
import numpy as np
import polars as pl

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
from serving.core.model_store import LoadedModel

log = logging.getLogger(__name__)

HEURISTIC_HORIZON_MIN = 60  # the API's default horizon for `nowcast_ret`
KEEP_SCORES = 4  # closed-bar scores kept per symbol after a batch (only the newest is used later)


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


@dataclass(frozen=True, slots=True)
class OutMessage:
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


@dataclass(slots=True)
class _Scored:
    record: InputRecord
    tick: Tick
    bar_ts: int | None  # newest closed bar of the symbol after this tick (what the tick is scored at)
    closed: tuple[int, ...]
    late: bool


@dataclass
class BatchWork:
    ticks: list[_Scored] = field(default_factory=list)
    dlq: list[OutMessage] = field(default_factory=list)
    refresh_symbols: set[str] = field(default_factory=set)
    new_bars: dict[str, list[int]] = field(default_factory=dict)  # symbol → bars closed in the batch
    model: LoadedModel | None = None
    forecast_alerts: list[tuple[str, int, float]] = field(default_factory=list)  # model-change forecasts
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) → next offset


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
    ) -> None:
        self.symbols = frozenset(symbols)
        self.timeframe = timeframe
        self.topics = topics
        self.model = model
        self.max_future_ms = max_future_ms
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.book = BarBook(timeframe, max(keep_bars, FEATURE_BARS))
        self.alerts = AlertEngine(timeframe, config=alert_config)
        self.scores: dict[str, dict[int, BarScore]] = {}
        self.latest_features: dict[str, pl.DataFrame] = {}  # per symbol, from the last refresh
        self.counters = Counters()

    # -- warm start --------------------------------------------------------------------------------

    def seed(self, symbol: str, bars: pl.DataFrame) -> int:
        return self.book.seed(symbol, bars)

    def warm_work(self) -> BatchWork:
        """Work that scores the newest stored bar of every seeded symbol (run before the first batch)."""
        work = BatchWork(model=self.model())
        work.refresh_symbols = {s for s, b in self.book.symbols.items() if b.closed_count}
        return work

    # -- step 1 ------------------------------------------------------------------------------------

    def ingest(self, records: Iterable[InputRecord]) -> BatchWork:
        model = self.model()
        work = BatchWork(model=model)
        now = self.clock_ms()
        counters = self.counters
        for record in records:
            counters.consumed += 1
            work.offsets[(record.topic, record.partition)] = record.offset + 1
            try:
                tick = parse_tick(record.value, self.symbols, now, self.max_future_ms)
            except InvalidTick as exc:
                counters.dlq[exc.code] += 1
                work.dlq.append(self._dead_letter(record, exc.reason))
                continue
            counters.valid += 1
            bars = self.book.get(tick.symbol)
            ingested = bars.add(tick)
            if ingested.late:
                counters.late += 1
            if ingested.closed:
                work.new_bars.setdefault(tick.symbol, []).extend(ingested.closed)
                work.refresh_symbols.add(tick.symbol)
            work.ticks.append(_Scored(record, tick, bars.last_closed_ts, ingested.closed, ingested.late))
        version = model.version if model is not None else None
        for symbol, scores in self.scores.items():
            newest = scores[max(scores)] if scores else None
            if newest is not None and newest.scored_with != version:
                work.refresh_symbols.add(symbol)  # a new champion: forecast again at the newest bar
        for symbol in {t.tick.symbol for t in work.ticks}:
            last = self.book.get(symbol).last_closed_ts
            if last is not None and last not in self.scores.get(symbol, {}):
                work.refresh_symbols.add(symbol)  # seeded after start, or never scored
        return work

    def _dead_letter(self, record: InputRecord, reason: str) -> OutMessage:
        headers = (
            ("reason", reason.encode()),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
            ("source_timestamp_ms", str(record.timestamp).encode()),
        )
        return OutMessage(self.topics.dlq, record.key, record.value or b"", headers)

    # -- step 2 (blocking; run in a thread) ------------------------------------------------------------

    def refresh(self, work: BatchWork) -> None:
        symbols = sorted(work.refresh_symbols)
        if not symbols:
            return
        self.counters.refreshes += 1
        frames = self.book.frames(symbols)
        if frames.height == 0:
            return
        features = compute_features(frames, self.timeframe)
        model = work.model
        windows: list[np.ndarray] = []
        targets: list[tuple[str, int]] = []
        new_scores: dict[tuple[str, int], BarScore] = {}
        for (symbol,), part in features.group_by("symbol", maintain_order=True):
            part = part.drop("symbol")
            self.latest_features[symbol] = part
            last = int(part["ts"][-1])
            bars_to_score = sorted({*work.new_bars.get(symbol, ()), last})
            for bar_ts in bars_to_score:
                upto = part.filter(pl.col("ts") <= bar_ts) if bar_ts != last else part
                new_scores[(symbol, bar_ts)] = self._heuristic(upto, bar_ts)
                if model is not None and model.timeframe == self.timeframe:
                    try:
                        window = latest_window(
                            upto, model.feature_columns, self.timeframe, model.sequence_length
                        )
                    except ValueError:
                        continue  # a hole or too little history: this bar has no forecast
                    windows.append(window.X[0])
                    targets.append((symbol, bar_ts))
        forecasts: dict[tuple[str, int], float] = {}
        if windows:
            predicted = np.asarray(model.predict(np.stack(windows).astype(np.float32)), dtype=np.float64)
            self.counters.forecasts += len(windows)
            for target, value in zip(targets, predicted.reshape(-1), strict=True):
                value = float(value)
                if math.isfinite(value) and value >= 0:
                    forecasts[target] = value
        version = model.version if model is not None else None
        for (symbol, bar_ts), score in new_scores.items():
            value = forecasts.get((symbol, bar_ts))
            scores = self.scores.setdefault(symbol, {})
            previous = scores.get(bar_ts)
            scores[bar_ts] = BarScore(
                score.bar_ts,
                score.risk_score,
                score.vol_regime,
                score.nowcast_ret,
                score.vol,
                value,
                version if value is not None else None,
                version,
            )
            # A re-forecast of a bar already scored (a new model) is checked against the alert rule
            # here; forecasts of bars closed in this batch are checked when their closing tick is emitted.
            if previous is not None and value is not None and bar_ts not in work.new_bars.get(symbol, ()):
                work.forecast_alerts.append((symbol, bar_ts, value))

    def _heuristic(self, features: pl.DataFrame, bar_ts: int) -> BarScore:
        try:
            sig = heuristic_signal(features, self.timeframe, HEURISTIC_HORIZON_MIN)
        except ValueError:
            return BarScore(bar_ts, None, None, None, None)
        return BarScore(bar_ts, _finite(sig.risk_score), sig.vol_regime, _finite(sig.nowcast_ret), sig.vol)

    # -- step 3 ------------------------------------------------------------------------------------

    def emit(self, work: BatchWork) -> tuple[list[OutMessage], list[Alert]]:
        """Prediction messages (one per valid tick, input order) and alerts, dead letters first."""
        out: list[OutMessage] = list(work.dlq)
        alerts: list[Alert] = []
        for symbol, bar_ts, value in work.forecast_alerts:
            alert = self.alerts.on_forecast(symbol, bar_ts, value)
            if alert is not None:
                alerts.append(alert)
        predictions_topic = self.topics.predictions
        # msgspec encodes ~3× faster than json.dumps and straight to bytes; every value here is already
        # finite or None (it would write a NaN as null, never as the invalid NaN literal).
        dumps = msgspec.json.encode
        empty = BarScore(0, None, None, None, None)
        for item in work.ticks:
            tick, record = item.tick, item.record
            scores = self.scores.get(tick.symbol, {})
            for bar_ts in item.closed:
                alerts.extend(self._bar_alerts(tick.symbol, scores.get(bar_ts)))
            if not item.late:
                alert = self.alerts.on_tick(tick.symbol, tick.timestamp_ms, tick.price)
                if alert is not None:
                    alerts.append(alert)
            score = scores.get(item.bar_ts, empty) if item.bar_ts is not None else empty
            now = time.time_ns() // 1_000_000
            payload = {
                "symbol": tick.symbol,
                "timestamp": format_timestamp(tick.timestamp_ms),
                "price": tick.price,
                "risk_score": score.risk_score,
                "vol_regime": score.vol_regime,
                "nowcast_ret": score.nowcast_ret,
                "predicted_volatility": score.predicted_volatility,
                "model_version": score.model_version,
                "bar_timestamp": format_timestamp(item.bar_ts) if item.bar_ts is not None else None,
                "late": item.late,
                "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
                "latency_ms": now - record.timestamp if record.timestamp > 0 else None,
            }
            out.append(OutMessage(predictions_topic, tick.symbol.encode(), dumps(payload)))
        for alert in alerts:
            self.counters.alerts[alert.type] += 1
            out.append(
                OutMessage(self.topics.alerts, alert.symbol.encode(), json.dumps(alert.to_dict()).encode())
            )
        self._forget_old_scores(work)
        self.book.trim()
        return out, alerts

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
