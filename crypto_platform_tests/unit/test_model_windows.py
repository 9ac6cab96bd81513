"""Windows, targets and time splits: hand-checked targets, gaps, and the no-leakage guarantees."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.model.windows import (
    HORIZON_BARS,
    SEQUENCE_LENGTH,
    InsufficientHistoryError,
    WindowSet,
    build_windows,
    chronological_split,
    latest_window,
    walk_forward_folds,
)

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS


def frame(slots, a, log_ret, symbol: str | None = None) -> pl.DataFrame:
    data = {"ts": [T0 + s * HOUR_MS for s in slots], "a": a, "log_ret": log_ret}
    out = pl.DataFrame(data, schema={"ts": pl.Int64, "a": pl.Float64, "log_ret": pl.Float64})
    return out.with_columns(pl.lit(symbol).alias("symbol")) if symbol else out


def random_frame(rng: np.random.Generator, symbols=("BTC/USDT", "ETH/USDT"), n=600, holes=6, nulls=6):
    """Several symbols on an hourly grid with random outage holes and random null feature cells."""
    parts = []
    for k, sym in enumerate(symbols):
        slots = np.arange(n) + 5 * k  # symbols start at different times
        keep = np.ones(n, bool)
        for start in rng.integers(0, n - 40, holes):
            keep[start : start + rng.integers(1, 34)] = False
        slots = slots[keep]
        a = rng.standard_normal(slots.size)
        r = rng.standard_normal(slots.size) * 0.01
        a[rng.integers(0, slots.size, nulls)] = np.nan
        r[rng.integers(0, slots.size, nulls)] = np.nan
        part = frame(slots, a, r, sym).with_columns(
            pl.col("a").fill_nan(None), pl.col("log_ret").fill_nan(None)
        )
        parts.append(part)
    return pl.concat(parts)


def brute_force(features: pl.DataFrame, seq: int, h: int, with_target: bool) -> dict:
    """Sample key → (X, y) by walking the grid bar by bar: the specification, written plainly."""
    out = {}
    for (sym,), part in features.group_by("symbol"):
        rows = {int(t): (a, r) for t, a, r in part.select("ts", "a", "log_ret").iter_rows()}
        for t in rows:
            inputs = [rows.get(t - j * HOUR_MS) for j in range(seq - 1, -1, -1)]
            if any(b is None or b[0] is None or b[1] is None for b in inputs):
                continue
            future = [rows.get(t + j * HOUR_MS) for j in range(1, h + 1)]
            complete = all(b is not None and b[1] is not None for b in future)
            if with_target and not complete:
                continue
            y = np.sqrt(sum(b[1] ** 2 for b in future)) if complete else np.nan
            out[(sym, t)] = (np.array([[b[0], b[1]] for b in inputs], dtype=np.float32), y)
    return out


def test_defaults_match_the_model_contract():
    assert (SEQUENCE_LENGTH, HORIZON_BARS) == (48, 24)


def test_hand_checked_tiny_series():
    r = [0.0, 0.1, -0.2, 0.3, 0.0, -0.1, 0.2, 0.4, -0.3, 0.5]
    w = build_windows(frame(range(10), list(range(10)), r), ["a"], sequence_length=3, horizon=2)
    # bar t needs bars t-2..t for its input and t+1, t+2 for its target: t = 2..7
    assert w.ts.tolist() == [T0 + s * HOUR_MS for s in range(2, 8)]
    assert w.X.dtype == np.float32 and w.X.shape == (6, 3, 1)
    assert w.X[0, :, 0].tolist() == [0.0, 1.0, 2.0]
    assert w.X[-1, :, 0].tolist() == [5.0, 6.0, 7.0]
    expected = [np.sqrt(0.3**2 + 0.0**2), np.sqrt(0.0 + 0.1**2), np.sqrt(0.1**2 + 0.2**2)]
    np.testing.assert_allclose(w.y[:3], expected, rtol=1e-12)
    np.testing.assert_allclose(w.y[-1], np.sqrt(0.3**2 + 0.5**2), rtol=1e-12)
    assert w.target_end_ts.tolist() == [t + 2 * HOUR_MS for t in w.ts.tolist()]


def test_windows_never_straddle_a_gap():
    slots = [s for s in range(12) if s != 5]  # one missing hour after slot 4
    r = np.linspace(0.01, 0.12, 11).tolist()
    w = build_windows(frame(slots, r, r), ["a"], sequence_length=3, horizon=2)
    # before the hole only t=2 has slots t-2..t+2; after it, t=8 and t=9
    assert ((w.ts - T0) // HOUR_MS).tolist() == [2, 8, 9]
    inputs_only = build_windows(frame(slots, r, r), ["a"], sequence_length=3, horizon=2, with_target=False)
    assert ((inputs_only.ts - T0) // HOUR_MS).tolist() == [2, 3, 4, 8, 9, 10, 11]
    assert np.isnan(inputs_only.y).tolist() == [False, True, True, False, False, True, True]


def test_null_features_and_returns_break_windows():
    a = [1.0] * 10
    a[4] = None
    r = [0.01] * 10
    r[8] = None
    w = build_windows(frame(range(10), a, r), ["a"], sequence_length=3, horizon=2, with_target=False)
    # inputs need a at t-2..t (slot 4 null): t in {2, 3, 7, 8, 9}; the target reads log_ret only
    assert ((w.ts - T0) // HOUR_MS).tolist() == [2, 3, 7, 8, 9]
    # targets of t=7, 8 read the null return of bar 8; t=8, 9 also run past the last bar
    assert np.isnan(w.y).tolist() == [False, False, True, True, True]


def test_vectorised_windows_equal_a_bar_by_bar_walk():
    rng = np.random.default_rng(3)
    features = random_frame(rng)
    for with_target in (True, False):
        w = build_windows(features, ["a", "log_ret"], sequence_length=7, horizon=4, with_target=with_target)
        expected = brute_force(features, 7, 4, with_target)
        got = {(s, int(t)): i for i, (s, t) in enumerate(zip(w.symbol, w.ts, strict=True))}
        assert set(got) == set(expected) and len(got) == len(w)
        for key, i in got.items():
            x, y = expected[key]
            np.testing.assert_array_equal(w.X[i], x)
            np.testing.assert_allclose(w.y[i], y, rtol=1e-12)
    assert len(w) > 500  # the random holes still leave plenty of samples


def test_rejects_misaligned_and_duplicate_bars():
    with pytest.raises(ValueError, match="aligned"):
        skewed = frame(range(3), [1.0] * 3, [0.0] * 3).with_columns(pl.col("ts") + pl.Series([0, 0, 60_000]))
        build_windows(skewed, ["a"], sequence_length=2, horizon=1)
    dup = pl.concat([frame(range(5), [1.0] * 5, [0.0] * 5), frame([3], [1.0], [0.0])])
    with pytest.raises(ValueError, match="duplicate"):
        build_windows(dup, ["a"], sequence_length=2, horizon=1)
    with pytest.raises(ValueError, match="lacks columns"):
        build_windows(frame(range(5), [1.0] * 5, [0.0] * 5), ["b"])


def test_window_set_take_and_column_access():
    w = build_windows(
        frame(range(10), list(range(10)), [0.01] * 10), ["a", "log_ret"], sequence_length=3, horizon=2
    )
    sub = w.take([1, 3])
    assert sub.ts.tolist() == [w.ts[1], w.ts[3]] and sub.feature_columns == ("a", "log_ret")
    assert sub.last("a").tolist() == [3.0, 5.0]
    assert sub.column("a").tolist() == [[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]
    with pytest.raises(KeyError, match="realized_vol_720"):
        w.column("realized_vol_720")


def test_latest_window_for_serving():
    rng = np.random.default_rng(5)
    r = (rng.standard_normal(60) * 0.01).tolist()
    features = frame(range(60), r, r, "BTC/USDT")
    latest = latest_window(features, ["a", "log_ret"], sequence_length=10)
    every = build_windows(features, ["a", "log_ret"], sequence_length=10, with_target=False)
    assert latest.ts.tolist() == [every.ts[-1]] and np.isnan(latest.y).all()
    np.testing.assert_array_equal(latest.X[0], every.X[-1])

    holed = frame([s for s in range(60) if s != 55], r[:59], r[:59], "BTC/USDT")
    with pytest.raises(
        InsufficientHistoryError, match=r"BTC/USDT.*only the last 4 are usable, 6 consecutive"
    ):
        latest_window(holed, ["a"], sequence_length=10)


# --------------------------------------------------------------------------- splits


def sample_times(rng: np.random.Generator) -> np.ndarray:
    """Pooled sample times of three symbols starting at different hours, in no particular order."""
    ts = np.concatenate([T0 + (np.arange(2000) + 300 * k) * HOUR_MS for k in range(3)])
    return rng.permutation(ts)


def assert_purged(earlier: np.ndarray, later: np.ndarray, ts: np.ndarray, horizon: int) -> None:
    """The invariant: every bar an earlier sample reads (inputs ≤ t, targets ≤ t + horizon bars)
    opens strictly before the first decision time t' of the later block."""
    assert ts[earlier].max() + horizon * HOUR_MS < ts[later].min()


