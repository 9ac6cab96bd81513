"""The one feature function: the pipeline, the API and the Kafka scorer all call `compute_features`,
so a bar's features are identical wherever they are computed.

All windows are counted in bars (for 1h bars, `realized_vol_24` covers a day). Every feature of a bar
is a function of that bar and its `LOOKBACK_BARS` predecessors only (no exponential smoothing with
infinite memory), so a caller holding just the last `LOOKBACK_BARS + 1` bars gets exactly what the
pipeline computes from the whole history. `feature_ready` marks the rows where every feature is
defined (from WARMUP_BARS bars after the start or after a hole); `ready_rows` selects them.

Gaps: Binance history has outage holes of up to 33 h, and a window must never silently straddle one.
The result is what reindexing each symbol onto the regular grid of its bar length (inserted rows
null), computing with min_samples = window, and keeping the original rows gives: a return across a hole
is null, every window that contains a missing bar is null, and features come back once the window after
the hole is full again. It is computed without materialising the grid (a 10M-row join costs more than
all the features together): the frame is sorted by (symbol, ts) and every row carries `run`, the number
of bars before it that are present, on the grid and of the same symbol without a break. A window of n
bars ending at a row is exactly the grid window iff run ≥ n − 1, so windows are computed over the
sorted rows and nulled where run < n − 1. That one mask also keeps windows from crossing from one symbol
into the next, which is why no `.over("symbol")` is needed. Undefined values are null, never NaN or ±inf.

| column           | definition (windows in bars)                                   | unit                  |
|------------------|----------------------------------------------------------------|-----------------------|
| ret              | close_t / close_{t-1} − 1                                      | fraction per bar      |
| vol24            | sample std (ddof=1) of `ret` over the last 24 bars             | fraction per bar      |
| sma12, sma48     | mean close over the last 12 / 48 bars                          | quote currency        |
| log_ret          | ln(close_t / close_{t-1})                                      | log return per bar    |
| log_volume       | ln(1 + volume)                                                 | ln(base-asset volume) |
| realized_vol_24  | √Σ log_ret² over the last 24 bars (target: the NEXT 24)        | log return / 24 bars  |
| realized_vol_168 | √(24/168 · Σ log_ret² over 168 bars): a week on the 24-bar scale| log return / 24 bars  |
| realized_vol_720 | √(24/720 · Σ log_ret² over 720 bars): a month on the 24-bar scale| log return / 24 bars |
| rsi_14           | Wilder RSI, α = 1/14, over the trailing 168 price changes      | 0–100                 |
| bb_pct_b         | (close − lower) / (upper − lower); bands SMA20 ± 2σ20 (ddof=0) | 0 lower, 1 upper band |
| bb_width         | (upper − lower) / SMA20 = 4σ20 / SMA20                         | fraction of price     |
| momentum_12, _24 | ln(close_t / close_{t-12}), ln(close_t / close_{t-24})         | log return            |
| hl_range         | ln(high / low), the Parkinson-style intrabar range             | log units             |
| volume_z_24      | (log_volume − mean) / std (ddof=1) of log_volume, bars t-24…t-1| standard deviations   |
"""

from __future__ import annotations

import polars as pl

from crypto_platform.lib.market.schema import OHLCV_COLUMNS
from crypto_platform.lib.market.timeframes import timeframe_ms

HEURISTIC_FEATURES: tuple[str, ...] = ("ret", "vol24", "sma12", "sma48")
MODEL_FEATURES: tuple[str, ...] = (
    "log_ret",
    "log_volume",
    "realized_vol_24",
    "realized_vol_168",
    "realized_vol_720",
    "rsi_14",
    "bb_pct_b",
    "bb_width",
    "momentum_12",
    "momentum_24",
    "hl_range",
    "volume_z_24",
)
FEATURE_COLUMNS: tuple[str, ...] = HEURISTIC_FEATURES + MODEL_FEATURES
READY_COLUMN = "feature_ready"

RV_SHORT = 24
RV_LONG = 168
# The monthly leg of HAR-RV (daily / weekly / monthly realized volatility at 24 / 168 / 720 bars).
RV_MONTH = 720
RSI_PERIOD = 14
# Wilder's smoothing has infinite memory. It is evaluated over a fixed trailing window instead, so that a
# bar's RSI depends on a bounded history. The truncated history carries (13/14)^168 ≈ 3.9e-6 of the
# weight: unless the market was far busier before the window than in it, the RSI differs from the
# never-ending recursion by well under 0.01 points.
RSI_WINDOW = 168
BB_WINDOW = 20
BB_K = 2.0
VOLUME_Z_WINDOW = 24

