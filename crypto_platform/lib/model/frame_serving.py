"""Serving any walk-forward candidate from a feature frame: the input contract a window array cannot carry.

Why a second contract. `packaging.VolatilityPyfunc` takes a float32 array `[n, sequence_length,
n_features]` of raw feature windows: no symbol, no time. Most candidates need one or both, and more
than one symbol's bars can give:
- the symbol: HAR+'s per-asset standardisation, the residual's per-asset scaler, the expanding mean's
  per-symbol constant and GARCH's per-symbol (ω, α, β) — without it those fall back to pooled or
  foreign parameters and are no longer the model that was evaluated;
- the timestamp of bar t, for HAR+'s hour-of-week harmonics;
- the OHLC range terms, HARQ, semivariances and volume ratio (`har_features`), which `compute_features`
  does not produce;
- `cross_log_rv_24`, the other coins' RV at the same hour, which `har_features.har_plus_features`
  computes across all symbols of the frame — a per-symbol window cannot derive it.
Adding columns to the array would still lose symbol and time, so the contract is a frame instead.

What is servable, as which `kind` (`FrameForecaster.from_fitted(name, model, window_columns)` picks it
from the fitted model; `window_columns` are the `WindowSet.feature_columns` it was fitted on):
- `baseline`: every model of `baselines.BASELINES`. What each reads (`BASELINE_READS`):
  naive `realized_vol_24` at bar t; har its three `realized_vol_*` at bar t; expanding_mean nothing but
  the symbol (no feature columns: every row gets its symbol's constant); ewma and garch `log_ret` over
  the whole window and `realized_vol_168` at its first bar, so their `sequence_length` is the training
  windows' length (`SEQUENCE_LENGTH`, 48; GARCH re-seeds its recursion from each window, so it carries
  no conditional-variance state, only the per-symbol parameters);
- `har_plus`: `HARPlusBaseline`, its `required_columns()` at bar t (`sequence_length` 1);
- `har_plus_residual`: `ResidualHARPlusForecaster`, which indexes its sequence features by position,
  so its columns are exactly `window_columns`, its `sequence_length` the config's (24);
- `combination`: `walk_forward.CombinationForecaster`; each member is packaged as its own
  `FrameForecaster` (its own kind, columns and length, recursively) and scored on the frame by itself;
  a row gets the combined forecast where every member has one. Columns: the union of the members';
- not servable: the plain LSTM (`ValueError`; it keeps the window contract, `packaging.log_lstm_model`).

Symbols: a model with per-symbol state (HAR+ with per-asset statistics, the residual, expanding_mean,
garch, a combination holding one of them) serves only the symbols it was fitted on (`symbols`); a frame
with any other symbol is refused with a `ValueError` naming it, never answered from pooled or another
symbol's parameters. naive, ewma and har hold no per-symbol state (`symbols` is None): any symbol.

Contract (`FrameForecaster.predict_frame`, and the `packaging.FeatureFramePyfunc` that wraps it):
- input: a pandas (or polars) DataFrame of feature rows in long format, one row per (symbol, closed
  bar): `symbol` (str, "BTC/USDT"), `ts` (int64, bar open time, UTC ms) and every column of
  `feature_columns` (float64), i.e. rows of `har_plus_features(compute_features(bars))` computed over
  every symbol the model serves at once (the cross-asset column needs them together). Row order is
  free; (symbol, ts) must be unique. A row is scored from its last `sequence_length` consecutive
  hourly bars: 1 for HAR+, har and naive (the latest row per symbol is enough), 24 for the residual,
  48 for ewma and garch (the online scorer's `FEATURE_BARS` buffer holds more).
- output: a DataFrame with one row per input row, in input order: `symbol`, `ts`,
  `predicted_volatility` (float64, next-24-bar realized volatility, the training target's units;
  NaN where the row has no complete window: too few consecutive earlier bars, or a non-finite
  feature), and, when a `LogResidualDispersion` was packaged, `lower_<p>` / `upper_<p>` per interval
  level p (e.g. `lower_80`, `upper_95`), from `intervals.volatility_interval`.
- MLflow signature (`frame_signature`): ColSpecs `symbol` string, `ts` long and each feature column
  double, so a missing column or a wrong type is rejected before the model runs. REST body:
  `{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`.
Versions logged this way carry the `input_contract` tag (`INPUT_CONTRACT_TAG`, value `FRAME_CONTRACT`);
the older window contract (`baseline_serving`, `WINDOW_CONTRACT`) still serves naive / ewma / har and
the plain LSTM.

Artifact: `frame_forecaster.json` (kind, name, columns, layout, dispersion, symbols) + the model's own
`save` in `model/` (JSON + npz, no pickle, no TensorFlow): `HARPlusBaseline.save`,
`ResidualHARPlusForecaster.save`, `baselines.save_baseline`, or for a combination `combination.json`
(weights, member order) + `combination.npz` (validation log-residuals) + one complete frame-forecaster
artifact per member under `members/<i>/`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from crypto_platform.lib.market.timeframes import timeframe_ms
from crypto_platform.lib.model.baselines import (
    BASELINES,
    ExpandingMeanBaseline,
    GARCHBaseline,
    HARBaseline,
    load_baseline,
    save_baseline,
)
from crypto_platform.lib.model.combination import CombinationWeights, combine
from crypto_platform.lib.model.har_plus import HARPlusBaseline
from crypto_platform.lib.model.intervals import LogResidualDispersion, volatility_interval
from crypto_platform.lib.model.windows import HORIZON_BARS, SEQUENCE_LENGTH, WindowSet, build_windows

OUTPUT_COLUMN = "predicted_volatility"
INPUT_CONTRACT_TAG = "input_contract"
FRAME_CONTRACT = "feature-frame/v1"
WINDOW_CONTRACT = "window-array/v1"
HEADER_FILE = "frame_forecaster.json"
MODEL_DIR = "model"
FORMAT = "crypto-platform/frame-forecaster"
FORMAT_VERSION = 1
CLASS_PATH = "crypto_platform.lib.model.frame_serving:FrameForecaster"
KINDS = ("har_plus", "har_plus_residual", "baseline", "combination")

# What each baseline's `predict` reads from a window: the columns, and whether it runs through the
# whole window (True: `sequence_length` is the training windows' length) or reads bar t alone.
BASELINE_READS: dict[str, tuple[tuple[str, ...], bool]] = {
    "naive": (("realized_vol_24",), False),
    "expanding_mean": ((), False),  # the symbol only
    "ewma": (("log_ret", "realized_vol_168"), True),
    "har": (HARBaseline.regressors, False),
    "garch": (("log_ret", "realized_vol_168"), True),
}
COMBINATION_HEADER = "combination.json"
COMBINATION_ARRAYS = "combination.npz"
COMBINATION_MEMBERS_DIR = "members"


def interval_columns(dispersion: LogResidualDispersion | None) -> list[str]:
    if dispersion is None:
        return []
    return [f"{side}_{round(p * 100)}" for p in dispersion.levels for side in ("lower", "upper")]


def fitted_symbols(model: Any) -> frozenset[str] | None:
    """The symbols a model holds its own state for; None when it holds no per-symbol state."""
    if isinstance(model, ExpandingMeanBaseline | GARCHBaseline):
        return frozenset(model.symbols)
    if isinstance(model, HARPlusBaseline):
        if not model.config.per_asset:
            return None
        return frozenset(model.params()["symbols"])
    if isinstance(model, FrameCombination):
        sets = [m.symbols for m in model.members.values() if m.symbols is not None]
        return frozenset.intersection(*sets) if sets else None
    from crypto_platform.lib.model.residual import ResidualHARPlusForecaster

    if isinstance(model, ResidualHARPlusForecaster) and model.ensemble is not None:
        scaler = model.ensemble.scaler
        own = frozenset(k for k in scaler.mean if k != scaler.pooled_key)
        base = fitted_symbols(model.base)
        return own if base is None else own & base
    return None


def _load_model(kind: str, path: Path) -> Any:
    if kind == "har_plus":
        return HARPlusBaseline.load(path)
    if kind == "har_plus_residual":
        from crypto_platform.lib.model.residual import ResidualHARPlusForecaster

        return ResidualHARPlusForecaster.load(path)
    if kind == "baseline":
        return load_baseline(path)
    if kind == "combination":
        return FrameCombination.load(path)
    raise ValueError(f"unknown frame forecaster kind {kind!r}; known: {KINDS}")


def _is_lstm(model: Any) -> bool:
    from crypto_platform.lib.model.lstm import LSTMForecaster  # numpy only at import; TF is lazy

    # walk_forward's lstm candidate wraps the LSTMForecaster in a column selector (`.model`).
    return isinstance(model, LSTMForecaster) or isinstance(getattr(model, "model", None), LSTMForecaster)


class FrameForecaster:
    """A fitted candidate behind the feature-frame contract (module docstring)."""

    def __init__(
        self,
        model: Any,
        kind: str,
        feature_columns: Sequence[str],
        sequence_length: int,
        dispersion: LogResidualDispersion | None = None,
        timeframe: str = "1h",
        horizon: int = HORIZON_BARS,
        name: str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown frame forecaster kind {kind!r}; known: {KINDS}")
        if sequence_length < 1:
            raise ValueError("sequence_length must be >= 1")
        if not feature_columns and sequence_length != 1:
            # With no column there is no bar to check for consecutiveness: only a symbol-only model.
            raise ValueError("a forecaster without feature columns must have sequence_length 1")
        if kind == "combination" and not isinstance(model, FrameCombination):
            raise ValueError("a combination forecaster holds a FrameCombination")
        self.model = model
        self.kind = kind
        self.name = name or kind
        self.feature_columns = tuple(feature_columns)
        self.sequence_length = int(sequence_length)
        self.dispersion = dispersion
        self.timeframe = timeframe
        self.horizon = int(horizon)
        self.symbols = fitted_symbols(model)

    # -- packaging a fitted model -------------------------------------------------------------------

    @classmethod
    def from_fitted(
        cls,
        name: str,
        model: Any,
        window_columns: Sequence[str],
        dispersion: LogResidualDispersion | None = None,
        timeframe: str = "1h",
        *,
        window_length: int = SEQUENCE_LENGTH,
    ) -> FrameForecaster:
        """Package whatever the gate chose: a baseline, HAR+, the residual or the combination.

        `window_columns`: the `WindowSet.feature_columns` the model was fitted on (in that order);
        `window_length`: those windows' `sequence_length` (what ewma and garch run through).
        Raises ValueError for the LSTM and for anything else this contract cannot serve."""
        from crypto_platform.lib.model.residual import ResidualHARPlusForecaster
        from crypto_platform.lib.model.walk_forward import CombinationForecaster

        window_columns = tuple(window_columns)
        if isinstance(model, CombinationForecaster):
            return cls.from_combination(name, model, window_columns, dispersion, timeframe, window_length)
        if isinstance(model, ResidualHARPlusForecaster):
            served = cls.from_residual(model, window_columns, dispersion, timeframe)
        elif isinstance(model, HARPlusBaseline):
            served = cls.from_har_plus(model, dispersion, timeframe)
        elif BASELINES.get(getattr(model, "name", "")) is type(model):
            served = cls.from_baseline(model, dispersion, timeframe, window_length)
        elif _is_lstm(model):
            raise ValueError(
                f"{name}: the LSTM is not servable under the frame contract; use packaging.log_lstm_model"
            )
        else:
            raise ValueError(
                f"{name}: {type(model).__name__} is not servable under the frame contract "
                "(servable: the baselines, HAR+, the HAR+ residual and their combination)"
            )
        absent = [c for c in served.feature_columns if c not in window_columns]
        if absent:
            raise ValueError(f"{name}: the model reads {absent}, which are not among the window columns")
        served.name = name
        return served

    @classmethod
    def from_har_plus(
        cls, model: HARPlusBaseline, dispersion: LogResidualDispersion | None = None, timeframe: str = "1h"
    ) -> FrameForecaster:
        """HAR+ reads bar t only: its input is the columns its terms read, one row per symbol suffices."""
        if model.coef is None:
            raise ValueError("har_plus: fit it before packaging")
        return cls(model, "har_plus", model.required_columns(), 1, dispersion, timeframe, name=model.name)

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
        columns = tuple(window_columns)
        index = model.ensemble.sequence_index
        at_index = tuple(columns[i] if i < len(columns) else None for i in index)
        if at_index != tuple(model.config.sequence_features):
            raise ValueError(
                f"har_plus_residual: window_columns put {list(at_index)} where the model was fitted on "
                f"{list(model.config.sequence_features)}: pass the training windows' feature_columns"
            )
        return cls(
            model, "har_plus_residual", window_columns, model.config.sequence_length, dispersion, timeframe
        )

    @classmethod
    def from_baseline(
        cls,
        model: Any,
        dispersion: LogResidualDispersion | None = None,
        timeframe: str = "1h",
        window_length: int = SEQUENCE_LENGTH,
    ) -> FrameForecaster:
        """A fitted baseline: its columns and length from `BASELINE_READS` (unfitted → NotFittedError)."""
        model.to_state()  # raises NotFittedError now rather than at the first request
        columns, whole_window = BASELINE_READS[model.name]
        length = window_length if whole_window else 1
        return cls(model, "baseline", columns, length, dispersion, timeframe, name=model.name)

    @classmethod
    def from_combination(
        cls,
        name: str,
        model: Any,
        window_columns: Sequence[str],
        dispersion: LogResidualDispersion | None = None,
        timeframe: str = "1h",
        window_length: int = SEQUENCE_LENGTH,
    ) -> FrameForecaster:
        """Each weighted member packaged by itself (`from_fitted`), the weights and residuals kept."""
        members = {
            member: cls.from_fitted(
                member, model.members[member], window_columns, None, timeframe, window_length=window_length
            )
            for member in model.weights.weights
        }
        combination = FrameCombination(model.weights, members, model.validation_log_residuals)
        return cls(
            combination,
            "combination",
            combination.feature_columns,
            combination.sequence_length,
            dispersion,
            timeframe,
            name=name,
        )

    # -- serving ------------------------------------------------------------------------------------

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
        if pf["symbol"].null_count() or pf["ts"].null_count():
            raise ValueError("the feature frame has rows without a symbol or a ts")
        if pf.select(pl.struct("symbol", "ts").is_duplicated().any()).item():
            raise ValueError("the feature frame has duplicate (symbol, ts) rows")
        if self.symbols is not None:
            unknown = sorted(set(pf["symbol"].unique().to_list()) - self.symbols)
            if unknown:
                raise ValueError(
                    f"the {self.name} model was fitted on {sorted(self.symbols)}; it has no parameters "
                    f"for symbol(s) {unknown}"
                )
        scored = self.score(pf.drop("_row"))
        forecasts = scored[OUTPUT_COLUMN].to_numpy()
        if self.dispersion is not None:
            bands = {}
            for level in self.dispersion.levels:
                lo, hi = volatility_interval(forecasts, self.dispersion, level)
                bands[f"lower_{round(level * 100)}"], bands[f"upper_{round(level * 100)}"] = lo, hi
            scored = scored.with_columns(pl.Series(k, v, dtype=pl.Float64) for k, v in bands.items())
        out = pf.select("_row", "symbol", "ts").join(scored, on=["symbol", "ts"], how="left").sort("_row")
        return out.drop("_row").to_pandas().astype({c: "float64" for c in self.output_columns[2:]})

    def score(self, pf: pl.DataFrame) -> pl.DataFrame:
        """(symbol, ts, predicted_volatility) for the rows of a checked frame that have a forecast.

        No symbol check here: `predict_frame` (or the combination holding this member) did it."""
        if isinstance(self.model, FrameCombination):
            return self.model.score(pf)
        windows = self.windows(pf)
        forecasts = np.asarray(self.model.predict(windows), dtype=np.float64) if len(windows) else np.zeros(0)
        return pl.DataFrame(
            {"symbol": windows.symbol.astype(str), "ts": windows.ts, OUTPUT_COLUMN: forecasts},
            schema={"symbol": pl.Utf8, "ts": pl.Int64, OUTPUT_COLUMN: pl.Float64},
        )

    def windows(self, pf: pl.DataFrame) -> WindowSet:
        """The complete windows of this forecaster's layout in a frame (`symbol`, `ts`, its columns)."""
        if not self.feature_columns:
            # A symbol-only model (expanding_mean): every row is a complete, empty window.
            n = pf.height
            return WindowSet(
                X=np.zeros((n, 1, 0), dtype=np.float32),
                y=np.full(n, np.nan),
                ts=pf["ts"].cast(pl.Int64).to_numpy(),
                symbol=pf["symbol"].cast(pl.Utf8).to_numpy().astype(object),
                feature_columns=(),
                bar_ms=timeframe_ms(self.timeframe),
                horizon=self.horizon,
            )
        return build_windows(
            pf,
            self.feature_columns,
            timeframe=self.timeframe,
            sequence_length=self.sequence_length,
            horizon=self.horizon,
            with_target=False,
            # No target is read (with_target=False); build_windows still wants a per-bar column for it.
            return_column=self.feature_columns[0],
        )

    # -- persistence --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "baseline":
            save_baseline(self.model, directory / MODEL_DIR)
        else:
            self.model.save(directory / MODEL_DIR)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "name": self.name,
            "feature_columns": list(self.feature_columns),
            "sequence_length": self.sequence_length,
            "timeframe": self.timeframe,
            "horizon": self.horizon,
            "dispersion": None if self.dispersion is None else self.dispersion.to_dict(),
            # For the reader; on load the symbols are taken from the model itself.
            "symbols": None if self.symbols is None else sorted(self.symbols),
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
            name=header.get("name"),
        )


