"""Feature computation: polars `compute_features` against the same features in pandas, in one run.

Contenders, all producing the same numbers (asserted on a small sample before anything is timed):
- `polars`: `crypto_platform.lib.features.compute_features`, the function the platform uses.
- `pandas_groupby`: the brief's "pandas written well": each symbol reindexed onto its regular time grid
  (one vectorised `reindex`), then `groupby(...).transform` with vectorised `rolling` / `ewm` per symbol.
- `pandas_masked`: a pandas port of the polars algorithm itself (flat rolling over the sorted frame, one
  run-length mask for gaps and symbol boundaries, no groupby), so the ratio against it isolates the
  engine from the algorithm.
- `naive_seed`: the seed project's style: `groupby().apply` with a Python loop over rows that slices a
  window per row and per feature. Far too slow for 10M rows, so it is timed on a documented subset and
  extrapolated linearly (it is O(rows); reported with `"extrapolated": true`).

Data: numpy random walks, `--symbols` symbols × (`--rows` / symbols) hourly bars, with a few outage holes
cut out of every symbol so that the gap handling is exercised. Prints one JSON object.

    .venv/bin/python benchmarks/features.py                 # 10M rows × 100 symbols
    .venv/bin/python benchmarks/features.py --rows 1000000  # scaled down
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import polars as pl

from crypto_platform.lib import features as F
from crypto_platform.lib.market.timeframes import timeframe_ms

BAR_MS = timeframe_ms("1h")
COLUMNS = list(F.FEATURE_COLUMNS)
_A = 1.0 - F.RSI_ALPHA
_DECAY = _A**F.RSI_WINDOW


def simulate(rows: int, symbols: int, seed: int = 7, holes_per_symbol: int = 4) -> pl.DataFrame:
    """Random-walk OHLCV for `symbols` pairs, `rows` bars in all before the holes are cut."""
    rng = np.random.default_rng(seed)
    per = rows // symbols
    steps = rng.normal(0.0, 0.01, (symbols, per))
    start = rng.uniform(0.5, 50_000.0, (symbols, 1))
    close = start * np.exp(np.cumsum(steps, axis=1))
    open_ = np.concatenate([start, close[:, :-1]], axis=1)
    wick = np.exp(np.abs(rng.normal(0.0, 0.004, (2, symbols, per))))
    keep = np.ones((symbols, per), dtype=bool)
    for s in range(symbols):
        for at in rng.integers(per // 10, per - 1, holes_per_symbol):
            keep[s, at : at + rng.integers(1, 34)] = False  # outages of 1–33 bars, like Binance's
    ts = np.broadcast_to(1_500_000_000_000 // BAR_MS * BAR_MS + np.arange(per) * BAR_MS, (symbols, per))
    names = np.broadcast_to(np.array([f"SYM{s:03d}/USDT" for s in range(symbols)])[:, None], (symbols, per))
    return pl.DataFrame(
        {
            "symbol": names[keep],
            "ts": ts[keep],
            "open": open_[keep],
            "high": (np.maximum(open_, close) * wick[0])[keep],
            "low": (np.minimum(open_, close) / wick[1])[keep],
            "close": close[keep],
            "volume": rng.lognormal(3.0, 1.0, (symbols, per))[keep],
        }
    )


# ---------------------------------------------------------------------------------------------------
# pandas, the brief's way: reindex onto the grid, groupby().transform with rolling / ewm per symbol


def pandas_groupby(bars: pd.DataFrame) -> pd.DataFrame:
    bars = bars.sort_values(["symbol", "ts"], kind="stable")
    first = bars.groupby("symbol", sort=False)["ts"].agg(["min", "max"])
    lengths = ((first["max"] - first["min"]) // BAR_MS + 1).to_numpy()
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    grid = pd.MultiIndex.from_arrays(
        [
            np.repeat(first.index.to_numpy(), lengths),
            np.repeat(first["min"].to_numpy(), lengths) + offsets * BAR_MS,
        ],
        names=["symbol", "ts"],
    )
    full = bars.assign(present=1.0).set_index(["symbol", "ts"]).reindex(grid)
    present = full["present"].notna().to_numpy()
    c = full["close"].where(np.isfinite(full["close"]) & (full["close"] > 0))
    h = full["high"].where(full["high"] > 0)
    lo = full["low"].where(full["low"] > 0)
    v = full["volume"].where(full["volume"] >= 0)
    by = grid.get_level_values(0)

    def per_symbol(series: pd.Series, fn: Callable[[pd.Series], pd.Series]) -> pd.Series:
        return series.groupby(by, sort=False).transform(fn)

    prev = per_symbol(c, lambda s: s.shift(1))
    out = pd.DataFrame(index=grid)
    out["ret"] = c / prev - 1.0
    out["log_ret"] = np.log(c / prev)
    out["vol24"] = per_symbol(out["ret"], lambda s: s.rolling(24).std())
    out["sma12"] = per_symbol(c, lambda s: s.rolling(12).mean())
    out["sma48"] = per_symbol(c, lambda s: s.rolling(48).mean())
    out["log_volume"] = np.log(v + 1.0)
    r2 = out["log_ret"] ** 2
    out["realized_vol_24"] = np.sqrt(per_symbol(r2, lambda s: s.rolling(24).sum()).clip(lower=0))
    out["realized_vol_168"] = np.sqrt(per_symbol(r2, lambda s: s.rolling(168).sum()).clip(lower=0) * 24 / 168)
    out["realized_vol_720"] = np.sqrt(per_symbol(r2, lambda s: s.rolling(720).sum()).clip(lower=0) * 24 / 720)
    complete = (
        per_symbol(c.notna().astype(float), lambda s: s.rolling(F.RSI_WINDOW + 1).sum()) == F.RSI_WINDOW + 1
    )
    change = c - prev
    ewm = [
        per_symbol(x.clip(lower=0).fillna(0.0), lambda s: s.ewm(alpha=F.RSI_ALPHA, adjust=False).mean())
        for x in (change, -change)
    ]
    windowed = [e - _DECAY * per_symbol(e, lambda s: s.shift(F.RSI_WINDOW)) for e in ewm]
    out["rsi_14"] = _rsi_from_parts(*windowed, ewm[0] + ewm[1]).where(complete)
    mid = per_symbol(c, lambda s: s.rolling(F.BB_WINDOW).mean())
    sd = per_symbol(c, lambda s: s.rolling(F.BB_WINDOW).std(ddof=0))
    out["bb_pct_b"], out["bb_width"] = _bollinger(c, mid, sd)
    for n in (12, 24):
        whole = per_symbol(c.notna().astype(float), lambda s, n=n: s.rolling(n + 1).sum()) == n + 1
        out[f"momentum_{n}"] = np.log(c / per_symbol(c, lambda s, n=n: s.shift(n))).where(whole)
    out["hl_range"] = np.log(h / lo).where(h >= lo)
    lv_prev = per_symbol(out["log_volume"], lambda s: s.shift(1))
    lv_mean = per_symbol(lv_prev, lambda s: s.rolling(24).mean())
    lv_sd = per_symbol(lv_prev, lambda s: s.rolling(24).std())
    out["volume_z_24"] = _zscore(out["log_volume"], lv_mean, lv_sd)
    return out[COLUMNS][present].reset_index()


# ---------------------------------------------------------------------------------------------------
# pandas port of the polars algorithm: flat rolling over the sorted rows + one run-length mask


def pandas_masked(bars: pd.DataFrame) -> pd.DataFrame:
    bars = bars.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    c = bars["close"].where(np.isfinite(bars["close"]) & (bars["close"] > 0))
    h = bars["high"].where(bars["high"] > 0)
    lo = bars["low"].where(bars["low"] > 0)
    v = bars["volume"].where(bars["volume"] >= 0)
    sym = bars["symbol"].to_numpy()
    ts = bars["ts"].to_numpy()
    ok = c.notna().to_numpy()
    linked = np.zeros(len(bars), dtype=bool)
    linked[1:] = (sym[1:] == sym[:-1]) & (np.diff(ts) == BAR_MS) & ok[1:] & ok[:-1]
    index = np.arange(len(bars))
    run_start = np.maximum.accumulate(np.where(linked, 0, index))
    run = np.where(ok, index - run_start, -1)

    def window(values: pd.Series, n_bars: int) -> pd.Series:
        return values.where(run >= n_bars - 1)

    prev = c.shift(1)
    out = bars[["symbol", "ts"]].copy()
    out["ret"] = window(c / prev - 1.0, 2)
    out["log_ret"] = window(np.log(c / prev), 2)
    out["vol24"] = window(out["ret"].fillna(0.0).rolling(24).std(), 25)
    out["sma12"] = window(c.rolling(12).mean(), 12)
    out["sma48"] = window(c.rolling(48).mean(), 48)
    out["log_volume"] = np.log(v + 1.0)
    r2 = out["log_ret"].fillna(0.0) ** 2
    out["realized_vol_24"] = window(np.sqrt(r2.rolling(24).sum().clip(lower=0)), 25)
    out["realized_vol_168"] = window(np.sqrt(r2.rolling(168).sum().clip(lower=0) * 24 / 168), 169)
    out["realized_vol_720"] = window(np.sqrt(r2.rolling(720).sum().clip(lower=0) * 24 / 720), 721)
    change = c - prev
    ewm = [x.clip(lower=0).fillna(0.0).ewm(alpha=F.RSI_ALPHA, adjust=False).mean() for x in (change, -change)]
    windowed = [e - _DECAY * e.shift(F.RSI_WINDOW) for e in ewm]
    out["rsi_14"] = window(_rsi_from_parts(*windowed, ewm[0] + ewm[1]), F.RSI_WINDOW + 1)
    mid = window(c.rolling(F.BB_WINDOW).mean(), F.BB_WINDOW)
    out["bb_pct_b"], out["bb_width"] = _bollinger(c, mid, c.rolling(F.BB_WINDOW).std(ddof=0))
    out["momentum_12"] = window(np.log(c / c.shift(12)), 13)
    out["momentum_24"] = window(np.log(c / c.shift(24)), 25)
    out["hl_range"] = np.log(h / lo).where(h >= lo)
    lv_prev = out["log_volume"].shift(1)
    lv_mean = window(lv_prev.rolling(24).mean(), 25)
    out["volume_z_24"] = _zscore(out["log_volume"], lv_mean, lv_prev.rolling(24).std())
    return out


def _rsi_from_parts(gains: pd.Series, losses: pd.Series, level: pd.Series) -> pd.Series:
    noise = F.RSI_NOISE_REL * level
    gains = gains.where(gains > noise, 0.0)
    losses = losses.where(losses > noise, 0.0)
    rsi = (100.0 * gains / (gains + losses)).where(losses != 0.0, np.where(gains == 0.0, 50.0, 100.0))
    return rsi.where(gains.notna() & losses.notna())


def _bollinger(c: pd.Series, mid: pd.Series, sd: pd.Series) -> tuple[pd.Series, pd.Series]:
    flat = sd <= F.FLAT_REL * mid
    band = 2.0 * F.BB_K * sd
    pct_b = ((c - mid + F.BB_K * sd) / band).where(~flat, 0.5).where(mid.notna() & sd.notna())
    width = (band / mid).where(~flat, 0.0).where(mid.notna() & sd.notna())
    return pct_b, width


def _zscore(x: pd.Series, mean: pd.Series, sd: pd.Series) -> pd.Series:
    scale = F.FLAT_REL * (1.0 + mean.abs())
    flat = sd <= scale
    z = ((x - mean) / sd).where(~flat)
    return z.where(~(flat & ((x - mean).abs() <= scale)), 0.0).where(mean.notna() & sd.notna())


# ---------------------------------------------------------------------------------------------------
# the seed's style: groupby().apply, a Python loop over rows, a window sliced per row and per feature


def naive_seed(bars: pd.DataFrame) -> pd.DataFrame:
    parts = [_naive_symbol(group) for _, group in bars.sort_values(["symbol", "ts"]).groupby("symbol")]
    return pd.concat(parts, ignore_index=True)


def _naive_symbol(g: pd.DataFrame) -> pd.DataFrame:
    ts = g["ts"].to_numpy()
    c, h, lo, v = (g[k].to_numpy() for k in ("close", "high", "low", "volume"))
    n = len(g)
    lv = np.log(v + 1.0)
    rsi_w = _A ** np.arange(F.RSI_WINDOW)[::-1]
    rows = []
    for i in range(n):

        def whole(k: int, i: int = i) -> bool:  # the k bars ending at i are contiguous
            return i >= k - 1 and ts[i] - ts[i - k + 1] == (k - 1) * BAR_MS

        def rets(k: int, i: int = i) -> np.ndarray:
            return c[i - k + 1 : i + 1] / c[i - k : i] - 1.0

        def logrets(k: int, i: int = i) -> np.ndarray:
            return np.log(c[i - k + 1 : i + 1] / c[i - k : i])

        row: dict[str, float] = dict.fromkeys(COLUMNS, np.nan)
        row["log_volume"] = lv[i]
        row["hl_range"] = np.log(h[i] / lo[i])
        if whole(2):
            row["ret"] = rets(1)[0]
            row["log_ret"] = logrets(1)[0]
        if whole(25):
            row["vol24"] = np.std(rets(24), ddof=1)
            row["realized_vol_24"] = np.sqrt(np.sum(logrets(24) ** 2))
            row["momentum_24"] = np.log(c[i] / c[i - 24])
            base = lv[i - 24 : i]
            row["volume_z_24"] = (lv[i] - base.mean()) / base.std(ddof=1)
        if whole(12):
            row["sma12"] = np.mean(c[i - 11 : i + 1])
        if whole(13):
            row["momentum_12"] = np.log(c[i] / c[i - 12])
        if whole(48):
            row["sma48"] = np.mean(c[i - 47 : i + 1])
        if whole(F.BB_WINDOW):
            win = c[i - F.BB_WINDOW + 1 : i + 1]
            mid, sd = win.mean(), win.std()
            flat = sd <= F.FLAT_REL * mid
            row["bb_pct_b"] = 0.5 if flat else (c[i] - mid + F.BB_K * sd) / (2 * F.BB_K * sd)
            row["bb_width"] = 0.0 if flat else 2 * F.BB_K * sd / mid
        if whole(F.RV_MONTH + 1):
            row["realized_vol_720"] = np.sqrt(np.sum(logrets(F.RV_MONTH) ** 2) * 24 / F.RV_MONTH)
        if whole(F.RSI_WINDOW + 1):
            row["realized_vol_168"] = np.sqrt(np.sum(logrets(168) ** 2) * 24 / 168)
            d = np.diff(c[i - F.RSI_WINDOW : i + 1])
            gains, losses = np.sum(rsi_w * np.maximum(d, 0)), np.sum(rsi_w * np.maximum(-d, 0))
            row["rsi_14"] = 100.0 * gains / (gains + losses) if gains + losses > 0 else 50.0
        rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS)
    out.insert(0, "ts", ts)
    out.insert(0, "symbol", g["symbol"].to_numpy())
    return out


# ---------------------------------------------------------------------------------------------------


def assert_same(reference: pl.DataFrame, other: pd.DataFrame, name: str, rtol: float = 1e-9) -> None:
    """Every feature equal to `reference` (polars) within rtol, with the same rows undefined."""
    other = other.sort_values(["symbol", "ts"]).reset_index(drop=True)
    assert len(other) == reference.height, f"{name}: {len(other)} rows, polars {reference.height}"
    assert (other["ts"].to_numpy() == reference["ts"].to_numpy()).all(), f"{name}: rows differ"
    for col in COLUMNS:
        ref = reference[col].to_numpy().astype(float)  # null → nan
        got = other[col].to_numpy(dtype=float)
        same_missing = np.isnan(ref) == np.isnan(got)
        assert same_missing.all(), f"{name}.{col}: {int((~same_missing).sum())} rows defined differently"
        ok = ~np.isnan(ref)
        np.testing.assert_allclose(got[ok], ref[ok], rtol=rtol, atol=1e-9 * 100, err_msg=f"{name}.{col}")


def timed(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="bars in all (before the holes)")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1, help="best of N for each contender")
    parser.add_argument("--naive-rows", type=int, default=20_000, help="subset size the naive style runs on")
    args = parser.parse_args()

    # Correctness first, on a small sample with holes: all four must agree before any timing counts.
    sample = simulate(3 * 4_000, 3, seed=11)
    reference = F.compute_features(sample)
    sample_pd = sample.to_pandas()
    for name, fn in (
        ("pandas_groupby", pandas_groupby),
        ("pandas_masked", pandas_masked),
        ("naive_seed", naive_seed),
    ):
        assert_same(reference, fn(sample_pd), name)

    bars = simulate(args.rows, args.symbols)
    bars_pd = bars.to_pandas()
    seconds = {
        "polars": timed(lambda: F.compute_features(bars), args.repeat),
        "pandas_groupby": timed(lambda: pandas_groupby(bars_pd), args.repeat),
        "pandas_masked": timed(lambda: pandas_masked(bars_pd), args.repeat),
    }
    # The naive style on the first symbols' first bars, scaled up by row count (it is linear in rows).
    per_symbol = max(1, args.naive_rows // 2)
    first_two = bars["symbol"].unique(maintain_order=True).head(2).to_list()
    subset = (
        bars.filter(pl.col("symbol").is_in(first_two))
        .group_by("symbol", maintain_order=True)
        .head(per_symbol)
    )
    naive_subset_s = timed(lambda: naive_seed(subset.to_pandas()), 1)
    seconds["naive_seed"] = naive_subset_s * bars.height / subset.height

    best_pandas = min(("pandas_groupby", "pandas_masked"), key=seconds.__getitem__)
    print(
        json.dumps(
            {
                "benchmark": "features",
                "rows": bars.height,
                "symbols": args.symbols,
                "features": len(COLUMNS),
                "repeat": args.repeat,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "polars": pl.__version__,
                "pandas": pd.__version__,
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "rows_per_second_polars": round(bars.height / seconds["polars"]),
                "naive_seed": {
                    "extrapolated": True,
                    "measured_rows": subset.height,
                    "measured_seconds": round(naive_subset_s, 3),
                },
                "best_pandas": best_pandas,
                "speedup_vs_best_pandas": round(seconds[best_pandas] / seconds["polars"], 2),
                "speedup_vs_pandas_groupby": round(seconds["pandas_groupby"] / seconds["polars"], 2),
                "speedup_vs_pandas_masked": round(seconds["pandas_masked"] / seconds["polars"], 2),
                "speedup_vs_naive_seed": round(seconds["naive_seed"] / seconds["polars"], 1),
                "checked_equal_on_sample_rows": reference.height,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
