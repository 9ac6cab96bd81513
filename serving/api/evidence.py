"""The evidence the web UI shows first: every symbol at a glance, the served forecasts against what
happened after them, the model's card and promotion history, drift, and the stored reports.

Read-only: nothing here records a signal or a prediction (the overview's forecast is computed for the
view, like `/signals/compare`, so a poll every few seconds does not fill the history with copies).

Where each piece comes from
- Overview and symbol series: bars from `serving.core.market` (store first, live when stale) and
  features from `lib.features.compute_features`, the pipeline's one feature function.
- Served forecasts: the history DB's `ml_predictions` (one row per request), reduced in SQL to one
  forecast per (bar, model version) — the memoised forecast at a closed bar never changes, so repeats are
  counted, not drawn. Intervals from its `intervals` column; a row stored before that column existed
  has them only in its stored answer, which is then read instead.
- What happened after: the realized volatility of the 24 bars after the forecast's bar is the model's
  target (lib.model.windows), which is `realized_vol_24` at the bar 24 bars later; `compute_features`
  leaves it null when any of those bars is missing, so a forecast across a hole stays unmatched.
- Live QLIKE: per matched forecast on variances (lib.model.metrics), the champion against persistence
  baselines read off the same bars at the forecast's bar (realized_vol_24 and _168: the last day and
  week on the 24-bar scale); the best baseline is the one with the lowest mean QLIKE.
- Model view: the MLflow registry (aliases, version tags written by training and promotion, the
  training run's `evaluation/holdout.json`), and the newest `ml/drift/<day>.json` the `feature_drift`
  asset writes to the data location.
- Reports: `reports/daily/<day>.md` (daily_report) and `quality-reports/<day>/<SYMBOL>.json`
  (quality_report) in the data location.

Pure computations take frames and rows and return `serving.api.evidence_schemas` structs; the readers
(history DB, registry, object store) are separate functions below them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
import numpy as np
import polars as pl
from sqlalchemy import func, select

from crypto_platform.lib import forecast as forecast_rules
from crypto_platform.lib.features import RV_LONG, compute_features
from crypto_platform.lib.market.symbols import exchange_symbol_id
from crypto_platform.lib.market.timeframes import bars_per_day, timeframe_ms
from crypto_platform.lib.model.metrics import qlike_losses
from crypto_platform.lib.model.tags import FAMILY_TAG, TIMEFRAME_TAG, TRAINING_RUN_TAG
from crypto_platform.lib.model.windows import FEATURE_BARS, HORIZON_BARS
from crypto_platform.lib.signals import classify_vol_regime
from crypto_platform.lib.storage import (
    DRIFT_PREFIX,
    QUALITY_REPORTS_PREFIX,
    ObjectNotFoundError,
    ObjectStore,
    newest_json_key,
)
from crypto_platform.lib.track_record import count_inside
from serving.api import evidence_schemas as es
from serving.api.scoring import NotEnoughHistoryError, finite, iso_ms
from serving.api.services import InvalidInputError, Services
from serving.core.history import History, ml_predictions, payload_unless_column, stored_intervals
from serving.core.redaction import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

OVERVIEW_SPARK_BARS = 72  # three days of hourly closes: enough shape for a row, cheap to send
OVERVIEW_POLL_S = 15.0  # the UI's refresh; the features behind a row only change at a bar close
SERIES_DEFAULT_BARS = 336  # two weeks of hourly bars
SERIES_MIN_BARS, SERIES_MAX_BARS = 48, 1440
ROLLING_WINDOW = 24  # matched forecasts per rolling-QLIKE point
# Persistence baselines of the live track record: the forecast is the realized volatility of the last
# day or week, each already on the 24-bar scale of the target (lib.features). Not the month: it would
# need 720 bars of look-back behind every shown bar, more than the served window (FEATURE_BARS) holds.
LIVE_BASELINES: dict[str, str] = {
    "naive": "realized_vol_24",
    "weekly_rv": "realized_vol_168",
}
DAILY_PREFIX = "reports/daily/"
EVALUATION_ARTIFACT = "evaluation/holdout.json"  # lib.model.tracking.EVALUATION_JSON (no mlflow import here)
MAX_DAILY_REPORTS = 60
MAX_PROMOTIONS = 50
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- pure computations ------------------------------------------------------------------------------


def _bounded(lower: Any, upper: Any, level: Any) -> es.Interval | None:
    """An interval from payload values; None unless both bounds are finite numbers, lower ≤ upper."""
    try:
        lo, hi = finite(lower), finite(upper)
        lv = finite(level) if level is not None else None
    except (TypeError, ValueError):
        return None
    if lo is None or hi is None or lo > hi:
        return None
    return es.Interval(lower=lo, upper=hi, level=lv)


def intervals_of(prediction: Mapping[str, Any] | None) -> list[es.Interval]:
    """Every forecast interval a served prediction carries (`intervals: [{level, lower, upper}, ...]`,
    the only shape the API and the scorer have served, narrowest level first as the model was fitted).
    Empty when it carries none (models without intervals); an entry whose bounds are not finite
    numbers, or are inverted, is left out."""
    listed = prediction.get("intervals") if prediction else None
    if not isinstance(listed, list):
        return []
    entries = (i for i in listed if isinstance(i, Mapping))
    found = (_bounded(i.get("lower"), i.get("upper"), i.get("level")) for i in entries)
    return [i for i in found if i is not None]


def interval_of(prediction: Mapping[str, Any] | None) -> es.Interval | None:
    """The interval a forecast is drawn with: the first of `intervals_of` (the narrowest level), None
    when it carries none."""
    found = intervals_of(prediction)
    return found[0] if found else None


def change_over_day(frame: pl.DataFrame, timeframe: str) -> float | None:
    """close / close one day (24 h of bars) before the newest bar − 1, matched by time, so a hole
    in the bars never turns it into a change over some other span; None when that bar is absent."""
    if frame.height == 0:
        return None
    last_ts, last_close = int(frame["ts"][-1]), float(frame["close"][-1])
    earlier = frame.filter(pl.col("ts") == last_ts - bars_per_day(timeframe) * timeframe_ms(timeframe))
    if earlier.height == 0 or not float(earlier["close"][0]) > 0:
        return None
    return last_close / float(earlier["close"][0]) - 1.0


def regime_spans(features: pl.DataFrame, timeframe: str) -> list[es.RegimeSpan]:
    """Runs of consecutive bars in one heuristic regime (lib.signals on vol24); bars without vol24
    end a run and belong to none."""
    spans: list[es.RegimeSpan] = []
    current: es.RegimeSpan | None = None
    for ts, vol in features.select("ts", "vol24").iter_rows():
        regime = classify_vol_regime(vol, timeframe) if vol is not None and math.isfinite(vol) else None
        if regime is None:
            current = None
            continue
        if current is not None and current.regime == regime:
            current.end_ts = int(ts)
            continue
        current = es.RegimeSpan(start_ts=int(ts), end_ts=int(ts), regime=regime)
        spans.append(current)
    return spans


@dataclass(frozen=True)
class ServedRow:
    """One forecast as the history holds it: the first time (bar, version) was served."""

    bar_ts: int
    model_version: str
    predicted_volatility: float
    first_served_at: float  # epoch seconds
    times_served: int
    prediction: Mapping[str, Any]  # `intervals` (the column) or the served `ml_prediction` (older rows)


def _qlike_one(realized: float, forecast: float) -> float | None:
    if not (realized > 0 and forecast > 0):
        return None  # QLIKE takes logs of variances: a zero realized vol (a flat day) has none
    return float(qlike_losses(np.array([realized**2]), np.array([forecast**2]))[0])


def match_forecasts(
    served: Sequence[ServedRow], features: pl.DataFrame, timeframe: str, horizon_bars: int = HORIZON_BARS
) -> list[es.ServedForecast]:
    """Each served forecast with the realized volatility of the `horizon_bars` bars after its bar
    (`realized_vol_24` at bar + horizon), None while those bars have not closed or are not all there."""
    bar_ms = timeframe_ms(timeframe)
    realized = dict(features.select("ts", "realized_vol_24").iter_rows())
    out = []
    for row in sorted(served, key=lambda r: (r.bar_ts, r.first_served_at)):
        target = row.bar_ts + horizon_bars * bar_ms
        value = finite(realized.get(target))
        intervals = intervals_of(row.prediction)
        out.append(
            es.ServedForecast(
                made_at_ts=row.bar_ts,
                target_ts=target,
                model_version=row.model_version,
                predicted_volatility=row.predicted_volatility,
                realized_volatility=value,
                qlike=_qlike_one(value, row.predicted_volatility) if value is not None else None,
                interval=intervals[0] if intervals else None,  # what `interval_of` reads
                intervals=intervals,
                served_at=datetime.fromtimestamp(row.first_served_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                times_served=row.times_served,
            )
        )
    return out


def track_record(
    forecasts: Sequence[es.ServedForecast], features: pl.DataFrame, window: int = ROLLING_WINDOW
) -> es.TrackRecord:
    """The champion's live QLIKE over its matched forecasts against each persistence baseline on the
    same forecasts (a forecast counts only where every baseline is defined too, so all are scored on
    the same sample), the best baseline, and the rolling mean over `window` forecasts of both."""
    at_bar = {row[0]: row[1:] for row in features.select("ts", *LIVE_BASELINES.values()).iter_rows()}
    pending = sum(1 for f in forecasts if f.realized_volatility is None)
    samples: list[tuple[int, float, dict[str, float]]] = []
    for f in forecasts:
        if f.qlike is None or f.realized_volatility is None:
            continue
        values = at_bar.get(f.made_at_ts)
        if values is None:
            continue
        losses = {}
        for name, value in zip(LIVE_BASELINES, values, strict=True):
            loss = _qlike_one(f.realized_volatility, value) if value is not None else None
            if loss is None:
                break
            losses[name] = loss
        else:
            samples.append((f.target_ts, f.qlike, losses))
    if not samples:
        note = (
            "no served forecast has its 24 bars closed yet"
            if forecasts
            else "no forecasts have been served for this symbol in this window"
        )
        return es.TrackRecord(
            matched=0,
            pending=pending,
            champion_qlike=None,
            baseline_qlike={},
            best_baseline=None,
            window=window,
            rolling=[],
            note=note,
        )
    champion = np.array([s[1] for s in samples])
    baselines = {name: np.array([s[2][name] for s in samples]) for name in LIVE_BASELINES}
    means = {name: float(v.mean()) for name, v in baselines.items()}
    best = min(means, key=means.__getitem__)
    rolling = []
    for i in range(len(samples)):
        lo = max(0, i + 1 - window)
        rolling.append(
            es.RollingQlike(
                target_ts=samples[i][0],
                champion=float(champion[lo : i + 1].mean()),
                baseline=float(baselines[best][lo : i + 1].mean()),
            )
        )
    note = None
    if len(samples) < window:
        note = f"only {len(samples)} matched forecasts: too few for a stable comparison"
    return es.TrackRecord(
        matched=len(samples),
        pending=pending,
        champion_qlike=float(champion.mean()),
        baseline_qlike=means,
        best_baseline=best,
        window=window,
        rolling=rolling,
        note=note,
        interval_coverage=interval_coverage(forecasts),
    )


def interval_coverage(forecasts: Sequence[es.ServedForecast]) -> list[es.IntervalCoverage]:
    """Per interval level, the matched forecasts that carried one and how many saw the realized
    volatility land inside it (`lib.track_record.count_inside`, the stored record's rule, over every
    level served, as the stored record counts them)."""
    counted = count_inside(
        (i.level, i.lower, i.upper, f.realized_volatility)
        for f in forecasts
        if f.realized_volatility is not None
        for i in f.intervals
    )
    return [es.IntervalCoverage(level=level, n=n, inside=inside) for level, (n, inside) in counted.items()]


def overview_row(
    symbol: str,
    timeframe: str,
    features: pl.DataFrame,
    source: str,
    origin: str,
    now_ms: int,
    max_stale_bars: int,
    risk_score: float | None,
    forecast: es.OverviewForecast | None,
    forecast_note: str | None,
) -> es.OverviewRow:
    """One overview row from a symbol's feature frame (newest bar last)."""
    bar_ms = timeframe_ms(timeframe)
    last_ts = int(features["ts"][-1])
    age_s = (now_ms - (last_ts + bar_ms)) / 1000
    vol24 = finite(features["vol24"][-1])
    spark = features.tail(OVERVIEW_SPARK_BARS)["close"].to_list()
    return es.OverviewRow(
        symbol=symbol,
        timeframe=timeframe,
        source=source,
        origin=origin,
        last_bar_ts=last_ts,
        last_bar_time=iso_ms(last_ts),
        age_s=round(age_s, 1),
        stale=age_s > max_stale_bars * bar_ms / 1000,
        price=finite(features["close"][-1]),
        change_24h=change_over_day(features, timeframe),
        realized_vol_24=finite(features["realized_vol_24"][-1]),
        vol_regime=classify_vol_regime(vol24, timeframe) if vol24 is not None else None,
        risk_score=risk_score,
        forecast=forecast,
        forecast_note=forecast_note,
        sparkline=[float(c) for c in spark],
        sparkline_bars=len(spark),
    )


