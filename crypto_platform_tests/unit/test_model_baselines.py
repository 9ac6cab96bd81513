"""Volatility baselines: hand-checked recursions, parameter recovery on simulated data, causality,
and a real-data sanity check on BTC/USDT 2023–2024."""

from __future__ import annotations

import gzip
import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.model.baselines import (
    BASELINE_NAMES,
    BASELINES,
    EWMA_LAMBDA_GRID,
    EWMABaseline,
    ExpandingMeanBaseline,
    GARCHBaseline,
    HARBaseline,
    NaiveBaseline,
    NotFittedError,
    fit_all,
)
from crypto_platform.lib.model.evaluation import evaluate_forecasts
from crypto_platform.lib.model.metrics import qlike
from crypto_platform.lib.model.windows import WindowSet, build_windows, chronological_split

COLUMNS = ("log_ret", "realized_vol_24", "realized_vol_168", "realized_vol_720")
T0 = 1_600_000_000_000 - 1_600_000_000_000 % HOUR_MS


def with_rv_features(frame: pl.DataFrame, windows: tuple[int, ...] = (24, 168, 720)) -> pl.DataFrame:
    """The realized-vol columns the baselines read, as lib.features defines them (24-bar units)."""
    keys = ["symbol"] if "symbol" in frame.columns else []
    r2 = pl.col("log_ret") ** 2

    def rv(n: int) -> pl.Expr:
        total = r2.rolling_sum(n)
        return ((total.over(keys) if keys else total) * (24 / n)).sqrt().alias(f"realized_vol_{n}")

    return frame.with_columns(rv(n) for n in windows)


def simulate_garch(rng, n, omega=0.02, alpha=0.07, beta=0.9) -> np.ndarray:
    """Log returns of a GARCH(1,1) with parameters in percent² (as the baseline fits them)."""
    var = omega / (1 - alpha - beta)
    out = np.empty(n)
    for i in range(n):
        out[i] = math.sqrt(var) * rng.standard_normal()
        var = omega + alpha * out[i] ** 2 + beta * var
    return out / 100.0


def garch_features(seed: int, symbols=("BTC/USDT", "SOL/USDT"), n=4000, **params) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [
        pl.DataFrame(
            {
                "symbol": sym,
                "ts": T0 + np.arange(n, dtype=np.int64) * HOUR_MS,
                "log_ret": simulate_garch(rng, n, **params)
                * (1 + k),  # the second symbol is twice as volatile
            }
        )
        for k, sym in enumerate(symbols)
    ]
    return with_rv_features(pl.concat(parts))


@pytest.fixture(scope="module")
def sim_split() -> tuple[WindowSet, WindowSet]:
    w = build_windows(garch_features(1), COLUMNS)
    split = chronological_split(w.ts, purge_bars=24)
    return w.take(split.train), w.take(split.test)


def tiny_windows(log_ret, rv168_first, y=None) -> WindowSet:
    """One or more 3-bar windows with just log_ret and realized_vol_168 (hand-checkable recursions)."""
    log_ret = np.atleast_2d(np.asarray(log_ret, dtype=np.float32))
    n = log_ret.shape[0]
    X = np.zeros((n, log_ret.shape[1], 2), dtype=np.float32)
    X[:, :, 0] = log_ret
    X[:, 0, 1] = rv168_first
    return WindowSet(
        X=X,
        y=np.full(n, np.nan) if y is None else np.asarray(y, dtype=np.float64),
        ts=np.arange(n, dtype=np.int64) * HOUR_MS,
        symbol=np.array(["BTC/USDT"] * n, dtype=object),
        feature_columns=("log_ret", "realized_vol_168"),
    )


def test_registry_names_every_baseline():
    assert set(BASELINES) == BASELINE_NAMES == {"naive", "expanding_mean", "ewma", "har", "garch"}


def test_naive_is_the_last_24_bars_realized_vol(sim_split):
    _, test = sim_split
    by_hand = np.sqrt((test.column("log_ret")[:, -24:] ** 2).sum(axis=1))
    np.testing.assert_allclose(NaiveBaseline().fit(test).predict(test), by_hand, rtol=1e-5)


