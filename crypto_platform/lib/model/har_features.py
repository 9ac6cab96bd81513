"""The extra per-bar regressors of HAR+ (`har_plus.HARPlusBaseline`), added to a `compute_features` frame.

Every column of bar t is a function of bars ≤ t only (the leakage test perturbs the future and checks
that earlier rows are bit-identical). Windows use lib.features' gap mask: a window that straddles a hole
in the bar grid, or the start of a symbol, is null, exactly like `realized_vol_*`. All variances are on
the 24-bar scale of the `realized_vol_*` features (a sum over n bars times 24/n), stored as natural
logs (floored at `LOG_VARIANCE_FLOOR`) so they fit float32 windows and enter the log-HAR directly.

| column                    | definition (windows in bars, r = log_ret)                                  |
|---------------------------|----------------------------------------------------------------------------|
| log_rv_1                  | ln(24 · r_t²): the last hour's squared return                              |
| log_rv_{24,168,720}       | ln(realized_vol_n²), recomputed per symbol (see below)                      |
| log_gk_{1,24,168,720}     | ln(24/n · Σ Garman–Klass bar variance) over the last n bars                |
| log_pk_{24,168}           | ln(24/n · Σ Parkinson bar variance) (kept for the ablation in the benchmark)|
| harq_ratio_24             | √RQ_24 / RV_24, RQ_24 = (24/3) Σ r⁴: relative measurement error of RV_24   |
| semivar_neg_share_{24,168}| Σ r² 1{r<0} / Σ r² over n bars (downside share; 0.5 when symmetric)         |
| signed_ret_24             | ln(c_t / c_{t−24}) / realized_vol_720: the day's return in monthly-vol units|
| volume_ratio_24_720       | mean ln(1+volume) over 24 bars − over 720 bars (abnormal volume)            |
| cross_log_rv_24           | mean over the other symbols at the same ts of ln(realized_vol_24²); the     |
|                           | bar's own value when no other symbol has a bar then (a one-symbol frame)    |

Garman–Klass per bar: ½ ln(H/L)² − (2 ln 2 − 1) ln(C/O)² (≥ 0 because |ln C/O| ≤ ln H/L); Parkinson:
ln(H/L)² / (4 ln 2). Rolling sums run per symbol (`.over("symbol")`): lib.features' whole-column
incremental sums let rounding from one symbol's last bars reach the next symbol's first ones (~1e-16),
which would make "the past is bit-identical when the future changes" false. Range estimators see the
whole intrabar path, not only two closes, so their day sums are several times less noisy than the
squared hourly returns (Garman & Klass 1980).
"""

from __future__ import annotations

import math

import polars as pl

# lib.features' gap mask and sanitised close: one definition of "a complete window", not a second copy.
from crypto_platform.lib.features import _C as _CLOSE
from crypto_platform.lib.features import RV_LONG, RV_MONTH, RV_SHORT, _window, _with_runs
from crypto_platform.lib.market.timeframes import timeframe_ms

LOG_VARIANCE_FLOOR = 1e-12
_GK_CLOSE_WEIGHT = 2.0 * math.log(2.0) - 1.0
_PK_SCALE = 1.0 / (4.0 * math.log(2.0))

HAR_PLUS_FEATURES: tuple[str, ...] = (
    "log_rv_1",
    "log_rv_24",
    "log_rv_168",
    "log_rv_720",
    "log_gk_1",
    "log_gk_24",
    "log_gk_168",
    "log_gk_720",
    "log_pk_24",
    "log_pk_168",
    "harq_ratio_24",
    "semivar_neg_share_24",
    "semivar_neg_share_168",
    "signed_ret_24",
    "volume_ratio_24_720",
    "cross_log_rv_24",
)
# Columns of compute_features that har_plus_features reads.
REQUIRED_COLUMNS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume", "log_ret")


def _log_var(expr: pl.Expr) -> pl.Expr:
    return expr.clip(lower_bound=LOG_VARIANCE_FLOOR).log()