def test_chronological_split_blocks_are_disjoint_and_purged():
    ts = sample_times(np.random.default_rng(0))
    split = chronological_split(ts, purge_bars=24, bar_ms=HOUR_MS)
    blocks = [split.train, split.validation, split.test]
    assert sum(len(b) for b in blocks) == len(np.unique(np.concatenate(blocks)))
    assert_purged(split.train, split.validation, ts, 24)
    assert_purged(split.validation, split.test, ts, 24)
    c1, c2 = split.boundaries
    assert ts[split.validation].min() == c1 and ts[split.test].min() == c2
    # the only samples left out are the purged ones: 24 hours × 3 symbols before each cut
    assert len(ts) - sum(len(b) for b in blocks) == 2 * 24 * 3
    assert abs(len(split.train) / len(ts) - 0.7) < 0.02 and abs(len(split.test) / len(ts) - 0.15) < 0.01


def test_without_purge_the_last_training_targets_reach_into_validation():
    """The purge is what makes the invariant hold (so the test above can fail)."""
    ts = sample_times(np.random.default_rng(0))
    split = chronological_split(ts, purge_bars=0, bar_ms=HOUR_MS)
    assert ts[split.train].max() + 24 * HOUR_MS >= ts[split.validation].min()


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        chronological_split(np.arange(10), fractions=(0.8, 0.3, 0.1))


