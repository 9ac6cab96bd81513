"""Request and response bodies (msgspec Structs). Field names follow the seed API so its clients keep working.

Units: volatilities are of log returns over the stated horizon (`predicted_volatility`,
`current_volatility`: 24 bars); `nowcast_ret` is a simple-return fraction; times are UTC ISO-8601
strings, `ts` fields epoch milliseconds of a bar's open. `source` says where prices came from
("exchange" or "simulated": simulated data is never the market).

Uncertainty of a forecast (`MLPrediction`; the rules are `lib.forecast.describe_uncertainty`'s):
`intervals` are predictive intervals on the same next-24-bar realized volatility as
`predicted_volatility`, one per level the model was fitted with (`level` 0.8 → 80 %), from the
empirical quantiles of its validation log-residuals; null when the model carries no dispersion (the
LSTM, versions registered before intervals). `value_at_risk` and `expected_shortfall` are at
`var_level` (0.99) for a unit long position over the forecast's horizon (one day for the hourly
champion), as fractions of the position's value (0.05 = 5 % of it), assuming the horizon's log return
is normal with mean 0 and standard deviation `predicted_volatility` (RiskMetrics; the forecast's own
error adds tail mass this ignores).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from msgspec import Meta

MAX_LIMIT = 1000  # Binance's page size: one request's worth of bars
MIN_SIGNAL_BARS = 48  # sma48: the heuristic needs 48 contiguous bars
MAX_TAIL = 1000
MAX_ROW_ID = 2**63 - 1  # history row ids are SQL BIGINTs; a larger cursor can match no row
MAX_BATCH_SCHEMA = 100  # absolute cap in the schema; the configured cap (CRYPTO_API_MAX_BATCH) is lower

# String bounds of every face (REST declares them, GraphQL and gRPC get them from validate_market).
MAX_SYMBOL_CHARS = MAX_EXCHANGE_CHARS = 32
MAX_TIMEFRAME_CHARS = 8

Symbol = Annotated[
    str, Meta(min_length=1, max_length=MAX_SYMBOL_CHARS, description="e.g. BTC/USDT or BTCUSDT")
]
Exchange = Annotated[
    str, Meta(min_length=1, max_length=MAX_EXCHANGE_CHARS, description="exchange id, e.g. binance")
]
Timeframe = Annotated[
    str, Meta(min_length=1, max_length=MAX_TIMEFRAME_CHARS, description="bar length, e.g. 1h")
]
HorizonMin = Annotated[int, Meta(ge=1, le=10_080, description="nowcast horizon in minutes")]
Limit = Annotated[int, Meta(ge=MIN_SIGNAL_BARS, le=MAX_LIMIT, description="bars of history requested")]


class _Struct(msgspec.Struct, omit_defaults=True):
    """Optional fields left at None are omitted from responses."""


# --- requests -----------------------------------------------------------------------------------


class SignalRequest(msgspec.Struct):
    symbol: Symbol
    horizon_min: HorizonMin = 60
    explain: bool = False
    exchange: Exchange = "binance"
    timeframe: Timeframe = "1h"
    limit: Limit = 200


class SignalBatchRequest(msgspec.Struct):
    symbols: Annotated[list[Symbol], Meta(min_length=1, max_length=MAX_BATCH_SCHEMA)]
    horizon_min: HorizonMin = 60
    explain: bool = False
    exchange: Exchange = "binance"
    timeframe: Timeframe = "1h"
    limit: Limit = 200


class MLSignalRequest(msgspec.Struct):
    symbol: Symbol
    exchange: Exchange = "binance"
    timeframe: Timeframe = "1h"
    limit: Limit = 200
    include_heuristic: bool = True


class MLExplainRequest(msgspec.Struct):
    symbol: Symbol
    exchange: Exchange = "binance"
    timeframe: Timeframe = "1h"


# --- responses ----------------------------------------------------------------------------------


class Health(msgspec.Struct):
    status: str
    time: str  # server time; `timestamp` (the same value) is the seed's name for it
    uptime_s: float
    ml_available: bool  # a model is loaded (the seed's field; /ready says why not)
    timestamp: str


class Readiness(_Struct):
    status: str  # "ready" | "not_ready"
    model_loaded: bool
    model_version: str | None = None
    reason: str | None = None


class OhlcvRow(msgspec.Struct):
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    time: str


class OhlcvResponse(_Struct):
    symbol: str
    exchange: str
    timeframe: str
    limit: int
    rows: int
    source: str
    origin: str
    data: list[OhlcvRow]
    warnings: list[str] | None = None


class SignalExplain(msgspec.Struct):
    vol: float
    calm_below: float
    turbulent_from: float
    features_tail: list[dict[str, Any]]
    bars_used: int
    origin: str


class SignalResponse(_Struct):
    symbol: str
    horizon_min: int
    risk_score: float
    nowcast_ret: float
    vol_regime: str
    method: str
    exchange: str
    timeframe: str
    timestamp: str  # open time of the bar the signal is computed at
    source: str
    explain: SignalExplain | None = None


class BatchError(msgspec.Struct):
    symbol: str
    status_code: int
    detail: str


class SignalBatchResponse(msgspec.Struct):
    count: int
    results: list[SignalResponse]
    errors: list[BatchError]


class PredictionInterval(_Struct):
    level: float  # 0.8: the next horizon's realized volatility lies in [lower, upper] with 80 % probability
    lower: float
    upper: float


class MLPrediction(_Struct):
    predicted_volatility: float
    horizon_hours: float
    volatility_regime: str
    risk_level: str
    current_volatility: float | None
    confidence: float
    prediction_timestamp: str
    bar_timestamp: str
    intervals: list[PredictionInterval] | None  # null: the model has no dispersion
    value_at_risk: float  # fraction of a unit long position's value, at var_level, over the horizon
    expected_shortfall: float  # mean loss beyond value_at_risk, same units
    var_level: float


class MLSignalResponse(_Struct):
    symbol: str
    method: str
    timestamp: str
    model_version: str
    ml_prediction: MLPrediction
    exchange: str
    timeframe: str
    source: str
    heuristic_comparison: SignalResponse | None = None


class Attribution(msgspec.Struct):
    feature: str
    attribution: float  # prediction − prediction with this feature occluded
    relative: float  # attribution / prediction
    occluded_prediction: float
    last_value: float
    reference_value: float


class MLExplainResponse(msgspec.Struct):
    symbol: str
    model_version: str
    method: str
    # what stands for "no information": training_mean (the LSTM normaliser's), window_mean (the window
    # flattened), history_mean (a frame model: the feature's mean over the symbol's loaded history)
    reference: str
    predicted_volatility: float
    bar_timestamp: str
    source: str
    attributions: list[Attribution]


class CompareResponse(_Struct):
    symbol: str
    timestamp: str
    source: str
    heuristic: SignalResponse
    ml_available: bool
    ml: MLPrediction | None = None
    model_version: str | None = None
    ml_error: str | None = None
    regimes_agree: bool | None = None


class FeaturesResponse(msgspec.Struct):
    symbol: str
    timeframe: str
    source: str
    origin: str
    columns: list[str]
    rows: list[dict[str, Any]]


class ModelInfo(_Struct):
    model_loaded: bool
    model_name: str
    alias: str
    model_version: str | None = None
    model_family: str | None = None
    run_id: str | None = None
    load_time: str | None = None
    metrics: dict[str, float] | None = None
    sequence_length: int | None = None
    feature_columns: list[str] | None = None
    timeframe: str | None = None
    last_error: str | None = None
    input_contract: str | None = None  # window-array/v1 or feature-frame/v1
    interval_levels: list[float] | None = None  # the levels of its predictive intervals (empty: none)
    symbols: list[str] | None = None  # a feature-frame model: the symbols it reads together


class ReloadResponse(msgspec.Struct):
    success: bool
    old_version: str | None
    new_version: str | None
    message: str


class MetricsSummary(msgspec.Struct):
    start_time: str
    requests_total: int
    signals_total: int
    ml_predictions_total: int
    last_signal_at: str | None
    last_ml_prediction_at: str | None
    ml_available: bool


class ErrorBody(_Struct):
    status_code: int
    detail: str
    error: str | None = None
    extra: Any = None


UNAVAILABLE = {
    503: ResponseSpec(data_container=ErrorBody, description="No model loaded, or not enough history")
}
