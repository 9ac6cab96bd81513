"""From bars to answers: features (cached per last closed bar), the heuristic signal, the ML forecast.

Features always go through `lib.features.compute_features`, the function the pipeline uses, over the
last `FEATURE_BARS` = LOOKBACK_BARS + sequence length bars: the oldest bar of the model's 48-bar window
then still has its full 720-bar look-back, so every value equals what the `features` asset stores for
that bar (tested). A snapshot of the features is cached per (symbol, timeframe, newest bar, origin):
while the bar has not changed, an ML request costs the forecaster call and the history write only.

A feature-frame champion (`LoadedModel.is_frame`) reads every symbol it was fitted on at once
(`serving.core.frames`): its forecast at a bar needs the snapshots of all those symbols, each cached as
above, and one frame is scored per (model version, newest bar of each symbol) for all of them together
(`FeatureCache.frame_forecasts`), so BTC and ETH requests in the same hour share one computation.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import anyio
import msgspec
import numpy as np
import polars as pl

from crypto_platform.lib import forecast
from crypto_platform.lib.features import HEURISTIC_FEATURES, MODEL_FEATURES, compute_features
from crypto_platform.lib.market.timeframes import hours_per_bar
from crypto_platform.lib.model.windows import FEATURE_BARS, latest_window
from crypto_platform.lib.signals import HeuristicSignal, heuristic_signal, vol_thresholds
from serving.api import schemas
from serving.core import frames
from serving.core.market import Bars, MarketService
from serving.core.model_store import LoadedModel

SNAPSHOT_CACHE_SIZE = 64


class NotEnoughHistoryError(ValueError):
    """The bars at hand cannot support the computation (too few, or a hole in the window). HTTP 503."""


def iso_ms(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def finite(value: Any) -> float | None:
    """JSON never carries NaN or ±inf: undefined numbers become null."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass
class FeatureSnapshot:
    """Features of the newest bars of one symbol, plus per-use derived values, computed once."""

    bars: Bars
    features: pl.DataFrame
    _windows: dict[tuple[tuple[str, ...], int], np.ndarray | NotEnoughHistoryError] = field(
        default_factory=dict
    )
    _heuristic: dict[int, HeuristicSignal | NotEnoughHistoryError] = field(default_factory=dict)
    # Forecasts per (model name, version, run id): a model's forecast at a closed bar never changes, so
    # clients polling between bar closes cost a dict lookup, not a forward pass (issue 4's p50 goal).
    _forecasts: dict[tuple[str, str, str | None], schemas.MLPrediction] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @cached_property
    def last_ts(self) -> int:
        return int(self.features["ts"][-1])

    def last_value(self, column: str) -> float | None:
        return finite(self.features[column][-1])

    def window(self, columns: tuple[str, ...], sequence_length: int) -> np.ndarray:
        """float32 [1, sequence_length, n_features]: the model input ending at the newest bar."""
        key = (columns, sequence_length)
        cached = self._windows.get(key)
        if cached is None:
            try:
                cached = latest_window(self.features, columns, self.bars.timeframe, sequence_length).X
            except ValueError as exc:  # InsufficientHistoryError, or columns the pipeline does not make
                cached = NotEnoughHistoryError(f"{self.bars.symbol}: {exc}")
            with self._lock:
                self._windows[key] = cached
        if isinstance(cached, Exception):
            raise cached
        return cached

    def heuristic(self, horizon_min: int) -> HeuristicSignal:
        cached = self._heuristic.get(horizon_min)
        if cached is None:
            try:
                cached = heuristic_signal(self.features, self.bars.timeframe, horizon_min)
            except ValueError as exc:
                cached = NotEnoughHistoryError(f"{self.bars.symbol}: {exc}")
            with self._lock:
                if len(self._heuristic) > 32:
                    self._heuristic.clear()
                self._heuristic[horizon_min] = cached
        if isinstance(cached, Exception):
            raise cached
        return cached

    def cached_forecast(self, model: LoadedModel) -> schemas.MLPrediction | None:
        return self._forecasts.get((model.name, model.version, model.run_id))

    def forecast(self, model: LoadedModel, cache: FeatureCache | None = None) -> schemas.MLPrediction:
        """`model`'s described forecast at the newest bar, computed once per (name, version, run id): a
        reloaded version has another key and forecasts afresh. A frame model needs `cache` (the other
        symbols' snapshots); blocking then, on a miss, as those may need fetching."""
        key = (model.name, model.version, model.run_id)
        described = self._forecasts.get(key)
        if described is None:
            if model.is_frame:
                if cache is None:
                    raise TypeError("a feature-frame model forecasts from a FeatureCache (all its symbols)")
                predicted = cache.frame_forecast(model, self)
            else:
                X = self.window(model.feature_columns, model.sequence_length)
                predicted = float(model.predict(X)[0])
            if not math.isfinite(predicted) or predicted < 0:
                raise NotEnoughHistoryError(
                    f"model version {model.version} returned no usable forecast ({predicted})"
                )
            described = describe_forecast(model, self, predicted)
            with self._lock:
                self._forecasts[key] = described
        return described