@pytest.mark.parametrize("purge_bars, leaks", [(HORIZON_BARS, False), (0, True)])
def test_perturbing_bars_after_a_cut_changes_nothing_before_it(purge_bars, leaks):
    """Rebuild features, windows and the split after scrambling every bar at or after a cut: the
    earlier blocks' inputs and targets are bit-identical (and, without the purge, they are not)."""
    from crypto_platform.lib.features import MODEL_FEATURES, compute_features

    rng = np.random.default_rng(11)
    n = 1500
    closes = 100 * np.exp(np.cumsum(rng.standard_normal(n) * 0.01))
    bars = pl.DataFrame(
        {
            "ts": T0 + np.arange(n, dtype=np.int64) * HOUR_MS,
            "open": closes,
            "high": closes * 1.01,
            "low": closes * 0.99,
            "close": closes,
            "volume": rng.uniform(1, 10, n),
        }
    )
    columns = list(MODEL_FEATURES)
    base = build_windows(compute_features(bars), columns)
    split = chronological_split(base.ts, purge_bars=purge_bars)
    for cut, before in (
        (split.boundaries[0], split.train),
        (split.boundaries[1], np.r_[split.train, split.validation]),
    ):
        after = pl.col("ts") >= cut
        noisy = bars.with_columns(
            *(
                pl.when(after).then(pl.col(c) * 1.7).otherwise(pl.col(c)).alias(c)
                for c in ("open", "high", "low", "close")
            ),
            pl.when(after).then(pl.col("volume") * 3).otherwise(pl.col("volume")).alias("volume"),
        )
        moved = build_windows(compute_features(noisy), columns)
        assert np.array_equal(moved.ts, base.ts)  # same grid, same sample set
        same = np.array_equal(moved.X[before], base.X[before]) and np.array_equal(
            moved.y[before], base.y[before]
        )
        assert same != leaks


def test_walk_forward_folds_expand_in_time_order():
    ts = sample_times(np.random.default_rng(1))
    folds = walk_forward_folds(ts, n_folds=4, min_train_frac=0.5, purge_bars=24, bar_ms=HOUR_MS)
    assert len(folds) == 4
    starts = [f.test_start_ts for f in folds]
    assert starts == sorted(starts)
    for prev, fold in itertools.pairwise(folds):
        assert set(prev.train) < set(fold.train)  # expanding
        assert prev.test_end_ts == fold.test_start_ts
    for fold in folds:
        assert_purged(fold.train, fold.test, ts, 24)
        assert ts[fold.test].min() >= fold.test_start_ts and ts[fold.test].max() < fold.test_end_ts
    tested = np.concatenate([f.test for f in folds])
    assert len(tested) == len(np.unique(tested))
    assert set(tested) == set(np.flatnonzero(ts >= folds[0].test_start_ts))
    assert abs(len(folds[0].train) / len(ts) - 0.5) < 0.02


def test_empty_inputs_give_empty_results():
    assert walk_forward_folds(np.zeros(0, dtype=np.int64)) == []
    split = chronological_split(np.zeros(0, dtype=np.int64))
    assert split.train.size == split.validation.size == split.test.size == 0
    w = build_windows(frame(range(3), [1.0] * 3, [0.0] * 3), ["a"])
    assert isinstance(w, WindowSet) and len(w) == 0 and w.X.shape == (0, 48, 1)