def test_expanding_mean_is_per_symbol_training_rms(sim_split):
    train, test = sim_split
    model = ExpandingMeanBaseline().fit(train)
    pred = model.predict(test)
    for sym in ("BTC/USDT", "SOL/USDT"):
        rms = np.sqrt(np.mean(train.y[train.symbol == sym] ** 2))
        assert np.all(pred[test.symbol == sym] == rms)
    assert model.params()["per_symbol_vol"]["SOL/USDT"] > 1.5 * model.params()["per_symbol_vol"]["BTC/USDT"]
    unseen = test.take([0])
    unseen = WindowSet(
        unseen.X, unseen.y, unseen.ts, np.array(["XRP/USDT"], dtype=object), unseen.feature_columns
    )
    assert model.predict(unseen)[0] == pytest.approx(np.sqrt(np.mean(train.y**2)))


def test_ewma_recursion_by_hand():
    # seed: realized_vol_168 = √(24·0.0004) → per-bar variance 0.0004, then returns 0.03 and −0.01
    w = tiny_windows([[0.5, 0.03, -0.01]], math.sqrt(24 * 0.0004))
    step1 = 0.9 * 0.0004 + 0.1 * 0.03**2
    step2 = 0.9 * step1 + 0.1 * 0.01**2
    assert EWMABaseline(lam=0.9).predict(w)[0] == pytest.approx(math.sqrt(24 * step2), rel=1e-6)


def test_ewma_lambda_is_tuned_by_training_qlike(sim_split):
    train, _ = sim_split
    model = EWMABaseline().fit(train)
    params = model.params()
    assert params["lambda"] in EWMA_LAMBDA_GRID and params["tuned"]
    losses = {lam: qlike(train.y**2, EWMABaseline(lam=lam).predict(train) ** 2) for lam in EWMA_LAMBDA_GRID}
    assert params["train_qlike"] == pytest.approx(min(losses.values()))
    assert params["train_qlike_lambda_0.94"] == pytest.approx(losses[0.94])


def test_har_recovers_a_log_linear_truth():
    rng = np.random.default_rng(4)
    n = 5000
    rv = np.exp(rng.normal(-3.5, 0.5, size=(n, 3)))  # realized_vol_24 / 168 / 720
    beta = np.array([-0.4, 0.4, 0.3, 0.2])
    log_var = beta[0] + np.log(rv**2) @ beta[1:] + rng.normal(0, 0.3, n)
    X = np.zeros((n, 2, 3), dtype=np.float32)
    X[:, -1, :] = rv
    w = WindowSet(
        X=X,
        y=np.exp(0.5 * log_var),
        ts=np.arange(n, dtype=np.int64),
        symbol=np.array(["BTC/USDT"] * n, dtype=object),
        feature_columns=HARBaseline.regressors,
    )
    model = HARBaseline().fit(w)
    coef = np.array(list(model.params()["coef"].values()))
    # standard errors: ≈0.004 for the slopes, ≈0.05 for the intercept (regressors sit far from 0)
    np.testing.assert_allclose(coef[1:], beta[1:], atol=0.015)
    assert coef[0] == pytest.approx(beta[0], abs=0.15)
    assert model.params()["resid_var"] == pytest.approx(0.09, rel=0.1)
    # the log-normal correction makes the mean forecast variance match the mean realized variance
    assert np.mean(model.predict(w) ** 2) == pytest.approx(np.mean(w.y**2), rel=0.05)
    extreme = w.take([0, 1])
    extreme.X[:, -1, :] = [[1e-9, 1e-9, 1e-9], [5.0, 5.0, 5.0]]
    assert np.all(model.predict(extreme) > 0)


