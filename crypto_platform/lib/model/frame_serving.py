"""Serving HAR+ and its residual from a feature frame: the input contract a window array cannot carry.

Why a second contract. `packaging.VolatilityPyfunc` takes a float32 array `[n, sequence_length,
n_features]` of raw feature windows: no symbol, no time. HAR+ needs both, and more than one symbol's
bars can give:
- the symbol, for its per-asset standardisation (each asset keeps its own level);
- the timestamp of bar t, for the hour-of-week harmonics;
- the OHLC range terms, HARQ, semivariances and volume ratio (`har_features`), which `compute_features`
  does not produce;
- `cross_log_rv_24`, the other coins' RV at the same hour, which `har_features.har_plus_features`
  computes across all symbols of the frame — a per-symbol window cannot derive it.
Adding columns to the array would still lose symbol and time, so the contract is a frame instead.

Contract (`FrameForecaster.predict_frame`, and the `packaging.FeatureFramePyfunc` that wraps it):
- input: a pandas (or polars) DataFrame of feature rows in long format, one row per (symbol, closed
  bar): `symbol` (str, "BTC/USDT"), `ts` (int64, bar open time, UTC ms) and every column of
  `feature_columns` (float64), i.e. rows of `har_plus_features(compute_features(bars))` computed over
  every symbol the model serves at once (the cross-asset column needs them together). Row order is
  free; (symbol, ts) must be unique. HAR+ reads bar t alone (`sequence_length` 1): the latest row per
  symbol is enough. The residual reads its last `sequence_length` (24) rows: send at least that many
  consecutive hourly bars per symbol (the online scorer's `FEATURE_BARS` buffer holds more).
- output: a DataFrame with one row per input row, in input order: `symbol`, `ts`,
  `predicted_volatility` (float64, next-24-bar realized volatility, the training target's units;
  NaN where the row has no complete window: too few consecutive earlier bars, or a non-finite
  feature), and, when a `LogResidualDispersion` was packaged, `lower_<p>` / `upper_<p>` per interval
  level p (e.g. `lower_80`, `upper_95`), from `intervals.volatility_interval`.
- MLflow signature (`frame_signature`): ColSpecs `symbol` string, `ts` long and each feature column
  double, so a missing column or a wrong type is rejected before the model runs. REST body:
  `{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`.
The baselines and the plain LSTM keep the window contract; a caller tells the two apart by the
registered version's `input_contract` tag (`INPUT_CONTRACT_TAG`, value `FRAME_CONTRACT`).

Artifact: `frame_forecaster.json` (kind, columns, layout, dispersion) + the model's own `save` in
`model/` (JSON + npz, no pickle, no TensorFlow).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from crypto_platform.lib.model.har_plus import HARPlusBaseline
from crypto_platform.lib.model.intervals import LogResidualDispersion, volatility_interval
from crypto_platform.lib.model.windows import HORIZON_BARS, build_windows

OUTPUT_COLUMN = "predicted_volatility"
INPUT_CONTRACT_TAG = "input_contract"
FRAME_CONTRACT = "feature-frame/v1"
WINDOW_CONTRACT = "window-array/v1"
HEADER_FILE = "frame_forecaster.json"
MODEL_DIR = "model"
FORMAT = "crypto-platform/frame-forecaster"
FORMAT_VERSION = 1
CLASS_PATH = "crypto_platform.lib.model.frame_serving:FrameForecaster"
KINDS = ("har_plus", "har_plus_residual")


def interval_columns(dispersion: LogResidualDispersion | None) -> list[str]:
    if dispersion is None:
        return []
    return [f"{side}_{round(p * 100)}" for p in dispersion.levels for side in ("lower", "upper")]


def _load_model(kind: str, path: Path) -> Any:
    if kind == "har_plus":
        return HARPlusBaseline.load(path)
    if kind == "har_plus_residual":
        from crypto_platform.lib.model.residual import ResidualHARPlusForecaster

        return ResidualHARPlusForecaster.load(path)
    raise ValueError(f"unknown frame forecaster kind {kind!r}; known: {KINDS}")


class FrameForecaster:
    """A fitted HAR+ or residual ensemble behind the feature-frame contract (module docstring)."""

    def __init__(
        self,
        model: Any,
        kind: str,
        feature_columns: Sequence[str],
        sequence_length: int,
        dispersion: LogResidualDispersion | None = None,
        timeframe: str = "1h",
        horizon: int = HORIZON_BARS,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown frame forecaster kind {kind!r}; known: {KINDS}")
        if sequence_length < 1 or not feature_columns:
            raise ValueError("sequence_length must be >= 1 and feature_columns non-empty")
        self.model = model
        self.kind = kind
        self.feature_columns = tuple(feature_columns)
        self.sequence_length = int(sequence_length)
        self.dispersion = dispersion
        self.timeframe = timeframe
        self.horizon = int(horizon)

    @classmethod
    def from_har_plus(
        cls, model: HARPlusBaseline, dispersion: LogResidualDispersion | None = None, timeframe: str = "1h"
    ) -> FrameForecaster:
        """HAR+ reads bar t only: its input is the columns its terms read, one row per symbol suffices."""
        return cls(model, "har_plus", model.required_columns(), 1, dispersion, timeframe)

    @classmethod
    def from_residual(
        cls,
        model: Any,
        window_columns: Sequence[str],
        dispersion: LogResidualDispersion | None = None,
        timeframe: str = "1h",
    ) -> FrameForecaster:
        """The residual indexes its sequence features by position in the training windows' columns:
        `window_columns` must be those columns, in that order (`WindowSet.feature_columns`)."""
        if model.ensemble is None:
            raise ValueError("har_plus_residual: fit it before packaging")
        return cls(
            model, "har_plus_residual", window_columns, model.config.sequence_length, dispersion, timeframe
        )

    @classmethod
    def from_fitted(
        cls,
        name: str,
        model: Any,
        window_columns: Sequence[str],
        dispersion: LogResidualDispersion | None = None,
        timeframe: str = "1h",
    ) -> FrameForecaster:
        """The walk-forward candidate `name`, fitted, behind the frame contract. Here: HAR+ and its
        residual only; every other candidate raises ValueError (the caller packages it otherwise)."""
        if name == "har_plus":
            return cls.from_har_plus(model, dispersion, timeframe)
        if name == "har_plus_residual":
            return cls.from_residual(model, window_columns, dispersion, timeframe)
        raise ValueError(f"no feature-frame packaging for candidate {name!r}; known: {KINDS}")

    @property
    def output_columns(self) -> list[str]:
        return ["symbol", "ts", OUTPUT_COLUMN, *interval_columns(self.dispersion)]

    def predict_frame(self, frame: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
        """One output row per input row, in input order (see the module docstring)."""
        pf = frame if isinstance(frame, pl.DataFrame) else pl.from_pandas(pd.DataFrame(frame))
        missing = [c for c in ("symbol", "ts", *self.feature_columns) if c not in pf.columns]
        if missing:
            raise ValueError(f"the feature frame lacks columns {missing}")
        pf = pf.select(
            pl.col("symbol").cast(pl.Utf8),
            pl.col("ts").cast(pl.Int64),
            *(pl.col(c).cast(pl.Float64) for c in self.feature_columns),
        ).with_row_index("_row")
        if pf.select(pl.struct("symbol", "ts").is_duplicated().any()).item():
            raise ValueError("the feature frame has duplicate (symbol, ts) rows")
        windows = build_windows(
            pf.drop("_row"),
            self.feature_columns,
            timeframe=self.timeframe,
            sequence_length=self.sequence_length,
            horizon=self.horizon,
            with_target=False,
            # No target is read (with_target=False); build_windows still wants a per-bar column for it.
            return_column=self.feature_columns[0],
        )
        forecasts = np.asarray(self.model.predict(windows), dtype=np.float64) if len(windows) else np.zeros(0)
        columns: dict[str, Any] = {
            "symbol": windows.symbol.astype(str),
            "ts": windows.ts,
            OUTPUT_COLUMN: forecasts,
        }
        if self.dispersion is not None:
            for level in self.dispersion.levels:
                lo, hi = volatility_interval(forecasts, self.dispersion, level)
                columns[f"lower_{round(level * 100)}"], columns[f"upper_{round(level * 100)}"] = lo, hi
        scored = pl.DataFrame(columns, schema_overrides={"symbol": pl.Utf8, "ts": pl.Int64})
        out = pf.select("_row", "symbol", "ts").join(scored, on=["symbol", "ts"], how="left").sort("_row")
        return out.drop("_row").to_pandas().astype({c: "float64" for c in self.output_columns[2:]})

    # -- persistence --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / MODEL_DIR)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "feature_columns": list(self.feature_columns),
            "sequence_length": self.sequence_length,
            "timeframe": self.timeframe,
            "horizon": self.horizon,
            "dispersion": None if self.dispersion is None else self.dispersion.to_dict(),
            "input_contract": FRAME_CONTRACT,
        }
        (directory / HEADER_FILE).write_text(json.dumps(header, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, path: str | Path) -> FrameForecaster:
        directory = Path(path)
        header = json.loads((directory / HEADER_FILE).read_text())
        if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory} is not a {FORMAT} v{FORMAT_VERSION} artifact")
        dispersion = header.get("dispersion")
        return cls(
            _load_model(header["kind"], directory / MODEL_DIR),
            header["kind"],
            header["feature_columns"],
            header["sequence_length"],
            None if dispersion is None else LogResidualDispersion.from_dict(dispersion),
            header["timeframe"],
            header["horizon"],
        )