class FeatureCache:
    """Feature snapshots keyed by (symbol, timeframe, newest bar, ...), oldest entries evicted first."""

    def __init__(self, market: MarketService, max_entries: int = SNAPSHOT_CACHE_SIZE) -> None:
        self.market = market
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], FeatureSnapshot] = OrderedDict()
        # Frame models: the scores of one cross-symbol frame per (model, newest bar of each symbol).
        self._frames: OrderedDict[tuple[Any, ...], frames.FrameScores] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(bars: Bars) -> tuple[Any, ...]:
        """What identifies a snapshot: the same key, the same features (and answers derived from them)."""
        return (
            bars.symbol,
            bars.timeframe,
            bars.last_closed_ts,
            bars.last_ts,
            bars.height,
            bars.origin,
            bars.source,
        )

    def cached(self, symbol: str, timeframe: str) -> FeatureSnapshot | None:
        """The snapshot for the newest bar if bars and features are both cached (no I/O, no compute)."""
        bars = self.market.cached_bars(symbol, timeframe, FEATURE_BARS)
        return None if bars is None or bars.height == 0 else self._entries.get(self.key(bars))

    def snapshot(self, symbol: str, timeframe: str) -> FeatureSnapshot:
        """Bars (possibly fetched) and their features (computed once per newest bar). Blocking."""
        bars = self.market.bars(symbol, timeframe, FEATURE_BARS)
        if bars.frame.height == 0:
            raise NotEnoughHistoryError(f"{symbol} {timeframe}: no closed bars are available")
        key = self.key(bars)
        snap = self._entries.get(key)
        if snap is not None:
            return snap
        snap = FeatureSnapshot(bars, compute_features(bars.frame, timeframe))
        with self._lock:
            self._entries[key] = snap
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return snap

    def _frame_snapshots(self, model: LoadedModel, snap: FeatureSnapshot) -> dict[str, FeatureSnapshot]:
        """`snap` and the snapshots of the other symbols the frame model reads with it, by symbol."""
        timeframe, asked = snap.bars.timeframe, snap.bars.symbol
        symbols = frames.frame_symbols(model, asked)
        snaps: dict[str, FeatureSnapshot] = {}
        for symbol in symbols:
            if symbol == asked:
                snaps[symbol] = snap
                continue
            try:
                snaps[symbol] = self.snapshot(symbol, timeframe)
            except NotEnoughHistoryError as exc:
                raise NotEnoughHistoryError(
                    f"model version {model.version} reads {list(symbols)} together; {exc}"
                ) from exc
        return snaps

    def frame_inputs(self, model: LoadedModel, snap: FeatureSnapshot) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The cross-symbol frame the model scores `snap`'s newest bar from, and the rows of it that
        bar's window reads. Blocking: other symbols may be fetched."""
        snaps = self._frame_snapshots(model, snap)
        frame = frames.cross_symbol_features({s: v.features for s, v in snaps.items()}, snap.bars.timeframe)
        return frame, frames.window_rows(model, frame, [(snap.bars.symbol, snap.last_ts)])

    def frame_forecasts(self, model: LoadedModel, snap: FeatureSnapshot) -> frames.FrameScores:
        """The frame model's scores at the newest bar of every symbol of its frame (`frames`' rules),
        computed once per (model, each symbol's newest bar). Blocking: other symbols may be fetched."""
        timeframe = snap.bars.timeframe
        snaps = self._frame_snapshots(model, snap)
        symbols = tuple(snaps)
        key = (
            model.name,
            model.version,
            model.run_id,
            timeframe,
            tuple((s, snaps[s].bars.last_closed_ts, snaps[s].last_ts, snaps[s].bars.origin) for s in symbols),
        )
        scores = self._frames.get(key)
        if scores is None:
            frame = frames.cross_symbol_features({s: snaps[s].features for s in symbols}, timeframe)
            targets = [(s, snaps[s].last_ts) for s in symbols]
            scores = frames.score_frame(model, frame, targets, symbols)
            with self._lock:
                self._frames[key] = scores
                while len(self._frames) > self.max_entries:
                    self._frames.popitem(last=False)
        return scores

    def frame_forecast(self, model: LoadedModel, snap: FeatureSnapshot) -> float:
        """The frame model's forecast for `snap`'s symbol at its newest bar (NotEnoughHistoryError with
        the reason when there is none: another symbol is stale, or the history is too short)."""
        target = (snap.bars.symbol, snap.last_ts)
        unfitted = frames.unfitted_reason(model, target[0])
        if unfitted is not None:  # refused before any other symbol is fetched
            raise NotEnoughHistoryError(unfitted)
        scores = self.frame_forecasts(model, snap)
        if target in scores.forecasts:
            return scores.forecasts[target]
        _, reason = scores.missing.get(target, ("", f"model version {model.version} did not score {target}"))
        raise NotEnoughHistoryError(reason)

    async def snapshot_async(self, symbol: str, timeframe: str) -> FeatureSnapshot:
        """The cached snapshot inline (the hot path: microseconds), else `snapshot` in a worker thread,
        since it may read the store, call the exchange and compute features."""
        snap = self.cached(symbol, timeframe)
        if snap is not None:
            return snap
        return await anyio.to_thread.run_sync(self.snapshot, symbol, timeframe)