def test_garch_recovers_simulated_parameters_and_forecasts_by_the_recursion():
    features = garch_features(2, symbols=("BTC/USDT",), n=20_000, omega=0.02, alpha=0.07, beta=0.9)
    w = build_windows(features, COLUMNS)
    model = GARCHBaseline().fit(w)
    p = model.params()["per_symbol"]["BTC/USDT"]
    assert p["alpha"] == pytest.approx(0.07, abs=0.02) and p["beta"] == pytest.approx(0.9, abs=0.03)
    assert p["omega"] / (1 - p["alpha"] - p["beta"]) == pytest.approx(0.02 / 0.03, rel=0.15)

    one = w.take([len(w) // 2])
    returns = one.column("log_ret")[0] * 100
    var = one.X[0, 0, one.column_index("realized_vol_168")].astype(np.float64) ** 2 / 24 * 1e4
    for r in returns[1:]:
        var = p["omega"] + p["alpha"] * r**2 + p["beta"] * var
    phi = p["alpha"] + p["beta"]
    long_run = p["omega"] / (1 - phi)
    total = 24 * long_run + (var - long_run) * (1 - phi**24) / (1 - phi)  # Σ_{j=1..24} E σ²_{t+j}
    assert model.predict(one)[0] == pytest.approx(math.sqrt(total) / 100, rel=1e-9)


def test_forecasts_use_only_their_own_window(sim_split):
    """Each forecast is a function of its window alone: no other row, and no target, enters it."""
    train, test = sim_split
    fitted = fit_all(train)
    hidden = WindowSet(test.X, np.full(len(test), np.nan), test.ts, test.symbol, test.feature_columns)
    rows = [0, len(test) // 2, len(test) - 1]
    for name, model in fitted.items():
        full = model.predict(test)
        assert np.all(np.isfinite(full)) and np.all(full > 0), name
        np.testing.assert_array_equal(model.predict(hidden), full, err_msg=name)
        for i in rows:
            assert model.predict(test.take([i]))[0] == full[i], name


def test_fit_all_and_errors(sim_split):
    train, _ = sim_split
    assert set(fit_all(train, ("naive", "har"))) == {"naive", "har"}
    with pytest.raises(KeyError, match="unknown baselines"):
        fit_all(train, ("lstm",))
    for cls in (ExpandingMeanBaseline, HARBaseline, GARCHBaseline):
        with pytest.raises(NotFittedError):
            cls().predict(train)
    with pytest.raises(NotFittedError):
        EWMABaseline().predict(train)
    no_720 = build_windows(garch_features(3, n=1000), COLUMNS[:3])
    with pytest.raises(KeyError, match="realized_vol_720"):
        HARBaseline().fit(no_720)


# --------------------------------------------------------------------------- real data


def _utc_ms(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.real_data
def test_baselines_on_btc_2023_2024(shared_ohlcv_dir):
    from crypto_platform.lib.features import compute_features

    with gzip.open(shared_ohlcv_dir / "binance_BTCUSDT_1h.csv.gz") as fh:
        bars = pl.read_csv(fh.read(), schema_overrides={"ts": pl.Int64})
    # 45 days of warm-up before 2023 so the 720-bar features are defined from the first day
    start, end = _utc_ms(2023, 1, 1), _utc_ms(2025, 1, 1)
    bars = bars.filter((pl.col("ts") >= start - 45 * 24 * HOUR_MS) & (pl.col("ts") < end))
    features = compute_features(bars)
    w = build_windows(features, COLUMNS)
    w = w.take(np.flatnonzero((w.ts >= start) & (w.ts < end)))
    assert len(w) > 16_000  # two years of hours, minus the one 2023 outage and the horizon at the end
    split = chronological_split(w.ts)
    train, test = w.take(split.train), w.take(split.test)

    forecasts = {name: model.predict(test) for name, model in fit_all(train).items()}
    for name, f in forecasts.items():
        assert np.all(np.isfinite(f)) and np.all(f > 0), name
    table = evaluate_forecasts(test.y, forecasts)
    print("\n" + table.to_markdown())
    mean_loss = table.row("expanding_mean").qlike
    assert table.row("har").qlike < mean_loss
    assert table.row("ewma").qlike < mean_loss
