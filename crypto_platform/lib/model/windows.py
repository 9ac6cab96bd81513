"""Sliding input windows, next-24-bar realized-volatility targets, and leak-free time splits.

A sample is one (symbol, closed bar t):
- input  X = the feature rows of bars t-47 … t (t included), oldest first;
- target y = √(Σ r²) over the log returns of bars t+1 … t+24, i.e. the realized volatility of the
  next 24 bars (the first return, ln(c_{t+1}/c_t), is the first one not known at t).

Real exchange history has outages (Binance: holes of up to 33 h). A window or a target that
straddled one would silently mix returns hours apart, so every bar an input or a target touches
must sit on consecutive grid slots (`ts` step = the bar length) and have non-null, finite values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from crypto_platform.lib.features import LOOKBACK_BARS
from crypto_platform.lib.market.timeframes import HOUR_MS, timeframe_ms

SEQUENCE_LENGTH = 48
HORIZON_BARS = 24
# Closed bars an online scorer holds (API and Kafka scorer alike): the oldest bar of the newest
# `SEQUENCE_LENGTH`-bar window still has its full `LOOKBACK_BARS` look-back, so every feature of the
# window equals what the pipeline's `features` asset stores for that bar.
FEATURE_BARS = LOOKBACK_BARS + SEQUENCE_LENGTH
RETURN_COLUMN = "log_ret"


class InsufficientHistoryError(ValueError):
    """The most recent bars do not form a complete input window (gap, nulls, or too little data)."""


@dataclass(frozen=True, eq=False)  # eq on numpy arrays would be ambiguous
class WindowSet:
    """Samples in a fixed layout that models, baselines and metrics share.

    X: float32 [n, sequence_length, n_features], oldest bar first, in `feature_columns` order.
    y: float64 [n], realized volatility of the next `horizon` bars (NaN only when built with
       `with_target=False` and the target is not available yet).
    ts: int64 [n], open time (UTC ms) of bar t, the last input bar.
    symbol: str [n].
    """

    X: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    symbol: np.ndarray
    feature_columns: tuple[str, ...]
    bar_ms: int = HOUR_MS
    horizon: int = HORIZON_BARS
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.X.shape[0]
        if self.X.ndim != 3 or self.X.shape[2] != len(self.feature_columns):
            raise ValueError(f"X must be [n, seq, {len(self.feature_columns)}], got {self.X.shape}")
        for name in ("y", "ts", "symbol"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.feature_columns)})

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def sequence_length(self) -> int:
        return int(self.X.shape[1])

    @property
    def target_end_ts(self) -> np.ndarray:
        """Open time of the last bar each target covers (t + horizon bars)."""
        return self.ts + self.horizon * self.bar_ms

    def column_index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"feature column {name!r} is not in these windows; they hold {list(self.feature_columns)}"
            ) from None

    def column(self, name: str) -> np.ndarray:
        """[n, sequence_length] float64 history of one feature (oldest first)."""
        return self.X[:, :, self.column_index(name)].astype(np.float64)

    def last(self, name: str) -> np.ndarray:
        """[n] float64 value of one feature at bar t."""
        return self.X[:, -1, self.column_index(name)].astype(np.float64)

    def take(self, idx: np.ndarray | Sequence[int]) -> WindowSet:
        idx = np.asarray(idx)
        return WindowSet(
            X=self.X[idx],
            y=self.y[idx],
            ts=self.ts[idx],
            symbol=self.symbol[idx],
            feature_columns=self.feature_columns,
            bar_ms=self.bar_ms,
            horizon=self.horizon,
        )


def _symbol_groups(features: pl.DataFrame) -> Iterator[tuple[str, pl.DataFrame]]:
    if "symbol" not in features.columns:
        yield "", features.sort("ts")
        return
    for (sym,), part in features.sort("symbol", "ts").group_by("symbol", maintain_order=True):
        yield str(sym), part


def _valid_matrix(part: pl.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Float64 [rows, cols] with missing cells as 0, and a per-row mask of rows with every cell usable."""
    mat = part.select(pl.col(c).cast(pl.Float64) for c in columns).to_numpy()
    ok = np.isfinite(mat).all(axis=1)
    return np.where(np.isfinite(mat), mat, 0.0), ok


def _grid_slots(ts: np.ndarray, bar_ms: int, sym: str) -> np.ndarray:
    if ts.size and np.any((ts - ts[0]) % bar_ms):
        raise ValueError(f"{sym or 'frame'}: ts values are not aligned on a {bar_ms} ms grid")
    slots = (ts - (ts[0] if ts.size else 0)) // bar_ms
    if np.any(np.diff(slots) <= 0):
        raise ValueError(f"{sym or 'frame'}: duplicate ts values; normalise the frame first")
    return slots


def _prefix(mask: np.ndarray) -> np.ndarray:
    """c[i] = number of True in mask[:i]; window sums become c[j+1] − c[i]."""
    return np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))