# --- answers --------------------------------------------------------------------------------------


def signal_response(
    snap: FeatureSnapshot, exchange: str, horizon_min: int, explain: bool
) -> schemas.SignalResponse:
    sig = snap.heuristic(horizon_min)
    details = None
    if explain:
        calm, turbulent = vol_thresholds(snap.bars.timeframe)
        tail = [
            {k: (finite(v) if isinstance(v, float) else v) for k, v in row.items()}
            for row in sig.features_tail
        ]
        details = schemas.SignalExplain(
            vol=sig.vol,
            calm_below=calm,
            turbulent_from=turbulent,
            features_tail=tail,
            bars_used=snap.features.height,
            origin=snap.bars.origin,
        )
    return schemas.SignalResponse(
        symbol=snap.bars.symbol,
        horizon_min=horizon_min,
        risk_score=sig.risk_score,
        nowcast_ret=sig.nowcast_ret,
        vol_regime=sig.vol_regime,
        method="heuristic",
        exchange=exchange,
        timeframe=snap.bars.timeframe,
        timestamp=iso_ms(snap.last_ts),
        source=snap.bars.source,
        explain=details,
    )


def check_model_timeframe(model: LoadedModel, timeframe: str) -> None:
    if timeframe != model.timeframe:
        raise NotEnoughHistoryError(
            f"model version {model.version} forecasts from {model.timeframe} bars; timeframe {timeframe!r} "
            "has no model"
        )


def ml_prediction(
    model: LoadedModel, snap: FeatureSnapshot, cache: FeatureCache | None = None
) -> tuple[schemas.MLPrediction, float]:
    """The forecast at the newest bar and the seconds it took (~0 when this model already forecast
    this bar: the snapshot memoises it). Only `prediction_timestamp` is per request. A frame model
    needs `cache`, and blocks on a miss (the other symbols' bars)."""
    started = time.perf_counter()
    described = snap.forecast(model, cache)
    elapsed = time.perf_counter() - started
    return msgspec.structs.replace(described, prediction_timestamp=iso_now()), elapsed


async def ml_prediction_async(
    model: LoadedModel, snap: FeatureSnapshot, cache: FeatureCache
) -> tuple[schemas.MLPrediction, float]:
    """`ml_prediction` inline when it cannot block (a window model: ~1-2 ms of numpy; a frame model
    whose forecast is memoised), else in a worker thread."""
    if model.is_frame and snap.cached_forecast(model) is None:
        return await anyio.to_thread.run_sync(ml_prediction, model, snap, cache)
    return ml_prediction(model, snap, cache)


def describe_forecast(model: LoadedModel, snap: FeatureSnapshot, predicted: float) -> schemas.MLPrediction:
    """The forecast of the next `horizon_bars` bars' volatility as served: its regime, risk level and
    confidence come from `lib.forecast.describe_forecast` (the rules and their units are there)."""
    timeframe = snap.bars.timeframe
    current = snap.last_value("realized_vol_24")
    described = forecast.describe_forecast(
        predicted, timeframe, model.horizon_bars, current, snap.last_value("realized_vol_168")
    )
    uncertainty = forecast.describe_uncertainty(predicted, model.dispersion)
    return schemas.MLPrediction(
        predicted_volatility=predicted,
        horizon_hours=model.horizon_bars * hours_per_bar(timeframe),
        volatility_regime=described.regime,
        risk_level=described.risk_level,
        current_volatility=current,
        confidence=described.confidence,
        prediction_timestamp=iso_now(),
        bar_timestamp=iso_ms(snap.last_ts),
        intervals=prediction_intervals(uncertainty),
        value_at_risk=uncertainty.value_at_risk,
        expected_shortfall=uncertainty.expected_shortfall,
        var_level=uncertainty.var_level,
    )


