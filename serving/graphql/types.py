"""GraphQL object and input types mirroring `serving.api.schemas` (GraphQL names are camelCase).

Resolvers return the msgspec response structs themselves: each type's Python attribute names equal the
struct's field names, and strawberry reads attributes, so no copying and no second source of truth for
values. `Long` carries epoch milliseconds, which do not fit GraphQL's 32-bit `Int`.
"""

from __future__ import annotations

from typing import NewType

import msgspec
import strawberry
from strawberry.scalars import JSON

from serving.api import schemas

Long = NewType("Long", int)

LONG_SCALAR = strawberry.scalar(
    name="Long",
    description="A 64-bit integer (epoch milliseconds); a JSON number, exact up to 2^53.",
    serialize=int,
    parse_value=int,
)


@strawberry.type(description="Liveness, plus whether a model is loaded (REST /health and /ready).")
class Health:
    status: str
    timestamp: str = strawberry.field(description="Server time (REST /health `timestamp`).")
    uptime_s: float
    model_loaded: bool
    ml_available: bool
    model_version: str | None = None
    reason: str | None = strawberry.field(default=None, description="Why no model is loaded.")


@strawberry.type
class ModelInfo:
    model_loaded: bool
    model_name: str
    alias: str
    model_version: str | None = None
    model_family: str | None = None
    run_id: str | None = None
    load_time: str | None = None
    metrics: JSON | None = None
    sequence_length: int | None = None
    feature_columns: list[str] | None = None
    timeframe: str | None = None
    last_error: str | None = None
    input_contract: str | None = None
    interval_levels: list[float] | None = None
    symbols: list[str] | None = None


@strawberry.type
class OhlcvRow:
    ts: Long = strawberry.field(description="Bar open time, epoch milliseconds.")
    open: float
    high: float
    low: float
    close: float
    volume: float
    time: str


@strawberry.type
class OhlcvData:
    symbol: str
    exchange: str
    timeframe: str
    limit: int
    rows: int
    source: str
    origin: str
    data: list[OhlcvRow]
    warnings: list[str] | None = None


@strawberry.type
class SignalExplain:
    vol: float
    calm_below: float
    turbulent_from: float
    features_tail: JSON
    bars_used: int
    origin: str


@strawberry.type(description="The heuristic risk signal at the newest closed bar.")
class Signal:
    symbol: str
    horizon_min: int
    risk_score: float
    nowcast_ret: float
    vol_regime: str
    method: str
    exchange: str
    timeframe: str
    timestamp: str
    source: str
    explain: SignalExplain | None = None


@strawberry.type(description="A served signal as stored in the history.")
class SignalRecord(Signal):
    id: int
    created_at: float
    recorded_at: str | None = None


@strawberry.type
class SignalsTail:
    count: int
    items: list[SignalRecord]


@strawberry.type(description="A predictive interval on the next horizon's realized volatility.")
class PredictionInterval:
    level: float = strawberry.field(description="Coverage probability, e.g. 0.8.")
    lower: float
    upper: float


@strawberry.type
class MLPrediction:
    predicted_volatility: float
    horizon_hours: float
    volatility_regime: str
    risk_level: str
    current_volatility: float | None
    confidence: float
    prediction_timestamp: str
    bar_timestamp: str
    intervals: list[PredictionInterval] | None = strawberry.field(
        description="One per fitted level; null when the model has no dispersion."
    )
    value_at_risk: float = strawberry.field(
        description="VaR at varLevel of a unit long position over the horizon, a fraction of its value "
        "(the horizon's log return taken as N(0, predictedVolatility²))."
    )
    expected_shortfall: float = strawberry.field(description="Mean loss beyond valueAtRisk, same units.")
    var_level: float


@strawberry.type
class MLSignal:
    symbol: str
    method: str
    timestamp: str
    model_version: str
    ml_prediction: MLPrediction
    exchange: str
    timeframe: str
    source: str
    heuristic_comparison: Signal | None = None


@strawberry.type
class Comparison:
    symbol: str
    timestamp: str
    source: str
    heuristic: Signal
    ml_available: bool
    ml: MLPrediction | None = None
    model_version: str | None = None
    ml_error: str | None = None
    regimes_agree: bool | None = None


@strawberry.type
class ReloadResult:
    success: bool
    old_version: str | None
    new_version: str | None
    message: str


# --- inputs: defaults as REST's; bounds are checked by the operations (same messages as REST) -------


@strawberry.input
class OhlcvInput:
    symbol: str
    exchange: str = "binance"
    timeframe: str = "1h"
    limit: int = 200


@strawberry.input
class SignalInput:
    symbol: str
    horizon_min: int = 60
    explain: bool = False
    exchange: str = "binance"
    timeframe: str = "1h"
    limit: int = 200


@strawberry.input
class MLSignalInput:
    symbol: str
    exchange: str = "binance"
    timeframe: str = "1h"
    limit: int = 200
    include_heuristic: bool = True


@strawberry.input
class CompareInput:
    symbol: str
    exchange: str = "binance"
    timeframe: str = "1h"
    horizon_min: int = 60


class StoredSignal(schemas.SignalResponse, kw_only=True):
    """A history row of the signals table (`History.tail_signals`) read back into a typed struct."""

    id: int
    created_at: float
    recorded_at: str | None = None


def signal_records(items: list[dict]) -> list[StoredSignal]:
    return [msgspec.convert(item, StoredSignal) for item in items]