class FrameCombination:
    """A `CombinationForecaster` whose members are `FrameForecaster`s, each scoring the frame itself.

    Members are scored separately because each needs its own window layout (the residual indexes its
    columns by position, ewma and garch run through 48 bars, HAR+ reads one); a row is combined where
    every member has a finite, positive forecast, else it gets none (NaN)."""

    def __init__(
        self,
        weights: CombinationWeights,
        members: Mapping[str, FrameForecaster],
        validation_log_residuals: np.ndarray | None = None,
    ) -> None:
        absent = [m for m in weights.weights if m not in members]
        if absent:
            raise ValueError(f"combination: no packaged member for {absent}")
        self.weights = weights
        self.members = {m: members[m] for m in weights.weights}
        self.validation_log_residuals = (
            np.zeros(0) if validation_log_residuals is None else np.asarray(validation_log_residuals)
        )

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for m in self.members.values() for c in m.feature_columns))

    @property
    def sequence_length(self) -> int:
        return max(m.sequence_length for m in self.members.values())

    def score(self, pf: pl.DataFrame) -> pl.DataFrame:
        names = list(self.members)
        parts = [
            self.members[n].score(pf).rename({OUTPUT_COLUMN: f"_member_{i}"}) for i, n in enumerate(names)
        ]
        joined = reduce(lambda a, b: a.join(b, on=["symbol", "ts"], how="inner"), parts)
        member_vol = {n: joined[f"_member_{i}"].to_numpy() for i, n in enumerate(names)}
        ok = np.logical_and.reduce([np.isfinite(v) & (v > 0) for v in member_vol.values()])
        combined = np.full(joined.height, np.nan)
        if ok.any():
            combined[ok] = combine(self.weights, {n: v[ok] for n, v in member_vol.items()})
        return joined.select("symbol", "ts").with_columns(
            pl.Series(OUTPUT_COLUMN, combined, dtype=pl.Float64)
        )

    def predict(self, windows: WindowSet) -> np.ndarray:
        """The combination on the training windows' layout (what `CombinationForecaster.predict` does)."""
        return combine(self.weights, {n: m.model.predict(windows) for n, m in self.members.items()})

    def params(self) -> dict[str, Any]:
        return {**self.weights.to_dict(), "members": {n: m.kind for n, m in self.members.items()}}

    def save(self, path: str | Path) -> Path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        names = list(self.members)
        for i, n in enumerate(names):  # by index: a member's name need not be a safe path
            self.members[n].save(directory / COMBINATION_MEMBERS_DIR / str(i))
        header = {"weights": self.weights.to_dict(), "members": names}
        (directory / COMBINATION_HEADER).write_text(json.dumps(header, indent=2) + "\n")
        np.savez(directory / COMBINATION_ARRAYS, validation_log_residuals=self.validation_log_residuals)
        return directory

    @classmethod
    def load(cls, path: str | Path) -> FrameCombination:
        directory = Path(path)
        header = json.loads((directory / COMBINATION_HEADER).read_text())
        members = {
            n: FrameForecaster.load(directory / COMBINATION_MEMBERS_DIR / str(i))
            for i, n in enumerate(header["members"])
        }
        with np.load(directory / COMBINATION_ARRAYS) as arrays:
            residuals = arrays["validation_log_residuals"].astype(np.float64)
        return cls(CombinationWeights.from_dict(header["weights"]), members, residuals)
