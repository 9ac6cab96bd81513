"""Every API operation once, for every interface: REST controllers, GraphQL resolvers, the gRPC servicer.

Each function takes the process's `Services` and validated-or-validatable inputs and returns the
msgspec response objects of `serving.api.schemas`. Failures are domain errors, never HTTP ones, so
each interface maps them to its own vocabulary:

| error                                   | REST | GraphQL `extensions.code` | gRPC status        |
|-----------------------------------------|------|---------------------------|--------------------|
| InvalidInputError (names the fields)    | 400  | BAD_USER_INPUT            | INVALID_ARGUMENT   |
| UnknownSymbolError (exchange lacks it)  | 400  | BAD_USER_INPUT            | NOT_FOUND          |
| ModelUnavailableError                   | 503  | UNAVAILABLE               | UNAVAILABLE        |
| NotEnoughHistoryError                   | 503  | UNAVAILABLE               | UNAVAILABLE        |
| MarketUnavailableError, ExchangeUnavailableError | 502 | BAD_GATEWAY         | UNAVAILABLE        |

Blocking functions (store reads, exchange calls, feature computation, DB reads) are plain `def`: the
caller runs them in a worker thread. `signal` and `ml_signal` are `async`: with the bar's features
cached they answer in microseconds inline, and only a cache miss goes to a worker thread.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from crypto_platform.lib.model.windows import FEATURE_BARS
from serving.api import schemas
from serving.api.encoded import NOW_PLACEHOLDER, EncodedAnswer
from serving.api.scoring import (
    FeatureCache,
    FeatureSnapshot,
    NotEnoughHistoryError,
    check_model_timeframe,
    features_rows,
    iso_ms,
    iso_now,
    ml_prediction,
    ml_prediction_async,
    occlusion_attributions,
    signal_response,
)
from serving.api.services import InvalidInputError, Services
from serving.core.history import UnknownCursorError, intervals_column
from serving.core.model_store import LoadedModel, ModelUnavailableError
from serving.core.redaction import redact, redact_optional

S = TypeVar("S", bound=msgspec.Struct)

MAX_HORIZON_MIN = 10_080
_MISSING = re.compile(r"missing required field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.([A-Za-z_][A-Za-z0-9_]*)")


def plain(struct: msgspec.Struct) -> dict[str, Any]:
    return msgspec.to_builtins(struct)


def parse_request(kind: type[S], data: dict[str, Any]) -> S:
    """`data` (fields absent or None take the request's defaults) as a `kind` request struct, with the
    same bounds REST enforces (schemas' Meta constraints), or InvalidInputError naming the field."""
    try:
        return msgspec.convert({k: v for k, v in data.items() if v is not None}, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _MISSING.search(text) or _AT_PATH.search(text)
        key = found.group(1) if found else "input"
        message = text.split(" - at `", 1)[0]
        raise InvalidInputError([{"key": key, "message": message}]) from exc


def check_range(name: str, value: int, low: int, high: int) -> int:
    """REST declares these bounds on its query parameters; the other interfaces check them here."""
    if not low <= value <= high:
        raise InvalidInputError([{"key": name, "message": f"must be between {low} and {high}, got {value}"}])
    return value


# --- system ---------------------------------------------------------------------------------------


def health(svc: Services) -> schemas.Health:
    """Liveness: the process answers. Depends on nothing else (whether a model is loaded is read from
    memory, for the seed's `ml_available`; readiness is /ready)."""
    now = iso_now()
    return schemas.Health(
        status="ok",
        time=now,
        uptime_s=round(time.time() - svc.started_at, 3),
        ml_available=svc.models.current is not None,
        timestamp=now,
    )


# What a caller without a valid key learns about readiness: probes need ready / not ready, and the
# reason (an MLflow error, a URL) is for operators, who hold a key.
GENERIC_NOT_READY = "no model is loaded yet (the reason is shown to callers with an API key)"


def readiness(svc: Services, detailed: bool = False) -> schemas.Readiness:
    """Ready once a champion model is loaded (REST answers 503 otherwise). `detailed` (the caller
    presented a valid key): the served version, or why nothing is served (redacted); otherwise only
    ready / not ready and a generic reason."""
    model = svc.models.current
    if model is None:
        reason = redact(svc.models.last_error or "unknown") if detailed else GENERIC_NOT_READY
        return schemas.Readiness(status="not_ready", model_loaded=False, reason=reason)
    return schemas.Readiness(
        status="ready", model_loaded=True, model_version=model.version if detailed else None
    )


def health_report(svc: Services, detailed: bool = False) -> dict[str, Any]:
    """Liveness and readiness in one answer, as GraphQL's `health` and gRPC's `HealthCheck` give it
    (REST keeps them apart as /health and /ready): status, timestamp, uptime_s, model_loaded,
    ml_available, model_version, reason (`detailed` as for `readiness`)."""
    live, ready = health(svc), readiness(svc, detailed)
    return {
        "status": live.status,
        "timestamp": live.timestamp,
        "uptime_s": live.uptime_s,
        "model_loaded": ready.model_loaded,
        "ml_available": ready.model_loaded,
        "model_version": ready.model_version,
        "reason": ready.reason,
    }


def metrics_summary(svc: Services) -> schemas.MetricsSummary:
    c = svc.counters
    return schemas.MetricsSummary(
        start_time=c.iso("start_time") or "",
        requests_total=c.requests_total,
        signals_total=c.signals_total,
        ml_predictions_total=c.ml_predictions_total,
        last_signal_at=c.iso("last_signal_at"),
        last_ml_prediction_at=c.iso("last_ml_prediction_at"),
        ml_available=svc.models.current is not None,
    )


# --- market ---------------------------------------------------------------------------------------


def ohlcv(
    svc: Services, symbol: str, exchange: str = "binance", timeframe: str = "1h", limit: int = 200
) -> schemas.OhlcvResponse:
    """The last `limit` closed bars (the candle still open is never included). Blocking."""
    check_range("limit", limit, 1, schemas.MAX_LIMIT)
    symbol, exchange, timeframe = svc.validate_market(symbol, exchange, timeframe)
    bars = svc.market.bars(symbol, timeframe, limit)
    data = [
        schemas.OhlcvRow(ts=ts, open=o, high=h, low=lo, close=c, volume=v, time=iso_ms(ts))
        for ts, o, h, lo, c, v in bars.frame.iter_rows()
    ]
    return schemas.OhlcvResponse(
        symbol=symbol,
        exchange=exchange,
        timeframe=timeframe,
        limit=limit,
        rows=len(data),
        source=bars.source,
        origin=bars.origin,
        data=data,
        warnings=list(bars.warnings) or None,
    )


def features(
    svc: Services, symbol: str, exchange: str = "binance", timeframe: str = "1h", n: int = 48
) -> schemas.FeaturesResponse:
    """Features of the last `n` bars as the API computes them; null where a window is incomplete."""
    check_range("n", n, 1, FEATURE_BARS)
    symbol, exchange, timeframe = svc.validate_market(symbol, exchange, timeframe)
    snap = svc.features.snapshot(symbol, timeframe)
    columns, rows = features_rows(snap, n)
    return schemas.FeaturesResponse(
        symbol=symbol,
        timeframe=timeframe,
        source=snap.bars.source,
        origin=snap.bars.origin,
        columns=columns,
        rows=rows,
    )


# --- heuristic signals ----------------------------------------------------------------------------


def record_signal(
    svc: Services, snap: FeatureSnapshot, exchange: str, horizon_min: int, explain: bool
) -> schemas.SignalResponse:
    """The signal at the snapshot's newest bar, written to the history and counted."""
    symbol, timeframe = snap.bars.symbol, snap.bars.timeframe
    response = signal_response(snap, exchange, horizon_min, explain)
    svc.history.record_signal(
        {
            "symbol": symbol,
            "exchange": exchange,
            "timeframe": timeframe,
            "horizon_min": horizon_min,
            "risk_score": response.risk_score,
            "nowcast_ret": response.nowcast_ret,
            "vol_regime": response.vol_regime,
            "bar_ts": snap.last_ts,
            "source": response.source,
        },
        {**plain(response), "recorded_at": iso_now()},
    )
    svc.counters.signal(symbol)
    return response


async def signal(svc: Services, request: schemas.SignalRequest) -> schemas.SignalResponse:
    """Heuristic risk signal at the newest closed bar. `limit` is accepted for compatibility: the
    signal depends only on the last 48 bars, so every limit ≥ 48 gives the same answer."""
    symbol, exchange, timeframe = svc.validate_market(request.symbol, request.exchange, request.timeframe)
    snap = await svc.features.snapshot_async(symbol, timeframe)
    return record_signal(svc, snap, exchange, request.horizon_min, request.explain)


def signal_blocking(
    svc: Services, symbol: str, exchange: str, timeframe: str, horizon_min: int, explain: bool
) -> schemas.SignalResponse:
    """`signal` for callers already in a worker thread (batch): validate, compute, record."""
    symbol, exchange, timeframe = svc.validate_market(symbol, exchange, timeframe)
    return record_signal(svc, svc.features.snapshot(symbol, timeframe), exchange, horizon_min, explain)


def signal_batch(svc: Services, request: schemas.SignalBatchRequest) -> schemas.SignalBatchResponse:
    """Signals for several symbols; per-symbol bad input (400) and missing history (503) are listed in
    `errors`, not fatal. Blocking."""
    if len(request.symbols) > svc.settings.max_batch:
        limit = svc.settings.max_batch
        raise InvalidInputError([{"key": "symbols", "message": f"at most {limit} per batch"}])
    results, errors = [], []
    for symbol in request.symbols:
        try:
            results.append(
                signal_blocking(
                    svc, symbol, request.exchange, request.timeframe, request.horizon_min, request.explain
                )
            )
        except InvalidInputError as exc:
            errors.append(schemas.BatchError(symbol=symbol, status_code=400, detail=redact(exc)))
        except NotEnoughHistoryError as exc:
            errors.append(schemas.BatchError(symbol=symbol, status_code=503, detail=redact(exc)))
    return schemas.SignalBatchResponse(count=len(results), results=results, errors=errors)


@dataclass(frozen=True)
class TailPage:
    """A page of served history rows (each the payload as served, plus `id` and `created_at`)."""

    newest_first: list[dict[str, Any]]
    next_before: int | None  # the `before` cursor of the next, older page; None: nothing older

    @property
    def newest_last(self) -> list[dict[str, Any]]:
        """The seed's order (REST's tails)."""
        return self.newest_first[::-1]


def _tail_page(
    read: Callable[[int, int | None], list[dict[str, Any]]], n: int, before: int | None
) -> TailPage:
    check_range("n", n, 1, schemas.MAX_TAIL)
    if before is not None and not 1 <= before <= schemas.MAX_ROW_ID:
        # Beyond a BIGINT the database driver overflows (a 500 schemathesis found): refused here.
        message = f"must be a row id between 1 and {schemas.MAX_ROW_ID}, got {before}"
        raise InvalidInputError([{"key": "before", "message": message}])
    try:
        rows = read(n + 1, before)  # one more than asked: is there an older page?
    except UnknownCursorError as exc:
        raise InvalidInputError([{"key": "before", "message": str(exc)}]) from exc
    page = rows[:n]
    return TailPage(page, page[-1]["id"] if len(rows) > n else None)


def signals_tail(svc: Services, n: int = 50, before: int | None = None) -> TailPage:
    """The last `n` signals served (those served before row `before`, when given). Blocking (waits
    for queued history writes)."""
    return _tail_page(svc.history.tail_signals, n, before)


def compare(
    svc: Services, symbol: str, exchange: str = "binance", timeframe: str = "1h", horizon_min: int = 60
) -> schemas.CompareResponse:
    """The heuristic signal and the ML forecast for the same bar (ML null with the reason when it is
    unavailable). Not recorded: a view of the two, not a served signal. Blocking."""
    check_range("horizon_min", horizon_min, 1, MAX_HORIZON_MIN)
    symbol, exchange, timeframe = svc.validate_market(symbol, exchange, timeframe)
    snap = svc.features.snapshot(symbol, timeframe)
    heuristic = signal_response(snap, exchange, horizon_min, explain=False)
    model = svc.models.current
    ml = ml_error = None
    if model is None:
        ml_error = redact(ModelUnavailableError(svc.models.last_error or "no model loaded"))
    else:
        try:
            check_model_timeframe(model, timeframe)
            ml, _ = ml_prediction(model, snap, svc.features)
        except NotEnoughHistoryError as exc:
            ml_error = redact(exc)
    return schemas.CompareResponse(
        symbol=symbol,
        timestamp=heuristic.timestamp,
        source=heuristic.source,
        heuristic=heuristic,
        ml_available=ml is not None,
        ml=ml,
        model_version=model.version if model and ml else None,
        ml_error=ml_error,
        regimes_agree=(ml.volatility_regime == heuristic.vol_regime) if ml else None,
    )


# --- ML -------------------------------------------------------------------------------------------


def ml_signal_response(
    snap: FeatureSnapshot,
    model: LoadedModel,
    exchange: str,
    include_heuristic: bool,
    now: str,
    cache: FeatureCache | None = None,
) -> tuple[schemas.MLSignalResponse, float]:
    """The ml-signal answer at the snapshot's newest bar, every "now" field set to `now`, and the
    seconds the forecaster lookup took (~0 when this model already forecast this bar). A frame model
    needs `cache` (its other symbols' snapshots)."""
    started = time.perf_counter()
    prediction = snap.forecast(model, cache)
    seconds = time.perf_counter() - started
    heuristic = None
    if include_heuristic:
        # Part of this prediction's record, not a separately served signal.
        heuristic = signal_response(snap, exchange, 60, explain=False)
    response = schemas.MLSignalResponse(
        symbol=snap.bars.symbol,
        method="ml",
        timestamp=now,
        model_version=model.version,
        ml_prediction=msgspec.structs.replace(prediction, prediction_timestamp=now),
        exchange=exchange,
        timeframe=snap.bars.timeframe,
        source=snap.bars.source,
        heuristic_comparison=heuristic,
    )
    return response, seconds


def prediction_row(response: schemas.MLSignalResponse, bar_ts: int) -> dict[str, Any]:
    """The history columns of an ml-signal answer (the payload is the answer itself; its intervals are
    a column too, so the track record reads them without decoding the answer)."""
    prediction = response.ml_prediction
    return {
        "symbol": response.symbol,
        "exchange": response.exchange,
        "timeframe": response.timeframe,
        "model_version": response.model_version,
        "predicted_volatility": prediction.predicted_volatility,
        "current_volatility": prediction.current_volatility,
        "volatility_regime": prediction.volatility_regime,
        "bar_ts": bar_ts,
        "source": response.source,
        "intervals": intervals_column(prediction.intervals),
    }


async def _ml_inputs(
    svc: Services, request: schemas.MLSignalRequest
) -> tuple[FeatureSnapshot, LoadedModel, str]:
    symbol, exchange, timeframe = svc.validate_market(request.symbol, request.exchange, request.timeframe)
    model = svc.models.require()
    check_model_timeframe(model, timeframe)
    # The forecast is memoised per (model version, bar), and a fresh window forecast (~1-2 ms of numpy)
    # runs inline: a thread hop would cost about as much as it saves. A fresh frame forecast may fetch
    # the other symbols' bars: a worker thread computes it once, and the answer reads the memo.
    snap = await svc.features.snapshot_async(symbol, timeframe)
    if model.is_frame and snap.cached_forecast(model) is None:
        await ml_prediction_async(model, snap, svc.features)
    return snap, model, exchange


async def ml_signal(svc: Services, request: schemas.MLSignalRequest) -> schemas.MLSignalResponse:
    """Forecast of the next 24 bars' realized volatility at the newest closed bar, recorded and counted.
    ModelUnavailableError while no model is loaded. (GraphQL and gRPC; REST serves `ml_signal_body`.)"""
    snap, model, exchange = await _ml_inputs(svc, request)
    response, seconds = ml_signal_response(
        snap, model, exchange, request.include_heuristic, iso_now(), svc.features
    )
    svc.history.record_prediction(prediction_row(response, snap.last_ts), plain(response))
    svc.counters.prediction(response.symbol, model.version, seconds)
    return response


async def ml_signal_body(svc: Services, request: schemas.MLSignalRequest) -> bytes:
    """`ml_signal` as the JSON body REST sends: the same answer, encoded once per (symbol, bar, model,
    options) and only the time spliced in (serving.api.encoded); the history stores those bytes."""
    snap, model, exchange = await _ml_inputs(svc, request)
    include_heuristic = request.include_heuristic
    key = (FeatureCache.key(snap.bars), model.name, model.version, model.run_id, exchange, include_heuristic)

    def build() -> EncodedAnswer:
        response, _ = ml_signal_response(
            snap, model, exchange, include_heuristic, NOW_PLACEHOLDER, svc.features
        )
        return EncodedAnswer.of(response, prediction_row(response, snap.last_ts))

    started = time.perf_counter()
    answer = svc.answers.get(key, build)
    seconds = time.perf_counter() - started
    body = answer.render(iso_now())
    svc.history.record_prediction(answer.history_row, body)
    svc.counters.prediction(answer.symbol, answer.model_version, seconds)
    return body


def predictions_tail(svc: Services, n: int = 50, before: int | None = None) -> TailPage:
    """The last `n` ML predictions served (before row `before`, when given). Blocking."""
    return _tail_page(svc.history.tail_predictions, n, before)


def ml_explain(svc: Services, request: schemas.MLExplainRequest) -> schemas.MLExplainResponse:
    """Occlusion attribution of the current forecast to each input feature. Blocking."""
    symbol, _, timeframe = svc.validate_market(request.symbol, request.exchange, request.timeframe)
    model = svc.models.require()
    check_model_timeframe(model, timeframe)
    snap = svc.features.snapshot(symbol, timeframe)
    base, reference, rows = occlusion_attributions(model, snap, svc.features)
    return schemas.MLExplainResponse(
        symbol=symbol,
        model_version=model.version,
        method="occlusion",
        reference=reference,
        predicted_volatility=base,
        bar_timestamp=iso_ms(snap.last_ts),
        source=snap.bars.source,
        attributions=rows,
    )


def model_info(svc: Services) -> schemas.ModelInfo:
    """The served model, or why there is none."""
    model = svc.models.current
    if model is None:
        return schemas.ModelInfo(
            model_loaded=False,
            model_name=svc.models.model_name,
            alias=svc.models.alias,
            last_error=redact_optional(svc.models.last_error),
        )
    return schemas.ModelInfo(
        model_loaded=True,
        model_name=model.name,
        alias=model.alias,
        model_version=model.version,
        model_family=model.family,
        run_id=model.run_id,
        load_time=iso_ms(int(model.load_time * 1000)),
        metrics=model.metrics,
        sequence_length=model.sequence_length,
        feature_columns=list(model.feature_columns),
        timeframe=model.timeframe,
        last_error=redact_optional(svc.models.last_error),
        input_contract=model.contract,
        interval_levels=list(model.interval_levels),
        symbols=list(model.symbols),
    )


def reload_model(svc: Services) -> schemas.ReloadResponse:
    """Re-resolve the alias now and swap in its version; a failed load keeps the old model. Blocking.
    Callers check the admin role first."""
    outcome = svc.models.refresh()
    return schemas.ReloadResponse(
        success=outcome.success,
        old_version=outcome.old_version,
        new_version=outcome.new_version,
        message=redact(outcome.message),
    )