# Previous bars a bar's features depend on: 720 log returns (realized_vol_720) need the bar itself and
# the 720 before it; every other window is shorter.
LOOKBACK_BARS = max(RV_MONTH, RV_LONG, RSI_WINDOW)
# In a gap-free series the first LOOKBACK_BARS rows (and the first LOOKBACK_BARS rows after a hole)
# lack some feature; `feature_ready` is true from then on.
WARMUP_BARS = LOOKBACK_BARS

RSI_ALPHA = 1.0 / RSI_PERIOD  # Wilder's smoothing constant
# A windowed RSI sum below this fraction of the smoothed level is rounding left by the O(n) evaluation.
RSI_NOISE_REL = 1e-12
# A dispersion this small relative to the level is rounding noise, i.e. a flat window.
FLAT_REL = 1e-10

_C, _H, _L, _V = "__feat_close", "__feat_high", "__feat_low", "__feat_volume"
_RUN, _BAD_GRID = "__feat_run", "__feat_bad_grid"


def compute_features(bars: pl.DataFrame | pl.LazyFrame, timeframe: str = "1h") -> pl.DataFrame:
    """Add `HEURISTIC_FEATURES`, `MODEL_FEATURES` and `feature_ready` to an OHLCV frame.

    `bars` has the OHLCV columns (lib.market.schema) and optionally `symbol`, in which case everything
    is computed per symbol. Rows must be unique per (symbol, ts) and on the timeframe's grid (run
    `normalize_ohlcv` first); a ValueError says so otherwise. The result holds the input rows and columns,
    sorted by (symbol,) ts, plus the feature columns (recomputed if the input already has them). The
    work is lazy and collected once.
    """
    bar_ms = timeframe_ms(timeframe)
    lf = bars.lazy() if isinstance(bars, pl.DataFrame) else bars
    schema = lf.collect_schema()
    missing = [c for c in OHLCV_COLUMNS if c not in schema]
    if missing:
        raise ValueError(f"compute_features needs OHLCV columns {list(OHLCV_COLUMNS)}; missing {missing}")
    if not schema["ts"].is_integer():
        raise ValueError(f"ts must be integer epoch milliseconds (lib.market.schema), not {schema['ts']}")
    keys = ["symbol"] if "symbol" in schema else []
    # Features already in the input (a frame computed before) are replaced, not duplicated.
    stale = [c for c in (*FEATURE_COLUMNS, READY_COLUMN) if c in schema]
    input_columns = [c for c in schema.names() if c not in stale]

    ordered = lf.drop(stale).with_columns(pl.col("ts").cast(pl.Int64))
    if not (isinstance(bars, pl.DataFrame) and _is_sorted(bars, keys)):
        # Sorting 10M rows by a string key and ts costs more than several features, and frames from
        # normalize_ohlcv or storage are already sorted: only an eager frame can be checked for free.
        ordered = ordered.sort([*keys, "ts"])
    result = (
        _with_features(_with_runs(ordered, keys, bar_ms))
        .select(*input_columns, *FEATURE_COLUMNS, READY_COLUMN, _BAD_GRID)
        # Every window and the Wilder recursion run over whole columns, so streaming buys nothing here;
        # it also hands back ~2000 chunks per 10M rows, which makes each later column operation slower.
        .collect(engine="in-memory")
    )
    bad = result.get_column(_BAD_GRID)
    if bad.any():
        first = result.filter(bad).row(0, named=True)
        where = f"{first['symbol']} " if keys else ""
        raise ValueError(
            f"bars are duplicated or off the {timeframe} grid (first at {where}ts={first['ts']}): "
            "ts must be unique per symbol and a whole number of bars apart; run normalize_ohlcv first"
        )
    return result.drop(_BAD_GRID)


def _is_sorted(frame: pl.DataFrame, keys: list[str]) -> bool:
    """Whether `frame` is sorted by (symbol,) ts; ties count as sorted (the grid check reports them)."""
    if frame.height < 2:
        return True
    ts_ok = pl.col("ts") >= pl.col("ts").shift(1)
    if keys:
        sym, prev = pl.col("symbol"), pl.col("symbol").shift(1)
        ts_ok = (sym > prev) | ((sym == prev) & ts_ok)
    return bool(frame.select(ts_ok.fill_null(True).all()).item())


def ready_rows(features: pl.DataFrame) -> pl.DataFrame:
    """Rows whose features are all defined (past warm-up, no hole inside any window)."""
    return features.filter(pl.col(READY_COLUMN))