def build_windows(
    features: pl.DataFrame,
    feature_columns: Sequence[str],
    timeframe: str = "1h",
    sequence_length: int = SEQUENCE_LENGTH,
    horizon: int = HORIZON_BARS,
    with_target: bool = True,
    return_column: str = RETURN_COLUMN,
) -> WindowSet:
    """Every complete (input, target) sample in a features frame (optionally multi-symbol).

    `with_target=True` keeps only samples whose 24 target bars are all present; `False` keeps every
    complete input window and sets y to NaN where the future is not known yet.
    The target reads `return_column` (per-bar log return), which need not be a model input.
    """
    feature_columns = tuple(feature_columns)
    if not feature_columns:
        raise ValueError("feature_columns must name at least one column")
    if sequence_length < 1 or horizon < 1:
        raise ValueError("sequence_length and horizon must be >= 1")
    needed = ["ts", *feature_columns, return_column]
    missing = [c for c in needed if c not in features.columns]
    if missing:
        raise ValueError(f"features frame lacks columns {missing}")
    bar_ms = timeframe_ms(timeframe)
    seq, h, nf = sequence_length, horizon, len(feature_columns)

    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    tss: list[np.ndarray] = []
    syms: list[np.ndarray] = []
    for sym, part in _symbol_groups(features):
        ts = part["ts"].cast(pl.Int64).to_numpy()
        n = ts.size
        if n < seq:
            continue
        slots = _grid_slots(ts, bar_ms, sym)
        mat, feat_ok = _valid_matrix(part, feature_columns)
        rets, ret_ok = _valid_matrix(part, [return_column])
        rets = rets[:, 0]

        # Input window ending at row i: rows i-seq+1..i usable and exactly seq-1 grid steps apart.
        ends = np.arange(seq - 1, n)
        feat_cnt = _prefix(feat_ok)
        ok = (slots[ends] - slots[ends - seq + 1] == seq - 1) & (
            feat_cnt[ends + 1] - feat_cnt[ends - seq + 1] == seq
        )

        # Target of row i: rows i+1..i+h carry returns and sit on the next h grid slots.
        has_future = ends + h < n
        fut = np.minimum(ends + h, n - 1)
        ret_cnt = _prefix(ret_ok)
        target_ok = has_future & (slots[fut] - slots[ends] == h) & (ret_cnt[fut + 1] - ret_cnt[ends + 1] == h)
        if with_target:
            ok &= target_ok
        rows = ends[ok]
        if rows.size == 0:
            continue

        # sliding_window_view is a zero-copy view; only the selected windows get materialised.
        view = sliding_window_view(mat.astype(np.float32), (seq, nf))[:, 0]  # [n-seq+1, seq, nf]
        x = view[rows - seq + 1]
        y = np.full(rows.size, np.nan)
        if n > h:
            sq_sums = sliding_window_view(rets**2, h).sum(axis=1)  # sq_sums[j] = Σ r²[j..j+h-1]
            tgt = target_ok[ok]
            y[tgt] = np.sqrt(sq_sums[rows[tgt] + 1])
        xs.append(x)
        ys.append(y)
        tss.append(ts[rows])
        syms.append(np.full(rows.size, sym, dtype=object))

    if not xs:
        return WindowSet(
            X=np.zeros((0, seq, nf), dtype=np.float32),
            y=np.zeros(0),
            ts=np.zeros(0, dtype=np.int64),
            symbol=np.zeros(0, dtype=object),
            feature_columns=feature_columns,
            bar_ms=bar_ms,
            horizon=h,
        )
    return WindowSet(
        X=np.concatenate(xs),
        y=np.concatenate(ys),
        ts=np.concatenate(tss).astype(np.int64),
        symbol=np.concatenate(syms),
        feature_columns=feature_columns,
        bar_ms=bar_ms,
        horizon=h,
    )


def latest_window(
    features: pl.DataFrame,
    feature_columns: Sequence[str],
    timeframe: str = "1h",
    sequence_length: int = SEQUENCE_LENGTH,
) -> WindowSet:
    """The input window ending at each symbol's last bar, for serving (y is NaN).

    Raises InsufficientHistoryError naming the symbol, the last bar, and how many of the
    `sequence_length` bars before it are missing from the grid or unusable.
    """
    feature_columns = tuple(feature_columns)
    missing = [c for c in ("ts", *feature_columns) if c not in features.columns]
    if missing:
        raise ValueError(f"features frame lacks columns {missing}")
    bar_ms = timeframe_ms(timeframe)
    seq = sequence_length
    xs, tss, syms = [], [], []
    for sym, part in _symbol_groups(features):
        label = sym or "frame"
        if part.height == 0:
            continue
        ts = part["ts"].cast(pl.Int64).to_numpy()
        slots = _grid_slots(ts, bar_ms, sym)
        mat, ok = _valid_matrix(part, feature_columns)
        # Count consecutive usable bars backwards from the last one.
        run = 0
        for i in range(ts.size - 1, -1, -1):
            if not ok[i] or (i < ts.size - 1 and slots[i + 1] - slots[i] != 1):
                break
            run += 1
            if run == seq:
                break
        if run < seq:
            raise InsufficientHistoryError(
                f"{label}: the window ending at bar ts={int(ts[-1])} needs {seq} consecutive bars with "
                f"features; only the last {run} are usable, {seq - run} consecutive bars are missing "
                "(a gap in the bar grid, null features, or too little history)"
            )
        xs.append(mat[-seq:].astype(np.float32)[None])
        tss.append(int(ts[-1]))
        syms.append(sym)
    if not xs:
        raise InsufficientHistoryError("the features frame holds no bars")
    return WindowSet(
        X=np.concatenate(xs),
        y=np.full(len(xs), np.nan),
        ts=np.asarray(tss, dtype=np.int64),
        symbol=np.asarray(syms, dtype=object),
        feature_columns=feature_columns,
        bar_ms=bar_ms,
    )