def har_plus_features(features: pl.DataFrame, timeframe: str = "1h") -> pl.DataFrame:
    """`features` (a `compute_features` result, one or many symbols) with `HAR_PLUS_FEATURES` added.

    Rows and their order are kept; the frame must already be normalised (unique, on-grid bars), which
    compute_features has checked.
    """
    missing = [c for c in (*REQUIRED_COLUMNS, "realized_vol_24", "realized_vol_720") if c not in features]
    if missing:
        raise ValueError(f"har_plus_features needs a compute_features frame; it lacks {missing}")
    keys = ["symbol"] if "symbol" in features.columns else []
    stale = [c for c in HAR_PLUS_FEATURES if c in features.columns]
    base = features.drop(stale).with_row_index("__harp_row")
    ordered = base.lazy().sort([*keys, "ts"])
    runs = _with_runs(ordered, keys, timeframe_ms(timeframe))

    def positive(name: str) -> pl.Expr:
        col = pl.col(name).cast(pl.Float64)
        return pl.when(col.is_finite() & (col > 0)).then(col)

    hl = (positive("high") / positive("low")).log()
    co = (positive("close") / positive("open")).log()
    r = pl.col("log_ret").fill_null(0.0)
    stage1 = runs.with_columns(
        pl.when(hl >= 0)
        .then(0.5 * hl**2 - _GK_CLOSE_WEIGHT * co**2)
        .clip(lower_bound=0.0)
        .alias("__harp_gk"),
        pl.when(hl >= 0).then(_PK_SCALE * hl**2).alias("__harp_pk"),
        (r**2).alias("__harp_r2"),
        (r**4).alias("__harp_r4"),
        pl.when(r < 0).then(r**2).otherwise(0.0).alias("__harp_r2neg"),
        (pl.col("volume").cast(pl.Float64).clip(lower_bound=0.0) + 1.0).log().alias("__harp_lv"),
    )

    def per_symbol(expr: pl.Expr) -> pl.Expr:
        # Incremental rolling sums carry rounding along the column; per symbol, the bars of one symbol's
        # future (sorted before the next symbol's past) cannot nudge another symbol's values.
        return expr.over(keys) if keys else expr

    def bar_sum(col: str, n: int, extra_bars: int = 0) -> pl.Expr:
        # clip: an incremental rolling sum can end a hair below zero; null where the window breaks.
        total = per_symbol(pl.col(col).fill_null(0.0).rolling_sum(n))
        return _window(total.clip(lower_bound=0.0), n + extra_bars)

    def range_var(col: str, n: int) -> pl.Expr:
        return _log_var(bar_sum(col, n) * (RV_SHORT / n))

    rv24 = bar_sum("__harp_r2", RV_SHORT, 1)
    rv720 = bar_sum("__harp_r2", RV_MONTH, 1) * (RV_SHORT / RV_MONTH)
    stage2 = stage1.with_columns(
        _window(_log_var(RV_SHORT * pl.col("__harp_r2")), 2).alias("log_rv_1"),
        _log_var(rv24).alias("log_rv_24"),
        _log_var(bar_sum("__harp_r2", RV_LONG, 1) * (RV_SHORT / RV_LONG)).alias("log_rv_168"),
        _log_var(rv720).alias("log_rv_720"),
        range_var("__harp_gk", 1).alias("log_gk_1"),
        range_var("__harp_gk", RV_SHORT).alias("log_gk_24"),
        range_var("__harp_gk", RV_LONG).alias("log_gk_168"),
        range_var("__harp_gk", RV_MONTH).alias("log_gk_720"),
        range_var("__harp_pk", RV_SHORT).alias("log_pk_24"),
        range_var("__harp_pk", RV_LONG).alias("log_pk_168"),
        # A flat day (RV 0) has no measurement error to speak of: ratio 1, the value of a single jump.
        pl.when(rv24 > 0)
        .then((bar_sum("__harp_r4", RV_SHORT, 1) * (RV_SHORT / 3.0)).sqrt() / rv24)
        .otherwise(pl.when(rv24.is_not_null()).then(1.0))
        .alias("harq_ratio_24"),
        _neg_share(bar_sum("__harp_r2neg", RV_SHORT, 1), rv24).alias("semivar_neg_share_24"),
        _neg_share(bar_sum("__harp_r2neg", RV_LONG, 1), bar_sum("__harp_r2", RV_LONG, 1)).alias(
            "semivar_neg_share_168"
        ),
        pl.when(rv720 > 0)
        .then(_window((pl.col(_CLOSE) / pl.col(_CLOSE).shift(RV_SHORT)).log(), RV_SHORT + 1) / rv720.sqrt())
        .alias("signed_ret_24"),
        (
            _window(per_symbol(pl.col("__harp_lv").rolling_mean(RV_SHORT)), RV_SHORT)
            - _window(per_symbol(pl.col("__harp_lv").rolling_mean(RV_MONTH)), RV_MONTH)
        ).alias("volume_ratio_24_720"),
        _log_var(rv24).alias("__harp_own_log_rv"),
    )
    frame = stage2.collect(engine="in-memory")
    frame = frame.with_columns(_cross_asset(frame, keys).alias("cross_log_rv_24"))
    helpers = [c for c in frame.columns if c.startswith("__") and c != "__harp_row"]
    return frame.drop(helpers).sort("__harp_row").drop("__harp_row")


def _neg_share(neg: pl.Expr, total: pl.Expr) -> pl.Expr:
    return pl.when(total > 0).then(neg / total).otherwise(pl.when(total.is_not_null()).then(0.5))


def _cross_asset(frame: pl.DataFrame, keys: list[str]) -> pl.Expr:
    """Mean of the other symbols' ln RV_24² at the same ts (null values do not count as a symbol)."""
    own = pl.col("__harp_own_log_rv")
    if not keys:
        return own
    total = own.sum().over("ts")
    count = own.count().over("ts")
    return pl.when(own.is_null()).then(None).when(count > 1).then((total - own) / (count - 1)).otherwise(own)