def _with_runs(ordered: pl.LazyFrame, keys: list[str], bar_ms: int) -> pl.LazyFrame:
    """Sanitised prices and `run`: how many bars before this one form an unbroken stretch with it.

    A bar breaks the stretch when it starts a symbol, follows a hole, or has no usable close (a
    non-positive or non-finite price cannot enter a ratio or a log, so it counts as a missing bar).
    """

    def positive(name: str) -> pl.Expr:
        col = pl.col(name).cast(pl.Float64)
        return pl.when(col.is_finite() & (col > 0)).then(col)

    volume = pl.col("volume").cast(pl.Float64)
    step = pl.col("ts") - pl.col("ts").shift(1)
    same_symbol = pl.col("symbol").eq(pl.col("symbol").shift(1)) if keys else pl.lit(True)
    same_symbol = same_symbol.fill_null(False)
    cleaned = ordered.with_columns(
        positive("close").alias(_C),
        positive("high").alias(_H),
        positive("low").alias(_L),
        pl.when(volume.is_finite() & (volume >= 0)).then(volume).alias(_V),
        (same_symbol & ((step <= 0) | (step % bar_ms != 0))).alias(_BAD_GRID),
    )
    ok = pl.col(_C).is_not_null()
    linked = same_symbol & (step == bar_ms) & ok & ok.shift(1).fill_null(False)
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    run_start = pl.when(linked).then(None).otherwise(index).forward_fill()
    return cleaned.with_columns(pl.when(ok).then(index - run_start).otherwise(-1).alias(_RUN))


def _complete(n_bars: int) -> pl.Expr:
    """The last `n_bars` bars (this one included) are all present, on the grid, of one symbol."""
    return pl.col(_RUN) >= n_bars - 1


def _window(expr: pl.Expr, n_bars: int) -> pl.Expr:
    """`expr` where its window of `n_bars` bars is complete, null where it straddles a break."""
    return pl.when(_complete(n_bars)).then(expr)


def _with_features(frame: pl.LazyFrame) -> pl.LazyFrame:
    # Three explicit stages: every rolling or recursive quantity is computed once into a temporary column
    # (polars does not share a sub-expression used several times inside one when/then chain).
    close = pl.col(_C)
    prev_close = close.shift(1)
    change = close - prev_close
    stage1 = frame.with_columns(
        _window(close / prev_close - 1.0, 2).alias("ret"),
        _window((close / prev_close).log(), 2).alias("log_ret"),
        (pl.col(_V) + 1.0).log().alias("log_volume"),
        pl.when(pl.col(_H) >= pl.col(_L)).then((pl.col(_H) / pl.col(_L)).log()).alias("hl_range"),
        # Only the two end points enter the ratio, but a hole between them would still make it a return
        # over another span than its name says: null like every window that straddles a break.
        _window((close / close.shift(12)).log(), 12 + 1).alias("momentum_12"),
        _window((close / close.shift(24)).log(), 24 + 1).alias("momentum_24"),
        # Filled so the Wilder recursion runs through; the RSI window mask nulls every bar it touches.
        change.clip(lower_bound=0.0).fill_null(0.0).alias("__feat_gain"),
        (-change).clip(lower_bound=0.0).fill_null(0.0).alias("__feat_loss"),
    )

    r2 = pl.col("log_ret").fill_null(0.0) ** 2
    lv_prev = pl.col("log_volume").shift(1)
    stage2 = stage1.with_columns(
        # vol24 needs 24 returns, i.e. 25 bars.
        _window(pl.col("ret").fill_null(0.0).rolling_std(24, ddof=1), 24 + 1).alias("vol24"),
        _window(close.rolling_mean(12), 12).alias("sma12"),
        _window(close.rolling_mean(48), 48).alias("sma48"),
        # clip: an incremental rolling sum can end a hair below zero.
        _window(r2.rolling_sum(RV_SHORT).clip(lower_bound=0.0).sqrt(), RV_SHORT + 1).alias("realized_vol_24"),
        # A week of squared returns rescaled to the 24-bar horizon, comparable with realized_vol_24.
        _window(
            (r2.rolling_sum(RV_LONG).clip(lower_bound=0.0) * (RV_SHORT / RV_LONG)).sqrt(), RV_LONG + 1
        ).alias("realized_vol_168"),
        _window(
            (r2.rolling_sum(RV_MONTH).clip(lower_bound=0.0) * (RV_SHORT / RV_MONTH)).sqrt(), RV_MONTH + 1
        ).alias("realized_vol_720"),
        _window(close.rolling_mean(BB_WINDOW), BB_WINDOW).alias("__feat_bb_mid"),
        close.rolling_std(BB_WINDOW, ddof=0).alias("__feat_bb_sd"),
        # The baseline is the 24 bars before this one: a volume spike must not inflate its own yardstick.
        _window(lv_prev.rolling_mean(VOLUME_Z_WINDOW), VOLUME_Z_WINDOW + 1).alias("__feat_lv_mean"),
        lv_prev.rolling_std(VOLUME_Z_WINDOW, ddof=1).alias("__feat_lv_sd"),
        pl.col("__feat_gain").ewm_mean(alpha=RSI_ALPHA, adjust=False).alias("__feat_gain_ewm"),
        pl.col("__feat_loss").ewm_mean(alpha=RSI_ALPHA, adjust=False).alias("__feat_loss_ewm"),
    )

    stage3 = stage2.with_columns(
        _window(_rsi(pl.col("__feat_gain_ewm"), pl.col("__feat_loss_ewm")), RSI_WINDOW + 1).alias("rsi_14"),
        *_bollinger(close, pl.col("__feat_bb_mid"), pl.col("__feat_bb_sd")),
        _zscore(pl.col("log_volume"), pl.col("__feat_lv_mean"), pl.col("__feat_lv_sd")).alias("volume_z_24"),
    )
    ready = pl.all_horizontal(pl.col(c).is_not_null() for c in FEATURE_COLUMNS)
    return stage3.with_columns(ready.alias(READY_COLUMN))