def evaluation_from_artifact(document: Mapping[str, Any], run_id: str | None, metrics: dict[str, float]):
    """The holdout evaluation table as `lib.model.tracking` logs it ({primary, best_baseline, rows})."""
    fields = set(es.EvaluationRow.__struct_fields__)
    rows = []
    for record in document.get("rows") or []:
        if isinstance(record, Mapping) and record.get("name"):
            clean = {k: v for k, v in record.items() if k in fields and v is not None}
            with contextlib.suppress(msgspec.ValidationError):
                rows.append(msgspec.convert(clean, es.EvaluationRow, strict=False))
    return es.Evaluation(
        run_id=run_id,
        source=EVALUATION_ARTIFACT,
        primary=document.get("primary"),
        best_baseline=document.get("best_baseline"),
        rows=rows,
        metrics=metrics,
        note=None if rows else f"{EVALUATION_ARTIFACT} has no rows",
    )


def drift_status(key: str, document: Mapping[str, Any]) -> es.DriftStatus:
    """The `feature_drift` asset's artifact: per-feature KS / PSI and the label apart."""

    def feature(item: Mapping[str, Any], is_label: bool) -> es.DriftFeature:
        def number(name: str) -> float | None:
            with contextlib.suppress(TypeError, ValueError):
                return finite(item.get(name))
            return None

        drifted = item.get("drifted")
        return es.DriftFeature(
            feature=str(item.get("feature")),
            ks_statistic=number("ks_statistic"),
            p_value_adjusted=number("p_value_adjusted"),
            psi=number("psi"),
            drifted=bool(drifted) if drifted is not None else None,
            is_label=is_label,
        )

    items = [feature(f, False) for f in document.get("features") or [] if isinstance(f, Mapping)]
    label = document.get("label")
    if isinstance(label, Mapping):
        items.append(feature(label, True))

    def flag(name: str) -> bool | None:
        value = document.get(name)
        return bool(value) if value is not None else None

    version = document.get("champion_version")
    return es.DriftStatus(
        key=key,
        current_window=document.get("current_window"),
        champion_version=str(version) if version is not None else None,
        feature_drift_detected=flag("feature_drift_detected"),
        label_drift_detected=flag("label_drift_detected"),
        features=items,
    )