def prediction_intervals(
    uncertainty: forecast.ForecastUncertainty,
) -> list[schemas.PredictionInterval] | None:
    if uncertainty.intervals is None:
        return None
    return [schemas.PredictionInterval(i.level, i.lower, i.upper) for i in uncertainty.intervals]


def occlusion_attributions(
    model: LoadedModel, snap: FeatureSnapshot, cache: FeatureCache | None = None
) -> tuple[float, str, list[schemas.Attribution]]:
    """Per-feature occlusion: the forecast minus the forecast with one feature's whole 48-bar history
    replaced by a reference value, the training mean of the model's normaliser (the input the network
    reads as 0 after normalisation, "no information") or, for models without one, the window's own mean
    (its history flattened). All occluded windows go through the forecaster in one batch. A frame model
    (which needs `cache`, its other symbols' snapshots) is explained by `frame_occlusion_attributions`.
    """
    if model.is_frame:
        if cache is None:
            raise TypeError("a feature-frame model is explained from a FeatureCache (all its symbols)")
        return frame_occlusion_attributions(model, snap, cache)
    X = snap.window(model.feature_columns, model.sequence_length)
    n = len(model.feature_columns)
    if model.reference_values is not None:
        reference, label = model.reference_values.astype(np.float32), "training_mean"
    else:
        reference, label = X[0].mean(axis=0), "window_mean"
    batch = np.repeat(X, n + 1, axis=0)
    for j in range(n):
        batch[j + 1, :, j] = reference[j]
    predictions = np.asarray(model.predict(batch), dtype=np.float64)
    base = float(predictions[0])
    rows = [
        _attribution(name, base, float(predictions[j + 1]), float(X[0, -1, j]), float(reference[j]))
        for j, name in enumerate(model.feature_columns)
    ]
    return base, label, _largest_first(rows)


def _attribution(
    feature: str, base: float, occluded: float, last_value: float, reference: float
) -> schemas.Attribution:
    delta = base - occluded
    return schemas.Attribution(
        feature=feature,
        attribution=delta,
        relative=delta / base if base else 0.0,
        occluded_prediction=occluded,
        last_value=last_value,
        reference_value=reference,
    )


def _largest_first(attributions: list[schemas.Attribution]) -> list[schemas.Attribution]:
    return sorted(attributions, key=lambda a: abs(a.attribution), reverse=True)


def frame_occlusion_attributions(
    model: LoadedModel, snap: FeatureSnapshot, cache: FeatureCache
) -> tuple[float, str, list[schemas.Attribution]]:
    """Occlusion for a feature-frame model: the forecast minus the forecast with one feature of the
    asked symbol, over the rows its window reads, replaced by that feature's mean over the symbol's
    loaded history. Not the window's own mean: a frame model may read one row (HAR+ does), whose mean
    is itself. The other symbols' rows, which a cross-asset model also reads, are left as they are.
    NotEnoughHistoryError (with the reason) where the model serves no forecast for this bar."""
    base = cache.frame_forecast(model, snap)
    frame, rows = cache.frame_inputs(model, snap)
    target = (snap.bars.symbol, snap.last_ts)
    mine = pl.col("symbol") == target[0]
    history = frame.filter(mine)
    last = rows.filter(mine & (pl.col("ts") == target[1]))
    attributions = []
    for name in model.feature_columns:
        values = history.get_column(name).cast(pl.Float64)
        finite_history = values.filter(values.is_finite())
        last_value = finite(last.get_column(name)[0]) if last.height else None
        if finite_history.is_empty() or last_value is None:
            continue  # nothing to stand for "typical", or no value to replace: no attribution
        reference = float(finite_history.mean())
        occluded_rows = rows.with_columns(
            pl.when(mine).then(pl.lit(reference)).otherwise(pl.col(name)).alias(name)
        )
        occluded = frames.predict_rows(model, occluded_rows).get(target, math.nan)
        if not math.isfinite(occluded):
            continue  # the model has no forecast without this feature's values: none to compare with
        attributions.append(_attribution(name, base, occluded, last_value, reference))
    return base, "history_mean", _largest_first(attributions)


def features_rows(snap: FeatureSnapshot, n: int) -> tuple[list[str], list[dict[str, Any]]]:
    columns = [*HEURISTIC_FEATURES, *MODEL_FEATURES]
    rows = []
    for row in snap.features.tail(n).iter_rows(named=True):
        rows.append({"ts": row["ts"], "time": iso_ms(row["ts"]), **{c: finite(row[c]) for c in columns}})
    return columns, rows