def _rsi(gain_ewm: pl.Expr, loss_ewm: pl.Expr) -> pl.Expr:
    """Wilder's RSI: 100 · G / (G + L), where G and L are the α = 1/14 weighted sums of gains and losses
    over the trailing RSI_WINDOW price changes, weight (1 − α)^k for the change k bars back.

    Wilder's averages are G and L over one common normaliser, which cancels in the ratio. No losses →
    100 (Wilder's convention); no gains → 0; no change at all → 50 (neutral).

    The windowed sum is computed in O(n) rather than O(n · 168): with E the Wilder recursion
    E_t = (1 − α) E_{t−1} + α x_t (`gain_ewm`, `loss_ewm`), exactly
    α Σ_{k<W} (1 − α)^k x_{t−k} = E_t − (1 − α)^W E_{t−W}. The difference cancels the older history up to
    rounding (~1e-15 of E); a remainder below RSI_NOISE_REL · E is that rounding, not a gain or a loss, and
    is set to zero so that flat or one-way windows give exactly 50, 100 or 0. A unit test checks the
    result against the direct weighted sum.
    """
    decay = (1.0 - RSI_ALPHA) ** RSI_WINDOW
    noise = RSI_NOISE_REL * (gain_ewm + loss_ewm)
    gains = gain_ewm - decay * gain_ewm.shift(RSI_WINDOW)
    losses = loss_ewm - decay * loss_ewm.shift(RSI_WINDOW)
    gains = pl.when(gains > noise).then(gains).otherwise(0.0)
    losses = pl.when(losses > noise).then(losses).otherwise(0.0)
    return (
        pl.when(losses == 0.0)
        .then(pl.when(gains == 0.0).then(50.0).otherwise(100.0))
        .otherwise(100.0 * gains / (gains + losses))
    )


def _bollinger(close: pl.Expr, mid: pl.Expr, sd: pl.Expr) -> list[pl.Expr]:
    """%b = (close − (mid − kσ)) / (2kσ) and width = 2kσ / mid. `mid` is null unless the window is
    complete, which nulls both. With σ = 0 every close of the window equals the mean: %b takes its limit,
    the middle of the band (0.5), and the width is 0."""
    flat = sd <= FLAT_REL * mid
    band = 2.0 * BB_K * sd
    return [
        pl.when(flat).then(0.5).otherwise((close - mid + BB_K * sd) / band).alias("bb_pct_b"),
        pl.when(flat).then(0.0).otherwise(band / mid).alias("bb_width"),
    ]


def _zscore(x: pl.Expr, mean: pl.Expr, sd: pl.Expr) -> pl.Expr:
    # `mean` is null unless the baseline window is complete. A baseline with no dispersion: 0 when the bar
    # matches it, undefined (null) when it does not.
    scale = FLAT_REL * (1.0 + mean.abs())
    flat = sd <= scale
    return pl.when(flat & ((x - mean).abs() <= scale)).then(0.0).when(flat.not_()).then((x - mean) / sd)
