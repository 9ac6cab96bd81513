"""Fitted baselines packaged with the LSTM's serving contract (raw feature windows in, volatility out).

`ServableBaseline` has the `save(dir)` / `load(dir)` / `predict(X)` interface that
`packaging.log_forecaster` wraps as a `VolatilityPyfunc`, so a baseline version of
`crypto-volatility` can be loaded and called exactly like an LSTM version (`window-array/v1`).

Only baselines whose forecast is a function of the window alone can be served that way (naive, ewma,
har): the pyfunc input carries no symbol, so the per-symbol expanding mean and the per-symbol GARCH fits
would fall back to pooled or foreign parameters at serving time and no longer be the model that was
evaluated.

Every baseline, those two included, is servable under the feature-frame contract instead
(`frame_serving.FrameForecaster.from_fitted`, kind `baseline`, logged with
`packaging.log_frame_forecaster`): its input carries the symbol, and a symbol the baseline was not
fitted on is refused. That is the contract to package a baseline champion with; this module stays for
the window-contract versions already registered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.model.baselines import EWMABaseline, Forecaster, HARBaseline, NaiveBaseline
from crypto_platform.lib.model.windows import HORIZON_BARS, WindowSet

SERVABLE_BASELINES: tuple[str, ...] = ("naive", "ewma", "har")
BASELINE_FILE = "baseline.json"
FORMAT = "crypto-platform/servable-baseline"
FORMAT_VERSION = 1
CLASS_PATH = "crypto_platform.lib.model.baseline_serving:ServableBaseline"


def _rebuild(name: str, params: dict[str, Any]) -> Forecaster:
    """A fitted baseline from the parameters its `params()` reported."""
    if name == "naive":
        return NaiveBaseline()
    if name == "ewma":
        return EWMABaseline(lam=float(params["lambda"]))
    if name == "har":
        har = HARBaseline()
        coef = params["coef"]
        har.coef = np.array([coef[k] for k in ("intercept", *HARBaseline.regressors)], dtype=np.float64)
        har.resid_var = float(params["resid_var"])
        har.n_train = int(params.get("n_train", 0))
        return har
    raise ValueError(
        f"baseline {name!r} cannot be served from a window alone; servable: {SERVABLE_BASELINES}"
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class ServableBaseline:
    """A fitted window-only baseline with the forecaster interface `VolatilityPyfunc` serves."""

    def __init__(
        self,
        name: str,
        params: dict[str, Any],
        feature_columns: tuple[str, ...] | list[str],
        horizon: int = HORIZON_BARS,
        bar_ms: int = HOUR_MS,
    ) -> None:
        self.name = name
        self.params = _json_safe(params)
        self.feature_columns = tuple(feature_columns)
        self.horizon = int(horizon)
        self.bar_ms = int(bar_ms)
        self._forecaster = _rebuild(name, self.params)

    @classmethod
    def from_fitted(cls, forecaster: Forecaster, windows: WindowSet) -> ServableBaseline:
        """Package a baseline fitted on `windows`' layout (feature order, horizon, bar length)."""
        return cls(
            forecaster.name, forecaster.params(), windows.feature_columns, windows.horizon, windows.bar_ms
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Volatility forecasts [n] from raw windows [n, sequence_length, n_features]."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 3 or X.shape[2] != len(self.feature_columns):
            raise ValueError(f"expected windows [n, seq, {len(self.feature_columns)}], got {X.shape}")
        n = X.shape[0]
        windows = WindowSet(
            X=X,
            y=np.full(n, np.nan),
            ts=np.zeros(n, dtype=np.int64),
            symbol=np.full(n, "", dtype=object),
            feature_columns=self.feature_columns,
            bar_ms=self.bar_ms,
            horizon=self.horizon,
        )
        return np.asarray(self._forecaster.predict(windows), dtype=np.float64)

    def save(self, path: str | Path) -> Path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "params": self.params,
            "feature_columns": list(self.feature_columns),
            "horizon": self.horizon,
            "bar_ms": self.bar_ms,
        }
        (directory / BASELINE_FILE).write_text(json.dumps(header, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, path: str | Path) -> ServableBaseline:
        header = json.loads((Path(path) / BASELINE_FILE).read_text())
        if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} artifact")
        return cls(
            header["name"], header["params"], header["feature_columns"], header["horizon"], header["bar_ms"]
        )