# --------------------------------------------------------------------------------------------------
# Chronological splits.
#
# Invariant (checked by the tests): for consecutive blocks A before B with boundary timestamp c,
#   every sample of A has t + purge_bars·bar_ms < c ≤ every sample t' of B.
# With purge_bars ≥ horizon, the last target bar of any A sample opens before c, so nothing A was
# trained on (inputs or targets) comes from a bar at or after B's first decision time: changing any
# bar with ts ≥ c cannot change a single A input or target. (B's inputs do reach back before c: that
# is history known at B's decision times, not leakage.)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChronoSplit:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    boundaries: tuple[int, int]  # first ts of validation, first ts of test


@dataclass(frozen=True)
class Fold:
    train: np.ndarray
    test: np.ndarray
    test_start_ts: int
    test_end_ts: int  # exclusive


def _cut(sorted_ts: np.ndarray, frac: float) -> int:
    """A timestamp cut so that about `frac` of the (pooled) samples lie before it."""
    pos = min(max(round(frac * sorted_ts.size), 0), sorted_ts.size - 1)
    return int(sorted_ts[pos])


def _before(ts: np.ndarray, boundary: int, purge_bars: int, bar_ms: int) -> np.ndarray:
    return ts + purge_bars * bar_ms < boundary


def chronological_split(
    ts: np.ndarray,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    purge_bars: int = HORIZON_BARS,
    bar_ms: int = HOUR_MS,
) -> ChronoSplit:
    """Train / validation / test index arrays by time, pooled across symbols.

    Cut timestamps are chosen on the pooled sample times (so every symbol is cut at the same instant),
    then samples whose t lies within `purge_bars` bars before a cut are dropped from the earlier block:
    their targets would read bars of the later block.
    """
    ts = np.asarray(ts, dtype=np.int64)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if purge_bars < 0:
        raise ValueError("purge_bars must be >= 0")
    if ts.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ChronoSplit(empty, empty, empty, (0, 0))
    sorted_ts = np.sort(ts)
    c1 = _cut(sorted_ts, fractions[0])
    c2 = _cut(sorted_ts, fractions[0] + fractions[1])
    train = np.flatnonzero(_before(ts, c1, purge_bars, bar_ms))
    validation = np.flatnonzero((ts >= c1) & _before(ts, c2, purge_bars, bar_ms))
    test = np.flatnonzero(ts >= c2)
    return ChronoSplit(train, validation, test, (c1, c2))


def walk_forward_folds(
    ts: np.ndarray,
    n_folds: int = 5,
    min_train_frac: float = 0.5,
    purge_bars: int = HORIZON_BARS,
    bar_ms: int = HOUR_MS,
) -> list[Fold]:
    """Expanding-window folds: fold k trains on everything purged before its test block.

    The samples after the first `min_train_frac` are cut into `n_folds` consecutive test blocks of
    about equal size (time order); their union covers that whole tail exactly once, so pooled
    out-of-sample losses form one continuous series.
    """
    ts = np.asarray(ts, dtype=np.int64)
    if n_folds < 1:
        raise ValueError("n_folds must be >= 1")
    if not 0.0 < min_train_frac < 1.0:
        raise ValueError("min_train_frac must be in (0, 1)")
    if ts.size == 0:
        return []
    sorted_ts = np.sort(ts)
    step = (1.0 - min_train_frac) / n_folds
    starts = [_cut(sorted_ts, min_train_frac + k * step) for k in range(n_folds)]
    ends = [*starts[1:], int(sorted_ts[-1]) + 1]
    folds = []
    for start, end in zip(starts, ends, strict=True):
        if end <= start:
            continue  # several cuts fell on one timestamp: too few distinct times for that many folds
        train = np.flatnonzero(_before(ts, start, purge_bars, bar_ms))
        test = np.flatnonzero((ts >= start) & (ts < end))
        folds.append(Fold(train, test, start, end))
    return folds