def _float_tag(tags: Mapping[str, str], key: str) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        return finite(float(tags[key])) if key in tags else None
    return None


def promotion_entry(version: str, created_ms: int | None, tags: Mapping[str, str]) -> es.PromotionEntry:
    """A version's promotion decision as `lib.model.promotion` writes it onto the version's tags."""
    return es.PromotionEntry(
        version=version,
        family=tags.get(FAMILY_TAG),
        created=iso_ms(created_ms) if created_ms else None,
        decision=tags.get("promotion.decision"),
        reason=tags.get("promotion.reason"),
        decided_at=tags.get("promotion.decided_at"),
        challenger_qlike=_float_tag(tags, "promotion.challenger_qlike"),
        champion_qlike=_float_tag(tags, "promotion.champion_qlike"),
        relative_improvement=_float_tag(tags, "promotion.relative_improvement"),
        champion_version=tags.get("promotion.champion_version"),
    )


def redact_uri(uri: str) -> str:
    """A URI without user:password (a tracking URI may carry them; responses never do)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def run_url(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI's page of a run, when the tracking URI is a server the browser can open."""
    if not run_id or not experiment_id or not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{redact_uri(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def check_day(day: str) -> str:
    """An ISO day (the daily report's name), or InvalidInputError naming `day`."""
    try:
        if not _DAY.match(day):
            raise ValueError
        date.fromisoformat(day)
    except ValueError:
        raise InvalidInputError(
            [{"key": "day", "message": f"must be a day YYYY-MM-DD, got {day!r}"}]
        ) from None
    return day


# --- readers: history DB ---------------------------------------------------------------------------


def _served_prediction(intervals: str | None, payload: str | None) -> Mapping[str, Any]:
    """What `intervals_of` reads of a stored forecast: its intervals as `history.stored_intervals` reads
    them (the column, else an old row's stored answer), the same rule the track record applies."""
    with contextlib.suppress(ValueError):  # a column not written by `intervals_column`
        stored = stored_intervals(intervals, payload)
        return {"intervals": json.loads(stored)} if stored else {}
    return {}


def served_forecasts(
    history: History, symbol: str, timeframe: str, start_ts: int, end_ts: int
) -> list[ServedRow]:
    """One row per (bar, model version) served for `symbol` with bar_ts in [start_ts, end_ts]: the
    first served payload and how often it was served. Grouped in SQL: a client polling every second
    leaves thousands of identical rows per bar, and only one per bar is drawn."""
    history.flush()
    t = ml_predictions
    grouped = (
        select(
            t.c.bar_ts,
            t.c.model_version,
            func.min(t.c.id).label("first_id"),
            func.count().label("times"),
        )
        .where(
            t.c.symbol == symbol,
            t.c.timeframe == timeframe,
            t.c.bar_ts >= start_ts,
            t.c.bar_ts <= end_ts,
        )
        .group_by(t.c.bar_ts, t.c.model_version)
    )
    with history.engine.connect() as conn:
        groups = {r.first_id: r for r in conn.execute(grouped).all()}
        if not groups:
            return []
        firsts = conn.execute(
            select(
                t.c.id, t.c.created_at, t.c.predicted_volatility, t.c.intervals, payload_unless_column(t)
            ).where(t.c.id.in_(list(groups)))
        ).all()
    rows = []
    for r in firsts:
        group = groups[r.id]
        rows.append(
            ServedRow(
                bar_ts=int(group.bar_ts),
                model_version=str(group.model_version),
                predicted_volatility=float(r.predicted_volatility),
                first_served_at=float(r.created_at),
                times_served=int(group.times),
                prediction=_served_prediction(r.intervals, r.payload),
            )
        )
    return rows


# --- service functions (blocking: the controller runs them in a worker thread) ---------------------


def _overview_forecast(
    svc: Services, snap: Any, timeframe: str
) -> tuple[es.OverviewForecast | None, str | None]:
    model = svc.models.current
    if model is None:
        return None, f"no model loaded: {redact(svc.models.last_error or 'unknown reason')}"
    if model.timeframe != timeframe:
        return None, f"model version {model.version} forecasts {model.timeframe} bars, not {timeframe}"
    try:
        described = snap.forecast(model, svc.features)
    except NotEnoughHistoryError as exc:
        return None, redact(exc)
    served = msgspec.to_builtins(described)
    return (
        es.OverviewForecast(
            model_version=model.version,
            predicted_volatility=described.predicted_volatility,
            volatility_regime=described.volatility_regime,
            risk_level=described.risk_level,
            confidence=described.confidence,
            interval=interval_of(served),
        ),
        None,
    )


def overview(svc: Services) -> es.Overview:
    """A row per configured symbol at the served timeframe; a symbol whose bars cannot be had gets a
    row with `error` (the others still answer). Uses the feature snapshots the signal endpoints cache."""
    timeframe = svc.settings.platform.timeframe
    now_ms = svc.market.now_ms()
    rows = []
    for symbol in svc.symbols:
        try:
            snap = svc.features.snapshot(symbol, timeframe)
            try:
                risk = snap.heuristic(60).risk_score
            except NotEnoughHistoryError:
                risk = None
            fc, note = _overview_forecast(svc, snap, timeframe)
            rows.append(
                overview_row(
                    symbol,
                    timeframe,
                    snap.features,
                    snap.bars.source,
                    snap.bars.origin,
                    now_ms,
                    svc.market.max_stale_bars,
                    risk,
                    fc,
                    note,
                )
            )
        except Exception as exc:  # one symbol's outage must not blank the others; the row says why
            log.warning("overview: %s failed: %s", symbol, exc)
            error = f"{type(exc).__name__}: {redact(exc)}"
            rows.append(es.OverviewRow(symbol=symbol, timeframe=timeframe, error=error))
    model = svc.models.current
    return es.Overview(
        generated_at=now_iso(),
        timeframe=timeframe,
        model_version=model.version if model else None,
        model_note=None if model else redact(svc.models.last_error or "no model loaded"),
        poll_s=OVERVIEW_POLL_S,
        rows=rows,
    )


def symbol_series(
    svc: Services, symbol: str, timeframe: str, n_bars: int = SERIES_DEFAULT_BARS
) -> es.SymbolSeries:
    """The last `n_bars` bars with realized volatility, regime spans, the forecasts served at those bars
    against what happened after, and the live QLIKE track record. The bars fetched are the served
    window (FEATURE_BARS, the same cached bars the forecasts were made from) or, for a longer view,
    a week more than shown, so every shown bar has the weekly baseline's look-back."""
    if not SERIES_MIN_BARS <= n_bars <= SERIES_MAX_BARS:
        raise InvalidInputError(
            [
                {
                    "key": "bars",
                    "message": f"must be between {SERIES_MIN_BARS} and {SERIES_MAX_BARS}, got {n_bars}",
                }
            ]
        )
    symbol, _, timeframe = svc.validate_market(symbol, svc.settings.platform.exchange, timeframe)
    bars = svc.market.bars(symbol, timeframe, max(FEATURE_BARS, n_bars + RV_LONG))
    if bars.frame.height == 0:
        raise NotEnoughHistoryError(f"{symbol} {timeframe}: no closed bars are available")
    features = compute_features(bars.frame, timeframe)
    shown = features.tail(n_bars)
    model = svc.models.current
    horizon = model.horizon_bars if model else HORIZON_BARS
    first_ts = int(shown["ts"][0])
    served = served_forecasts(svc.history, symbol, timeframe, first_ts, int(shown["ts"][-1]))
    forecasts = match_forecasts(served, features, timeframe, horizon)
    calm, turbulent = forecast_rules.forecast_thresholds(timeframe, horizon)
    note = None
    if not served:
        note = "no ML forecasts were served for this symbol over these bars (POST /v1/crypto/ml-signal)"
    return es.SymbolSeries(
        symbol=symbol,
        timeframe=timeframe,
        source=bars.source,
        origin=bars.origin,
        horizon_bars=horizon,
        calm_below=calm,
        turbulent_from=turbulent,
        bars=[
            es.Bar(ts=ts, open=o, high=h, low=lo, close=c, volume=v, realized_vol_24=finite(rv))
            for ts, o, h, lo, c, v, rv in shown.select(
                "ts", "open", "high", "low", "close", "volume", "realized_vol_24"
            ).iter_rows()
        ],
        regimes=regime_spans(shown, timeframe),
        forecasts=forecasts,
        track_record=track_record(forecasts, features),
        note=note,
    )


# --- readers: MLflow registry ----------------------------------------------------------------------


def _version_card(client: Any, tracking_uri: str, mv: Any) -> es.VersionCard:
    tags = dict(mv.tags or {})
    run_tags: dict[str, str] = {}
    experiment_id = None
    if mv.run_id:
        with contextlib.suppress(Exception):  # a deleted run leaves the version; the card says less
            run = client.get_run(mv.run_id)
            run_tags, experiment_id = dict(run.data.tags), run.info.experiment_id

    def tag(key: str) -> str | None:
        return tags.get(key) or run_tags.get(key)

    return es.VersionCard(
        version=str(mv.version),
        aliases=sorted(getattr(mv, "aliases", None) or []),
        family=tags.get(FAMILY_TAG),
        created=iso_ms(mv.creation_timestamp) if mv.creation_timestamp else None,
        run_id=mv.run_id,
        training_run_id=tags.get(TRAINING_RUN_TAG) or mv.run_id,
        data_window=tag("data_window"),
        symbols=tag("symbols"),
        timeframe=tag(TIMEFRAME_TAG),
        run_url=run_url(tracking_uri, experiment_id, mv.run_id),
    )


def _evaluation(client: Any, run_id: str | None) -> es.Evaluation | None:
    if not run_id:
        return None
    try:
        metrics = {k: v for k, v in client.get_run(run_id).data.metrics.items() if finite(v) is not None}
    except Exception as exc:
        return es.Evaluation(
            run_id=run_id, source="run metrics", primary=None, best_baseline=None, rows=[], metrics={},
            note=f"the training run could not be read: {type(exc).__name__}",
        )  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, EVALUATION_ARTIFACT, tmp)
            document = json.loads(Path(path).read_text())
    except Exception:  # runs logged before the evaluation artifact existed (or by hand) have none
        return es.Evaluation(
            run_id=run_id, source="run metrics", primary=None, best_baseline=None, rows=[], metrics=metrics,
            note=f"the training run has no {EVALUATION_ARTIFACT}: only its logged metrics are shown",
        )  # fmt: skip
    return evaluation_from_artifact(document, run_id, metrics)


def _alias_version(client: Any, name: str, alias: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def latest_drift(store: ObjectStore | None) -> tuple[es.DriftStatus | None, str | None]:
    """The newest `ml/drift/<day>.json`, or None and why."""
    if store is None:
        return None, "this server has no data location to read drift artifacts from"
    key = newest_json_key(store, DRIFT_PREFIX)
    if key is None:
        return None, f"no feature_drift artifact under {DRIFT_PREFIX}/ yet (materialize feature_drift)"
    try:
        return drift_status(key, json.loads(store.read_bytes(key))), None
    except (ObjectNotFoundError, ValueError, AttributeError) as exc:
        return None, f"{key} could not be read: {redact(exc)}"


def unreachable_reason(tracking_uri: str, timeout_s: float = 2.0) -> str | None:
    """Why an http(s) tracking server cannot be reached (a refused or timed-out TCP connect), else None.
    MLflow's client retries a refused connection with back-off for minutes; a view asks first."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {redact(exc)}"


def registry_unavailable_view(svc: Services, reason: str) -> es.ModelView:
    """The model view without anything from the registry, and why."""
    uri = svc.settings.platform.mlflow_tracking_uri
    served = svc.models.current
    drift, drift_note = latest_drift(svc.market.store)
    return es.ModelView(
        model_name=svc.settings.model_name,
        tracking_uri=redact_uri(uri),
        served_version=served.version if served else None,
        champion=None,
        challenger=None,
        evaluation=None,
        promotions=[],
        drift=drift,
        drift_note=drift_note,
        registry_error=f"the registry at {redact_uri(uri)} could not be read: {reason}",
        generated_at=now_iso(),
    )


def model_view(svc: Services) -> es.ModelView:
    """Champion and challenger, the training run's evaluation table, the promotion history with each
    decision's reason (version tags), drift status; whatever the registry cannot give is explained."""
    from mlflow import MlflowClient

    settings = svc.settings
    uri, name = settings.platform.mlflow_tracking_uri, settings.model_name
    unreachable = unreachable_reason(uri)
    if unreachable is not None:
        return registry_unavailable_view(svc, unreachable)
    served = svc.models.current
    drift, drift_note = latest_drift(svc.market.store)
    champion = challenger = evaluation = None
    promotions: list[es.PromotionEntry] = []
    error = None
    try:
        client = MlflowClient(tracking_uri=uri)
        champion_mv = _alias_version(client, name, settings.model_alias)
        challenger_mv = _alias_version(client, name, "challenger")
        champion = _version_card(client, uri, champion_mv) if champion_mv else None
        challenger = _version_card(client, uri, challenger_mv) if challenger_mv else None
        evaluation = _evaluation(client, champion.training_run_id) if champion else None
        versions = client.search_model_versions(f"name='{name}'", max_results=MAX_PROMOTIONS)
        entries = [
            promotion_entry(str(v.version), v.creation_timestamp, dict(v.tags or {})) for v in versions
        ]
        promotions = sorted(entries, key=lambda e: int(e.version) if e.version.isdigit() else 0, reverse=True)
    except Exception as exc:  # the registry being down is a state to show, not a 500
        reason = f"{type(exc).__name__}: {redact(exc)[:300]}"
        error = f"the registry at {redact_uri(uri)} could not be read: {reason}"
        log.warning("model view: %s", error)
    return es.ModelView(
        model_name=name,
        tracking_uri=redact_uri(uri),
        served_version=served.version if served else None,
        champion=champion,
        challenger=challenger,
        evaluation=evaluation,
        promotions=promotions,
        drift=drift,
        drift_note=drift_note,
        registry_error=error,
        generated_at=now_iso(),
    )


# --- readers: reports in the data location ---------------------------------------------------------


def _latest_quality(store: ObjectStore, keys: Iterable[str], symbol: str) -> es.QualityEntry:
    suffix = f"/{exchange_symbol_id(symbol)}.json"
    candidates = sorted((k for k in keys if k.endswith(suffix)), reverse=True)
    for key in candidates:  # newest day first (keys are quality-reports/<day>/<SYMBOL>.json)
        try:
            report = json.loads(store.read_bytes(key))
        except (ObjectNotFoundError, ValueError):
            continue
        markdown = None
        with contextlib.suppress(ObjectNotFoundError, UnicodeDecodeError):
            markdown = store.read_bytes(key.removesuffix(".json") + ".md").decode()

        def count(name: str, report: Mapping[str, Any] = report) -> int | None:
            value = report.get(name)
            return int(value) if isinstance(value, int | float) else None

        return es.QualityEntry(
            symbol=symbol,
            day=key.split("/")[1] if key.count("/") >= 2 else report.get("day"),
            status=report.get("status"),
            failed_checks=[str(c) for c in report.get("failed_checks") or []],
            warnings=[str(w) for w in report.get("warnings") or []],
            rows=count("rows"),
            expected_rows=count("expected_rows"),
            missing_bars=count("missing_bars"),
            duplicate_rows=count("duplicate_rows"),
            markdown=markdown,
        )
    return es.QualityEntry(
        symbol=symbol, day=None, status=None, failed_checks=[], warnings=[],
        note="no quality report stored yet (materialize quality_report)",
    )  # fmt: skip


def reports_view(svc: Services) -> es.ReportsView:
    """The daily reports (newest first) and the latest quality report per configured symbol."""
    store = svc.market.store
    if store is None:
        return es.ReportsView(
            daily=[], quality=[], note="this server has no data location to read reports from"
        )
    daily_keys = sorted((k for k in store.list(DAILY_PREFIX) if k.endswith(".md")), reverse=True)
    daily = [
        es.DailyReportEntry(day=k.removeprefix(DAILY_PREFIX).removesuffix(".md"), key=k)
        for k in daily_keys[:MAX_DAILY_REPORTS]
    ]
    quality_keys = store.list(f"{QUALITY_REPORTS_PREFIX}/")
    quality = [_latest_quality(store, quality_keys, s) for s in svc.symbols]
    note = None if daily else f"no daily report under {DAILY_PREFIX} yet (materialize daily_report)"
    return es.ReportsView(daily=daily, quality=quality, note=note)


class ReportNotFoundError(LookupError):
    """No daily report for that day (HTTP 404)."""


def daily_report(svc: Services, day: str) -> es.DailyReportText:
    check_day(day)
    store = svc.market.store
    key = f"{DAILY_PREFIX}{day}.md"
    if store is None:
        raise ReportNotFoundError("this server has no data location to read reports from")
    try:
        return es.DailyReportText(day=day, key=key, markdown=store.read_bytes(key).decode())
    except ObjectNotFoundError:
        raise ReportNotFoundError(f"no daily report for {day}") from None


# --- caching of the slow views ---------------------------------------------------------------------


class TimedCache:
    """Answers of slow reads (registry, store listings) kept for `ttl_s`, one computation at a time per
    key, so a page polled by several tabs costs one MLflow round per TTL."""

    def __init__(self, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: str, compute: Callable[[], T]) -> T:
        entry = self._entries.get(key)
        if entry is not None and self.clock() - entry[0] < self.ttl_s:
            return entry[1]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            entry = self._entries.get(key)
            if entry is not None and self.clock() - entry[0] < self.ttl_s:
                return entry[1]
            value = compute()
            self._entries[key] = (self.clock(), value)
            return value

    def get_within(self, key: str, compute: Callable[[], T], timeout_s: float, late: Callable[[], T]) -> T:
        """`get`, but waiting at most `timeout_s`: past it, `late()` answers now while the computation
        goes on in its thread and fills the cache for the next request (a slow registry then costs
        one page its contents, not a hung request)."""
        entry = self._entries.get(key)
        if entry is not None and self.clock() - entry[0] < self.ttl_s:
            return entry[1]
        done = threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = self.get(key, compute)
            except BaseException as exc:  # handed to the waiting request, which re-raises it
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name=f"evidence-{key}", daemon=True).start()
        if not done.wait(timeout_s):
            return late()
        if "error" in box:
            raise box["error"]
        return box["value"]
