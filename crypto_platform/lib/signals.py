"""The heuristic risk signal: a model-free read of the latest bars, served next to the LSTM forecast.

Inputs are the heuristic features of `lib.features` (ret, vol24, sma12, sma48) for one symbol, so the
signal sees exactly the numbers the pipeline stored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl

from crypto_platform.lib.features import HEURISTIC_FEATURES
from crypto_platform.lib.market.timeframes import sqrt_time_scale, timeframe_ms

VolRegime = Literal["calm", "normal", "turbulent"]

# Per-bar return volatility thresholds for 1-hour bars; other bar lengths scale them by √(bar / 1 h)
# (volatility grows with the square root of time for independent returns).
CALM_VOL_1H = 0.005
TURBULENT_VOL_1H = 0.015

NOWCAST_BARS = 24  # the returns vol24 is measured on, so the shrinkage uses a consistent standard error
TAIL_BARS = 5
# The last bar needs sma48 (48 bars) and vol24 (25 bars): 48 contiguous bars in all.
MIN_BARS = 48

# Risk score: logistic in the volatility ratio and the downtrend (see `risk_score`).
_VOL_SLOPE = 3.0
_VOL_MIDPOINT = 0.6  # in units of the turbulent threshold: between the normal and turbulent regimes
_TREND_SLOPE = 1.5
_TREND_HORIZON_BARS = 24  # a trend is measured against a day of turbulent-regime noise

_REQUIRED = ("ts", "close", *HEURISTIC_FEATURES)


@dataclass(frozen=True)
class HeuristicSignal:
    """`nowcast_ret`: expected simple return over `horizon_min` minutes (fraction). `vol`: vol24 of the
    latest bar, the std of per-bar simple returns (fraction per bar). `vol_regime`: `vol` against the
    bar-length-scaled thresholds. `risk_score`: 0 (quiet, rising) … 1 (turbulent, falling).
    `features_tail`: the last `TAIL_BARS` bars, oldest first, null features as None."""

    nowcast_ret: float
    vol: float
    vol_regime: VolRegime
    risk_score: float
    features_tail: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vol_thresholds(timeframe: str) -> tuple[float, float]:
    """(calm below, turbulent from) per-bar volatility for bars of `timeframe`."""
    scale = sqrt_time_scale(timeframe)
    return CALM_VOL_1H * scale, TURBULENT_VOL_1H * scale


def classify_vol_regime(vol: float, timeframe: str) -> VolRegime:
    """'calm' when vol < 0.005·s, 'turbulent' when vol ≥ 0.015·s, else 'normal'; s = √(bar length / 1 h)."""
    _check_vol(vol)
    calm, turbulent = vol_thresholds(timeframe)
    if vol < calm:
        return "calm"
    if vol >= turbulent:
        return "turbulent"
    return "normal"


def risk_score(vol: float, sma_short: float, sma_long: float, timeframe: str) -> float:
    """Risk in [0, 1], increasing in volatility and in the downtrend:

        risk = σ(3.0 · (vol / v_turb − 0.6) + 1.5 · downtrend)
        downtrend = −ln(sma12 / sma48) / (v_turb · √24)

    σ is the logistic function, v_turb the turbulent threshold for the bar length. The downtrend is how
    far the 12-bar mean sits below the 48-bar mean, in units of a day's move at turbulent volatility
    (negative in an uptrend). With no trend the score is ≈ 0.14 at zero volatility, 0.5 at 0.6 · v_turb
    and ≈ 0.77 at v_turb. The trend term does not depend on vol, so the score rises with vol for any
    trend and with the downtrend for any vol.
    """
    _check_vol(vol)
    if not (math.isfinite(sma_short) and math.isfinite(sma_long) and sma_short > 0 and sma_long > 0):
        raise ValueError(f"moving averages must be positive and finite, got {sma_short!r}, {sma_long!r}")
    _, turbulent = vol_thresholds(timeframe)
    downtrend = -math.log(sma_short / sma_long) / (turbulent * math.sqrt(_TREND_HORIZON_BARS))
    z = _VOL_SLOPE * (vol / turbulent - _VOL_MIDPOINT) + _TREND_SLOPE * downtrend
    # Two branches keep exp() from overflowing for extreme z; the result stays within [0, 1].
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def nowcast_return(rets: list[float], vol: float, horizon_bars: float) -> float:
    """Expected simple return over `horizon_bars` bars: the mean m of the last returns, shrunk toward
    zero by m² / (m² + se²) with se = vol / √n (its standard error), times the horizon in bars.

    A drift no larger than its own noise is mostly noise, so it is mostly discounted; expected returns
    add up linearly over the horizon (a 15-minute horizon on 1-hour bars is a quarter of a bar).
    """
    n = len(rets)
    if n == 0:
        raise ValueError("nowcast_return needs at least one return")
    mean = math.fsum(rets) / n
    se2 = vol * vol / n
    denominator = mean * mean + se2
    shrink = mean * mean / denominator if denominator > 0 else 0.0
    return shrink * mean * horizon_bars


def heuristic_signal(features: pl.DataFrame, timeframe: str = "1h", horizon_min: int = 60) -> HeuristicSignal:
    """The heuristic signal at the latest bar of `features` (the output of `compute_features`, one
    symbol). Raises ValueError when columns are missing, several symbols are mixed, there are fewer than
    MIN_BARS bars, or the latest bar's features are undefined (a hole in its last MIN_BARS bars)."""
    bar_ms = timeframe_ms(timeframe)
    if not horizon_min > 0:
        raise ValueError(f"horizon_min must be positive, got {horizon_min!r}")
    missing = [c for c in _REQUIRED if c not in features.columns]
    if missing:
        raise ValueError(
            f"heuristic_signal needs columns {list(_REQUIRED)}; missing {missing} "
            "(pass the output of lib.features.compute_features)"
        )
    if "symbol" in features.columns and features["symbol"].n_unique() > 1:
        raise ValueError("heuristic_signal takes one symbol's features; filter the frame by symbol first")
    if features.height < MIN_BARS:
        raise ValueError(
            f"heuristic_signal needs at least {MIN_BARS} consecutive {timeframe} bars "
            f"(sma48 and vol24 of the latest bar); got {features.height}"
        )
    recent = (
        features.sort("ts")
        .tail(max(NOWCAST_BARS, TAIL_BARS))
        .with_columns(pl.col(_REQUIRED[1:]).fill_nan(None))
    )
    last = recent.row(-1, named=True)
    undefined = [c for c in ("close", *HEURISTIC_FEATURES) if last[c] is None]
    if undefined:
        raise ValueError(
            f"the latest bar's {undefined} are undefined: its last {MIN_BARS} {timeframe} bars must be "
            "contiguous (no hole from an exchange outage)"
        )

    vol = float(last["vol24"])
    rets = [float(r) for r in recent.tail(NOWCAST_BARS)["ret"] if r is not None]
    horizon_bars = horizon_min * 60_000 / bar_ms
    return HeuristicSignal(
        nowcast_ret=nowcast_return(rets, vol, horizon_bars),
        vol=vol,
        vol_regime=classify_vol_regime(vol, timeframe),
        risk_score=risk_score(vol, float(last["sma12"]), float(last["sma48"]), timeframe),
        features_tail=[_tail_row(row) for row in recent.tail(TAIL_BARS).iter_rows(named=True)],
    )


def _tail_row(row: dict[str, Any]) -> dict[str, Any]:
    time = datetime.fromtimestamp(row["ts"] / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"time": time, **{k: None if row[k] is None else float(row[k]) for k in _REQUIRED[1:]}}


def _check_vol(vol: float) -> None:
    if not (isinstance(vol, int | float) and math.isfinite(vol) and vol >= 0):
        raise ValueError(f"volatility must be a finite number ≥ 0, got {vol!r}")
