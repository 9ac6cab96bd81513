"""Volatility baselines a learned model has to beat, served through the same input as the LSTM.

Every baseline forecasts the realized volatility of bars t+1 … t+24 (the `WindowSet.y` target) from
the 48-bar feature window ending at t, so it can stand in for the model anywhere a window is at hand.
Only `fit` sees targets, and only those of the training block it is given.

Feature columns read (names from lib.features; the RV columns are all in 24-bar units, so RV² is a
variance over 24 bars):
    log_ret            per-bar log return
    realized_vol_24    √Σ of the last 24 squared log returns
    realized_vol_168   √(24/168 · Σ of the last 168 squared log returns)
    realized_vol_720   √(24/720 · Σ of the last 720 squared log returns)

Persistence: every baseline has `to_state()` (JSON-safe dict of what `fit` stored and `predict` reads)
and `from_state(state)`; `save_baseline` / `load_baseline` write and read it (no pickle).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from crypto_platform.lib.model.metrics import qlike
from crypto_platform.lib.model.windows import HORIZON_BARS, WindowSet

RV_SCALE_BARS = 24  # the realized_vol_* features are all expressed per 24 bars
EWMA_REFERENCE_LAMBDA = 0.94  # RiskMetrics' daily-data value, reported next to the tuned one
EWMA_LAMBDA_GRID: tuple[float, ...] = (
    0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.995,
)  # fmt: skip
GARCH_SCALE = 100.0  # returns in percent: the optimiser struggles with variances of order 1e-5
# HAR regressors are logs of variances; a window of 24 unchanged prices (an exchange halt) has RV 0.
_LOG_FLOOR = 1e-12


@runtime_checkable
class Forecaster(Protocol):
    """What the evaluation and serving code needs from a baseline (and from the LSTM wrapper)."""

    name: str

    def fit(self, train: WindowSet) -> Forecaster: ...

    def predict(self, windows: WindowSet) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...


class NotFittedError(RuntimeError):
    pass


def _hourly_seed(windows: WindowSet) -> np.ndarray:
    """Per-bar variance of each window's second bar, forecast from realized_vol_168 at its first bar."""
    return windows.X[:, 0, windows.column_index("realized_vol_168")].astype(np.float64) ** 2 / RV_SCALE_BARS


class NaiveBaseline:
    """Tomorrow looks like today: the forecast is realized_vol_24 at t."""

    name: ClassVar[str] = "naive"

    def fit(self, train: WindowSet) -> NaiveBaseline:
        train.column_index("realized_vol_24")
        return self

    def predict(self, windows: WindowSet) -> np.ndarray:
        return windows.last("realized_vol_24") * math.sqrt(windows.horizon / RV_SCALE_BARS)

    def params(self) -> dict[str, Any]:
        return {}

    def to_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NaiveBaseline:
        return cls()


