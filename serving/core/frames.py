"""The cross-symbol feature frame a feature-frame champion reads, and its scoring: one definition for the
API (`serving.api.scoring`) and the scorer (`serving.stream.scorer_state`).

A `feature-frame/v1` model (HAR+, its residual, the combination, the per-symbol baselines; see
`lib.model.frame_serving`) reads rows of `har_plus_features(compute_features(bars))` for every symbol it
was fitted on at once: `cross_log_rv_24` at bar t is the mean of the OTHER symbols' log RV at t. So:

- `frame_symbols`: the symbols of a frame are the model's own (`LoadedModel.symbols`), never more: the
  cross-asset column of a fitted symbol must not change because someone asked for another one. A symbol
  the model holds no parameters for (HAR+'s per-asset standardisation, per-symbol GARCH) gets no
  forecast (`UNFITTED`, with the model's symbols in the reason) instead of foreign parameters; a model
  without per-symbol state (`symbols` empty: naive, EWMA, HAR) reads the asked symbol alone.
- `cross_symbol_features`: each symbol's `compute_features` frame (computed per symbol, as the API and
  the scorer already hold them) concatenated with its `symbol`, then `har_plus_features` across them.
- `score_frame`: forecasts of the (symbol, bar) targets, from the rows that bar's windows read.

Completeness. A forecast at (symbol, t) is made only when every symbol of the frame has a bar at t:
`har_plus_features` averages the symbols that HAVE a bar at t, so a missing one would silently give a
cross-asset value of fewer symbols than the model was fitted with. A stale or empty symbol (its newest
bar is older than t, or it has no bars) therefore means no forecast at t, with the reason in
`FrameScores.missing` (the API answers 503 with it; the scorer sends the tick with a null forecast,
counts it, and forecasts again when the late symbol's bar arrives). A row whose features are not finite
(too little history, a hole in a window) gives NaN from the model: no forecast either, also with a
reason. Nothing here raises for missing data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import polars as pl

from crypto_platform.lib.market.timeframes import timeframe_ms
from crypto_platform.lib.model.frame_serving import OUTPUT_COLUMN
from crypto_platform.lib.model.har_features import har_plus_features
from serving.core.model_store import LoadedModel

STALE = "stale_symbol"  # another symbol of the frame has no bar at the target's time
UNFITTED = "unfitted_symbol"  # the model was not fitted on the target's symbol
NO_FORECAST = "no_forecast"  # the model returned NaN / a negative value (short history, a hole)


@dataclass
class FrameScores:
    """Forecasts per (symbol, bar ts), and for targets without one, (reason code, message)."""

    forecasts: dict[tuple[str, int], float] = field(default_factory=dict)
    missing: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)


def unfitted_reason(model: LoadedModel, symbol: str) -> str | None:
    """Why `model` cannot forecast `symbol` (it holds per-symbol parameters, none for it); None if it can."""
    if not model.symbols or symbol in model.symbols:
        return None
    return (
        f"model version {model.version} ({model.family}) was fitted on {sorted(model.symbols)} and "
        f"holds no parameters for {symbol}"
    )


def frame_symbols(model: LoadedModel, *asked: str) -> tuple[str, ...]:
    """The symbols whose rows go into the frame that scores `asked`, sorted."""
    return tuple(model.symbols) if model.symbols else tuple(sorted(set(asked)))


def cross_symbol_features(features_by_symbol: Mapping[str, pl.DataFrame], timeframe: str) -> pl.DataFrame:
    """One long frame (symbol, ts, features, HAR+ features) of per-symbol `compute_features` frames."""
    parts = [
        frame.drop("symbol", strict=False).with_columns(pl.lit(symbol, dtype=pl.Utf8).alias("symbol"))
        for symbol, frame in features_by_symbol.items()
        if frame.height
    ]
    if not parts:
        return pl.DataFrame(schema={"symbol": pl.Utf8, "ts": pl.Int64})
    combined = pl.concat(parts, how="diagonal_relaxed").sort("symbol", "ts")
    return har_plus_features(combined, timeframe)


def score_frame(
    model: LoadedModel,
    frame: pl.DataFrame,
    targets: Iterable[tuple[str, int]],
    symbols: Iterable[str],
) -> FrameScores:
    """Forecasts of `targets` from `frame` (a `cross_symbol_features` result over `symbols`): one
    `predict_frame` call over the rows the targets' windows read (the last `sequence_length` bars up to
    each target, of every symbol, as the cross-asset column needs them all)."""
    if model.predict_frame is None:
        raise TypeError(f"model version {model.version} is not a feature-frame model")
    scores = FrameScores()
    wanted = sorted(set(targets))
    if not wanted:
        return scores
    expected = set(symbols)
    present: dict[int, set[str]] = {}
    if frame.height:
        for (ts,), part in frame.select("ts", "symbol").group_by("ts"):
            present[int(ts)] = set(part["symbol"].to_list())
    complete = []
    for symbol, ts in wanted:
        unfitted = unfitted_reason(model, symbol)
        if unfitted is not None:
            scores.missing[(symbol, ts)] = (UNFITTED, unfitted)
            continue
        lacking = sorted(expected - present.get(ts, set()))
        if lacking:
            scores.missing[(symbol, ts)] = (
                STALE,
                f"model version {model.version} reads {sorted(expected)} together and "
                f"{', '.join(lacking)} has no bar at {ts} (stale or empty)",
            )
        else:
            complete.append((symbol, ts))
    if not complete:
        return scores
    by_key = predict_rows(model, window_rows(model, frame, complete))
    for key in complete:
        value = by_key.get(key, math.nan)
        if math.isfinite(value) and value >= 0:
            scores.forecasts[key] = value
        else:
            scores.missing[key] = (
                NO_FORECAST,
                f"model version {model.version} has no forecast for {key[0]} at {key[1]} "
                "(too little history, a hole in its window, or a non-finite feature)",
            )
    return scores


def window_rows(model: LoadedModel, frame: pl.DataFrame, targets: Iterable[tuple[str, int]]) -> pl.DataFrame:
    """The rows (symbol, ts, the model's features) of `frame` the targets' windows read: the last
    `sequence_length` bars up to each target, of every symbol, as the cross-asset columns need them all."""
    bar_ms = timeframe_ms(model.timeframe)
    reach = (model.sequence_length - 1) * bar_ms
    needed = sorted({t - k for _, t in targets for k in range(0, reach + 1, bar_ms)})
    return frame.filter(pl.col("ts").is_in(needed)).select("symbol", "ts", *model.feature_columns)


def predict_rows(model: LoadedModel, rows: pl.DataFrame) -> dict[tuple[str, int], float]:
    """`predict_frame` over `rows`, as (symbol, ts) → forecast."""
    if model.predict_frame is None:
        raise TypeError(f"model version {model.version} is not a feature-frame model")
    out = model.predict_frame(rows)
    return {
        (str(s), int(t)): float(v)
        for s, t, v in zip(out["symbol"], out["ts"], out[OUTPUT_COLUMN], strict=True)
    }