class ExpandingMeanBaseline:
    """√(mean training realized variance): a per-symbol constant, pooled for symbols unseen in training.

    Per symbol because SOL's typical volatility is about twice BTC's; one pooled constant would be a
    straw man rather than a baseline.
    """

    name: ClassVar[str] = "expanding_mean"

    def __init__(self) -> None:
        self._per_symbol: dict[str, float] | None = None
        self._pooled = math.nan

    def fit(self, train: WindowSet) -> ExpandingMeanBaseline:
        if len(train) == 0:
            raise ValueError("expanding_mean: empty training set")
        var = train.y**2
        self._pooled = float(np.sqrt(np.mean(var)))
        self._per_symbol = {
            str(s): float(np.sqrt(np.mean(var[train.symbol == s]))) for s in np.unique(train.symbol)
        }
        return self

    def predict(self, windows: WindowSet) -> np.ndarray:
        if self._per_symbol is None:
            raise NotFittedError("expanding_mean: call fit first")
        table = self._per_symbol
        return np.array([table.get(str(s), self._pooled) for s in windows.symbol], dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"pooled_vol": self._pooled, "per_symbol_vol": dict(self._per_symbol or {})}

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols with their own fitted constant (any other gets the pooled one)."""
        return tuple(sorted(self._per_symbol or {}))

    def to_state(self) -> dict[str, Any]:
        if self._per_symbol is None:
            raise NotFittedError("expanding_mean: call fit before saving")
        return {"pooled_vol": self._pooled, "per_symbol_vol": dict(self._per_symbol)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ExpandingMeanBaseline:
        model = cls()
        model._pooled = float(state["pooled_vol"])
        model._per_symbol = {str(s): float(v) for s, v in state["per_symbol_vol"].items()}
        return model


def ewma_variance(windows: WindowSet, lam: float) -> np.ndarray:
    """RiskMetrics per-bar variance for bar t+1: σ²_{k+1} = λσ²_k + (1−λ)r²_k through the window.

    The seed, σ² of the window's second bar, is realized_vol_168 at the first bar (which covers the
    returns up to and including that bar) per bar; the returns of bars 2 … 48, the last one being bar t,
    then carry it forward to σ² of bar t+1.
    """
    returns = windows.column("log_ret")
    var = _hourly_seed(windows)
    for k in range(1, returns.shape[1]):
        var = lam * var + (1.0 - lam) * returns[:, k] ** 2
    return var


class EWMABaseline:
    """RiskMetrics EWMA; λ tuned on the training block by QLIKE over `EWMA_LAMBDA_GRID`
    (or fixed when `lam` is given). Forecast = √(horizon · σ²_{t+1}): a flat term structure."""

    name: ClassVar[str] = "ewma"

    def __init__(self, lam: float | None = None, grid: tuple[float, ...] = EWMA_LAMBDA_GRID) -> None:
        if lam is not None and not 0.0 < lam < 1.0:
            raise ValueError("lam must be in (0, 1)")
        self._fixed = lam
        self._grid = grid
        self.lam: float | None = lam
        self._train_qlike: dict[float, float] = {}

    def _forecast(self, windows: WindowSet, lam: float) -> np.ndarray:
        return np.sqrt(windows.horizon * ewma_variance(windows, lam))

    def fit(self, train: WindowSet) -> EWMABaseline:
        if self._fixed is not None:
            return self
        if len(train) == 0:
            raise ValueError("ewma: empty training set")
        candidates = sorted({*self._grid, EWMA_REFERENCE_LAMBDA})
        self._train_qlike = {lam: qlike(train.y**2, self._forecast(train, lam) ** 2) for lam in candidates}
        self.lam = min(self._grid, key=lambda lam: self._train_qlike[lam])
        return self

    def predict(self, windows: WindowSet) -> np.ndarray:
        if self.lam is None:
            raise NotFittedError("ewma: call fit first")
        return self._forecast(windows, self.lam)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lambda": self.lam, "tuned": self._fixed is None}
        if self._train_qlike:
            out["train_qlike"] = self._train_qlike[self.lam]
            out["train_qlike_lambda_0.94"] = self._train_qlike[EWMA_REFERENCE_LAMBDA]
            out["lambda_grid"] = list(self._grid)
        return out

    def to_state(self) -> dict[str, Any]:
        if self.lam is None:
            raise NotFittedError("ewma: call fit before saving")
        return {
            "lambda": self.lam,
            "fixed_lambda": self._fixed,
            "lambda_grid": list(self._grid),
            # JSON object keys are strings: the per-λ training QLIKE travels as [λ, qlike] pairs.
            "train_qlike": [[lam, q] for lam, q in self._train_qlike.items()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EWMABaseline:
        fixed = state["fixed_lambda"]
        model = cls(
            lam=None if fixed is None else float(fixed), grid=tuple(float(g) for g in state["lambda_grid"])
        )
        model.lam = float(state["lambda"])
        model._train_qlike = {float(lam): float(q) for lam, q in state["train_qlike"]}
        return model


class HARBaseline:
    """HAR-RV (Corsi 2009) in logs, fitted by OLS on the training block:

        ln RV²_{t+1:t+24} = β0 + β1 ln RV²_24(t) + β2 ln RV²_168(t) + β3 ln RV²_720(t) + ε,
        forecast variance = exp(x'β + s²/2)

    Logs rather than levels because realized variance is heavy-tailed: a few crash days dominate a
    levels OLS, and the log form cannot produce a negative variance (the positivity guard). The s²/2
    term (s² = residual variance) turns the forecast of the mean log into one of the mean level under
    log-normal errors; without it the forecast is the median and biased low.
    Training rows are whatever `fit` gets: `chronological_split` has already purged the rows whose
    targets reach into the next block. Rows with a zero target (all-flat future) are skipped.
    """

    name: ClassVar[str] = "har"
    regressors: ClassVar[tuple[str, ...]] = ("realized_vol_24", "realized_vol_168", "realized_vol_720")

    def __init__(self) -> None:
        self.coef: np.ndarray | None = None
        self.resid_var = math.nan
        self.n_train = 0

    def _design(self, windows: WindowSet) -> np.ndarray:
        cols = [np.log(np.maximum(windows.last(c) ** 2, _LOG_FLOOR)) for c in self.regressors]
        return np.column_stack([np.ones(len(windows)), *cols])

    def fit(self, train: WindowSet) -> HARBaseline:
        keep = train.y > 0
        if keep.sum() < len(self.regressors) + 2:
            raise ValueError(f"har: needs at least {len(self.regressors) + 2} training rows with RV > 0")
        x = self._design(train)[keep]
        target = np.log(train.y[keep] ** 2)
        coef, *_ = np.linalg.lstsq(x, target, rcond=None)
        resid = target - x @ coef
        self.coef = coef
        self.resid_var = float(np.mean(resid**2))
        self.n_train = int(keep.sum())
        return self

    def predict(self, windows: WindowSet) -> np.ndarray:
        if self.coef is None:
            raise NotFittedError("har: call fit first")
        log_var = self._design(windows) @ self.coef + 0.5 * self.resid_var
        # HAR was fitted on this horizon's targets; a different horizon would need a refit.
        if windows.horizon != HORIZON_BARS:
            log_var = log_var + math.log(windows.horizon / HORIZON_BARS)
        return np.exp(0.5 * log_var)

    def params(self) -> dict[str, Any]:
        names = ("intercept", *self.regressors)
        coef = {} if self.coef is None else {n: float(c) for n, c in zip(names, self.coef, strict=True)}
        return {"form": "log", "coef": coef, "resid_var": self.resid_var, "n_train": self.n_train}

    def to_state(self) -> dict[str, Any]:
        if self.coef is None:
            raise NotFittedError("har: call fit before saving")
        return {
            "regressors": list(self.regressors),
            "coef": [float(c) for c in self.coef],  # intercept first, then `regressors`' order
            "resid_var": self.resid_var,
            "n_train": self.n_train,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HARBaseline:
        if tuple(state["regressors"]) != cls.regressors:
            raise ValueError(f"har: saved regressors {state['regressors']} are not {list(cls.regressors)}")
        model = cls()
        model.coef = np.array(state["coef"], dtype=np.float64)
        if model.coef.shape != (len(cls.regressors) + 1,):
            raise ValueError(
                f"har: {model.coef.size} saved coefficients for {len(cls.regressors)} regressors"
            )
        model.resid_var = float(state["resid_var"])
        model.n_train = int(state["n_train"])
        return model


def training_returns(train: WindowSet) -> dict[str, np.ndarray]:
    """Per-symbol, time-ordered log returns of the training bars (the return at each window's bar t).

    Holes in the bar grid are simply skipped over: a few dozen outage hours in years of data shift the
    GARCH estimates far less than the noise in them.
    """
    returns = train.last("log_ret")
    out = {}
    for sym in np.unique(train.symbol):
        mask = train.symbol == sym
        order = np.argsort(train.ts[mask], kind="stable")
        out[str(sym)] = returns[mask][order]
    return out


class GARCHBaseline:
    """GARCH(1,1), zero mean, Gaussian QML, one fit per symbol on its training-block returns (`arch`).

    Prediction never refits: for each window the fitted recursion σ²_{k+1} = ω + α r²_k + β σ²_k is
    seeded from realized_vol_168 at the window's first bar and run through its returns to σ²_{t+1};
    the 24-bar variance is Σ_{j=1..24} E[σ²_{t+j}] with E[σ²_{t+j+1}] = ω + (α+β) E[σ²_{t+j}].
    Symbols unseen in training use the parameters of the symbol with the most training bars.
    """

    name: ClassVar[str] = "garch"
    min_train_returns: ClassVar[int] = 500

    def __init__(self) -> None:
        self._params: dict[str, dict[str, float]] = {}
        self._fallback: str | None = None

    def fit(self, train: WindowSet) -> GARCHBaseline:
        from arch import arch_model  # imported here: it pulls in scipy/statsmodels-sized modules

        series = training_returns(train)
        fitted = {}
        for sym, returns in series.items():
            if returns.size < self.min_train_returns:
                continue
            res = arch_model(
                returns * GARCH_SCALE, mean="Zero", vol="GARCH", p=1, q=1, dist="normal", rescale=False
            ).fit(disp="off", show_warning=False)
            if res.convergence_flag != 0:
                raise RuntimeError(
                    f"garch: the fit for {sym or 'frame'} did not converge ({res.convergence_flag})"
                )
            p = res.params
            fitted[sym] = {
                "omega": float(p["omega"]),
                "alpha": float(p["alpha[1]"]),
                "beta": float(p["beta[1]"]),
                "n_train": int(returns.size),
            }
        if not fitted:
            raise ValueError(f"garch: no symbol has {self.min_train_returns} training returns to fit on")
        self._params = fitted
        self._fallback = max(fitted, key=lambda s: fitted[s]["n_train"])
        return self

    def predict(self, windows: WindowSet) -> np.ndarray:
        if not self._params:
            raise NotFittedError("garch: call fit first")
        n = len(windows)
        omega, alpha, beta = (np.empty(n) for _ in range(3))
        for i, sym in enumerate(windows.symbol):
            p = self._params.get(str(sym)) or self._params[self._fallback]
            omega[i], alpha[i], beta[i] = p["omega"], p["alpha"], p["beta"]
        scale2 = GARCH_SCALE**2
        returns2 = windows.column("log_ret") ** 2 * scale2
        var = _hourly_seed(windows) * scale2
        for k in range(1, returns2.shape[1]):
            var = omega + alpha * returns2[:, k] + beta * var
        persistence = alpha + beta
        total = np.zeros(n)
        step = var  # E[σ²_{t+1}]
        for _ in range(windows.horizon):
            total += step
            step = omega + persistence * step
        return np.sqrt(total / scale2)

    def params(self) -> dict[str, Any]:
        return {
            "per_symbol": {s: dict(p) for s, p in self._params.items()},
            "fallback_symbol": self._fallback,
        }

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols with their own fitted parameters (any other gets the fallback symbol's)."""
        return tuple(sorted(self._params))

    def to_state(self) -> dict[str, Any]:
        # Prediction re-seeds the recursion from each window (realized_vol_168 at its first bar), so the
        # fitted (ω, α, β) per symbol are the whole state: no last conditional variance is carried.
        if not self._params:
            raise NotFittedError("garch: call fit before saving")
        return {
            "scale": GARCH_SCALE,
            "per_symbol": {s: dict(p) for s, p in self._params.items()},
            "fallback_symbol": self._fallback,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GARCHBaseline:
        if float(state["scale"]) != GARCH_SCALE:
            raise ValueError(
                f"garch: parameters saved for returns × {state['scale']}, this code uses × {GARCH_SCALE}"
            )
        model = cls()
        model._params = {
            str(s): {
                "omega": float(p["omega"]),
                "alpha": float(p["alpha"]),
                "beta": float(p["beta"]),
                "n_train": int(p["n_train"]),
            }
            for s, p in state["per_symbol"].items()
        }
        if not model._params:
            raise ValueError("garch: the saved state holds no fitted symbol")
        model._fallback = str(state["fallback_symbol"])
        return model


BASELINES: dict[str, type] = {
    cls.name: cls for cls in (NaiveBaseline, ExpandingMeanBaseline, EWMABaseline, HARBaseline, GARCHBaseline)
}
BASELINE_NAMES: frozenset[str] = frozenset(BASELINES)


# -- persistence: one JSON file per fitted baseline (no pickle) --------------------------------------

SAVE_FILE = "baseline_state.json"
SAVE_FORMAT = "crypto-platform/baseline-state"
SAVE_FORMAT_VERSION = 1


def save_baseline(model: Forecaster, path: str | Path) -> Path:
    """Write a fitted baseline's `to_state()` to `path/baseline_state.json`; `load_baseline` reverses it.

    JSON floats round-trip exactly (shortest repr), so a loaded baseline forecasts bit for bit like the
    fitted one."""
    if BASELINES.get(model.name) is not type(model):
        raise ValueError(f"{type(model).__name__} is not one of the baselines {sorted(BASELINES)}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    header = {
        "format": SAVE_FORMAT,
        "format_version": SAVE_FORMAT_VERSION,
        "name": model.name,
        "state": model.to_state(),  # type: ignore[attr-defined]
    }
    (directory / SAVE_FILE).write_text(json.dumps(header, indent=2) + "\n")
    return directory


def load_baseline(path: str | Path) -> Forecaster:
    directory = Path(path)
    header = json.loads((directory / SAVE_FILE).read_text())
    if header.get("format") != SAVE_FORMAT or header.get("format_version") != SAVE_FORMAT_VERSION:
        raise ValueError(f"{directory} is not a {SAVE_FORMAT} v{SAVE_FORMAT_VERSION} artifact")
    name = header.get("name")
    if name not in BASELINES:
        raise ValueError(f"{directory}: unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return BASELINES[name].from_state(header["state"])


def fit_all(train: WindowSet, names: tuple[str, ...] | None = None) -> dict[str, Forecaster]:
    """Fit every (or the named) baseline on one training block."""
    chosen = names if names is not None else tuple(BASELINES)
    unknown = [n for n in chosen if n not in BASELINES]
    if unknown:
        raise KeyError(f"unknown baselines {unknown}; known: {sorted(BASELINES)}")
    return {name: BASELINES[name]().fit(train) for name in chosen}
