"""Every walk-forward candidate packaged with `FrameForecaster.from_fitted`, saved, loaded and served
from the feature frame: the frame forecasts equal `model.predict(windows)` on the same bars."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import polars as pl
import pytest

from crypto_platform.lib.features import compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.market.timeframes import HOUR_MS
from crypto_platform.lib.model.baselines import BASELINES, NotFittedError, load_baseline, save_baseline
from crypto_platform.lib.model.frame_serving import (
    BASELINE_READS,
    HEADER_FILE,
    MODEL_DIR,
    OUTPUT_COLUMN,
    FrameCombination,
    FrameForecaster,
)
from crypto_platform.lib.model.har_features import har_plus_features
from crypto_platform.lib.model.har_plus import HARPlusBaseline, HARPlusConfig
from crypto_platform.lib.model.intervals import fit_dispersion
from crypto_platform.lib.model.walk_forward import (
    CombinationForecaster,
    FoldContext,
    baseline_candidate,
    candidate_windows,
    combination_candidate,
    har_plus_candidate,
)
from crypto_platform.lib.model.windows import SEQUENCE_LENGTH, WindowSet

SYMBOLS = ("BTC/USDT", "ETH/USDT")
START_MS = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
N_BARS = 1900  # 720 bars of feature look-back, then ~1100 windows per symbol (GARCH needs 500)
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def features() -> pl.DataFrame:
    """Simulated bars → `compute_features` → `har_plus_features`, as `candidate_windows` builds them."""
    bars = pl.concat(
        simulate_ohlcv(sym, "1h", START_MS, START_MS + N_BARS * HOUR_MS).with_columns(
            pl.lit(sym).alias("symbol")
        )
        for sym in SYMBOLS
    )
    return har_plus_features(compute_features(bars))


@pytest.fixture(scope="module")
def windows(features) -> WindowSet:
    windows, _ = candidate_windows(features)
    assert len(windows) > 1500 and set(windows.symbol) == set(SYMBOLS)
    return windows


@pytest.fixture(scope="module")
def fitted(windows) -> dict[str, object]:
    """Every baseline, HAR+ and their combination, fitted like a walk-forward fold fits them."""
    specs = [*(baseline_candidate(b) for b in BASELINES), har_plus_candidate(), combination_candidate()]
    by_name = {c.name: c for c in specs}
    models: dict[str, object] = {}
    for spec in specs:
        models[spec.name] = spec.fit(windows, FoldContext(0, models, by_name))
    return models


def _by_key(symbols, ts, values) -> dict[tuple[str, int], float]:
    return {(str(s), int(t)): float(v) for s, t, v in zip(symbols, ts, values, strict=True)}


def assert_frame_matches_windows(out: pd.DataFrame, model, windows: WindowSet) -> None:
    """Every window's bar has a frame forecast, equal to the model's window forecast within 1e-9."""
    expected = _by_key(windows.symbol, windows.ts, model.predict(windows))
    got = _by_key(out["symbol"], out["ts"], out[OUTPUT_COLUMN])
    diffs = np.array([got[k] - v for k, v in expected.items()])
    assert np.isfinite(diffs).all(), "a bar with a training window got no frame forecast"
    assert np.max(np.abs(diffs)) <= TOLERANCE


def _round_trip(served: FrameForecaster, tmp_path) -> FrameForecaster:
    return FrameForecaster.load(served.save(tmp_path / served.name))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_is_served_from_the_frame_as_fitted(tmp_path, features, windows, fitted, name):
    model = fitted[name]
    served = FrameForecaster.from_fitted(name, model, windows.feature_columns)
    assert served.kind == "baseline" and served.name == name
    columns, whole_window = BASELINE_READS[name]
    assert served.feature_columns == columns
    assert served.sequence_length == (SEQUENCE_LENGTH if whole_window else 1)
    loaded = _round_trip(served, tmp_path)
    assert type(loaded.model) is type(model) and loaded.model.params() == model.params()
    shuffled = features.sample(fraction=1.0, shuffle=True, seed=5).to_pandas()
    out = loaded.predict_frame(shuffled)
    assert list(out["ts"]) == list(shuffled["ts"]) and list(out["symbol"]) == list(shuffled["symbol"])
    assert_frame_matches_windows(out, model, windows)
    header = json.loads((tmp_path / name / HEADER_FILE).read_text())
    assert header["kind"] == "baseline" and header["name"] == name
    assert not list((tmp_path / name).rglob("*.pkl"))


def test_the_baseline_reads_table_is_what_each_predict_reads(windows, fitted):
    for name, (columns, whole_window) in BASELINE_READS.items():
        model = fitted[name]
        narrow = dataclasses.replace(
            windows, X=windows.X[:, :, [windows.column_index(c) for c in columns]], feature_columns=columns
        )
        reference = model.predict(windows)
        np.testing.assert_array_equal(model.predict(narrow), reference)
        for dropped in columns:  # every listed column is really read
            keep = tuple(c for c in columns if c != dropped)
            short = dataclasses.replace(
                windows, X=windows.X[:, :, [windows.column_index(c) for c in keep]], feature_columns=keep
            )
            with pytest.raises(KeyError, match=dropped):
                model.predict(short)
        last_bar = dataclasses.replace(narrow, X=narrow.X[:, -1:, :])
        if whole_window:  # the earlier bars matter: one bar is not the same forecast
            assert np.max(np.abs(model.predict(last_bar) - reference)) > 1e-6
        else:
            np.testing.assert_array_equal(model.predict(last_bar), reference)


def test_per_symbol_state_survives_the_round_trip(tmp_path, windows, fitted):
    for name in ("garch", "expanding_mean"):
        loaded = load_baseline(save_baseline(fitted[name], tmp_path / name))
        assert loaded.params() == fitted[name].params()
        assert loaded.symbols == SYMBOLS
        np.testing.assert_array_equal(loaded.predict(windows), fitted[name].predict(windows))
    garch = fitted["garch"].params()["per_symbol"]
    assert garch["BTC/USDT"] != garch["ETH/USDT"]  # two fits, not one pooled one
    with pytest.raises(NotFittedError):
        save_baseline(BASELINES["garch"](), tmp_path / "unfitted")
    with pytest.raises(NotFittedError):
        FrameForecaster.from_fitted("ewma", BASELINES["ewma"](), windows.feature_columns)


def test_ewma_and_garch_need_their_whole_window_of_consecutive_bars(features, windows, fitted):
    served = FrameForecaster.from_fitted("garch", fitted["garch"], windows.feature_columns)
    # Only the last 60 bars per symbol: the first 47 of each lack a 48-bar window.
    recent = features.sort("ts").group_by("symbol", maintain_order=True).tail(60)
    out = served.predict_frame(recent.to_pandas()).sort_values(["symbol", "ts"])
    for _, rows in out.groupby("symbol"):
        assert rows[OUTPUT_COLUMN].iloc[: SEQUENCE_LENGTH - 1].isna().all()
        assert rows[OUTPUT_COLUMN].iloc[SEQUENCE_LENGTH - 1 :].notna().all()
    mean = FrameForecaster.from_fitted("expanding_mean", fitted["expanding_mean"], windows.feature_columns)
    assert mean.feature_columns == ()
    latest = features.sort("ts").group_by("symbol", maintain_order=True).tail(1)
    one_row = mean.predict_frame(latest.select("symbol", "ts").to_pandas())  # the symbol is all it reads
    per_symbol = fitted["expanding_mean"].params()["per_symbol_vol"]
    assert dict(zip(one_row["symbol"], one_row[OUTPUT_COLUMN], strict=True)) == per_symbol


def test_har_plus_from_fitted(tmp_path, features, windows, fitted):
    model = fitted["har_plus"]
    served = FrameForecaster.from_fitted(
        "har_plus", model, windows.feature_columns, fit_dispersion(model.validation_log_residuals)
    )
    assert (served.kind, served.sequence_length, served.feature_columns) == (
        "har_plus",
        1,
        model.required_columns(),
    )
    out = _round_trip(served, tmp_path).predict_frame(features.to_pandas())
    assert_frame_matches_windows(out, model, windows)
    assert {"lower_80", "upper_95"} <= set(out.columns)


def test_the_combination_is_served_member_by_member(tmp_path, features, windows, fitted):
    model = fitted["combination"]
    assert isinstance(model, CombinationForecaster)
    assert set(model.weights.weights) == {"har_plus", "har", "ewma", "garch"}
    disp = fit_dispersion(model.validation_log_residuals)
    served = FrameForecaster.from_fitted("combination", model, windows.feature_columns, disp)
    assert served.kind == "combination" and served.sequence_length == SEQUENCE_LENGTH
    loaded = _round_trip(served, tmp_path)
    assert isinstance(loaded.model, FrameCombination)
    assert {n: m.kind for n, m in loaded.model.members.items()} == {
        "har_plus": "har_plus",
        "har": "baseline",
        "ewma": "baseline",
        "garch": "baseline",
    }
    assert loaded.model.weights == model.weights
    np.testing.assert_array_equal(loaded.model.validation_log_residuals, model.validation_log_residuals)
    members_dir = tmp_path / "combination" / MODEL_DIR / "members"
    kinds = sorted(json.loads(p.read_text())["kind"] for p in members_dir.glob(f"*/{HEADER_FILE}"))
    assert kinds == ["baseline", "baseline", "baseline", "har_plus"]  # each member its own artifact
    out = loaded.predict_frame(features.to_pandas())
    assert_frame_matches_windows(out, model, windows)
    np.testing.assert_array_equal(loaded.model.predict(windows), model.predict(windows))
    pd.testing.assert_frame_equal(out, served.predict_frame(features.to_pandas()), rtol=0, atol=0)


def test_a_symbol_the_model_was_not_fitted_on_is_refused_by_name(features, windows, fitted):
    foreign = features.filter(pl.col("symbol") == "ETH/USDT").with_columns(pl.lit("SOL/USDT").alias("symbol"))
    mixed = pl.concat([features.filter(pl.col("symbol") == "BTC/USDT"), foreign]).to_pandas()
    for name in ("garch", "expanding_mean", "har_plus", "combination"):
        served = FrameForecaster.from_fitted(name, fitted[name], windows.feature_columns)
        assert served.symbols == frozenset(SYMBOLS)
        with pytest.raises(ValueError, match="SOL/USDT"):
            served.predict_frame(mixed)
    # naive, ewma and har hold no per-symbol state: any symbol gets the same forecast as its bars'.
    for name in ("naive", "ewma", "har"):
        served = FrameForecaster.from_fitted(name, fitted[name], windows.feature_columns)
        assert served.symbols is None
        out = served.predict_frame(mixed)
        eth = served.predict_frame(features.filter(pl.col("symbol") == "ETH/USDT").to_pandas())
        np.testing.assert_array_equal(
            out.loc[out["symbol"] == "SOL/USDT", OUTPUT_COLUMN].to_numpy(), eth[OUTPUT_COLUMN].to_numpy()
        )


def test_what_the_frame_contract_cannot_serve_is_refused_clearly(windows, fitted):
    from crypto_platform.lib.model.lstm import LSTMForecaster
    from crypto_platform.lib.model.walk_forward import _ColumnsForecaster

    with pytest.raises(ValueError, match="log_lstm_model"):
        FrameForecaster.from_fitted("lstm", LSTMForecaster(), windows.feature_columns)
    # What `walk_forward.lstm_candidate` hands the gate: the LSTM behind a column selector.
    with pytest.raises(ValueError, match="log_lstm_model"):
        FrameForecaster.from_fitted("lstm", _ColumnsForecaster(LSTMForecaster(), ("log_ret",)), ("log_ret",))

    class Stranger:
        name = "stranger"

        def predict(self, w):
            return np.ones(len(w))

    with pytest.raises(ValueError, match="Stranger is not servable"):
        FrameForecaster.from_fitted("stranger", Stranger(), windows.feature_columns)
    with pytest.raises(ValueError, match="not among the window columns"):
        FrameForecaster.from_fitted("har", fitted["har"], ("log_ret",))
    served = FrameForecaster.from_fitted("har", fitted["har"], windows.feature_columns)
    no_symbol = pd.DataFrame({"symbol": [None], "ts": [0], **{c: [0.1] for c in served.feature_columns}})
    with pytest.raises(ValueError, match="without a symbol"):
        served.predict_frame(no_symbol)


def test_an_unfitted_har_plus_cannot_be_packaged(windows):
    with pytest.raises(ValueError, match="fit it"):
        FrameForecaster.from_fitted("har_plus", HARPlusBaseline(HARPlusConfig()), windows.feature_columns)


def test_the_residual_and_a_combination_holding_it(tmp_path, features, windows, fitted):
    pytest.importorskip("tensorflow")
    from crypto_platform.lib.model.lstm import limit_tf_threads
    from crypto_platform.lib.model.residual import ResidualConfig
    from crypto_platform.lib.model.walk_forward import residual_candidate

    limit_tf_threads(2, 1)
    # Fast but real: an LSTM encoder (positional sequence columns), one seed, one epoch.
    config = dataclasses.replace(
        ResidualConfig.default(), lstm_units=4, seeds=(11,), max_epochs=1, patience=0
    )
    # The combination refits its members on the early block in the order given: the residual's HAR+
    # base must be among them, before it.
    specs = {
        "har_plus": har_plus_candidate(),
        "har": baseline_candidate("har"),
        "har_plus_residual": residual_candidate(config),
        "combination": combination_candidate(("har_plus", "har_plus_residual")),
    }
    models: dict[str, object] = {}
    for name, spec in specs.items():
        models[name] = spec.fit(windows, FoldContext(0, models, specs))
    residual = models["har_plus_residual"]
    served = FrameForecaster.from_fitted("har_plus_residual", residual, windows.feature_columns)
    assert served.feature_columns == windows.feature_columns and served.sequence_length == 24
    with pytest.raises(ValueError, match="pass the training windows' feature_columns"):
        FrameForecaster.from_fitted("har_plus_residual", residual, windows.feature_columns[::-1])
    assert_frame_matches_windows(_round_trip(served, tmp_path).predict_frame(features), residual, windows)
    combo = FrameForecaster.from_fitted("combination", models["combination"], windows.feature_columns)
    loaded = _round_trip(combo, tmp_path)
    assert loaded.model.members["har_plus_residual"].kind == "har_plus_residual"
    assert_frame_matches_windows(loaded.predict_frame(features), models["combination"], windows)


@pytest.fixture
def mlflow_tracking(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("frames", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["garch", "expanding_mean", "combination"])
def test_logged_candidate_serves_the_frame_contract_through_mlflow(
    mlflow_tracking, features, windows, fitted, name
):
    import mlflow

    from crypto_platform.lib.model.packaging import log_frame_forecaster

    model = fitted[name]
    residuals = getattr(model, "validation_log_residuals", None)
    disp = None if residuals is None else fit_dispersion(residuals)
    served = FrameForecaster.from_fitted(name, model, windows.feature_columns, disp)
    rows = features.to_pandas()
    with mlflow.start_run():
        info = log_frame_forecaster(served, name, rows.head(3), registered_model_name=f"frame-{name}")
    assert info.metadata == {"input_contract": "feature-frame/v1", "kind": served.kind}
    pyfunc = mlflow.pyfunc.load_model(f"models:/frame-{name}/1")
    got = pyfunc.predict(rows[["symbol", "ts", *served.feature_columns]])
    pd.testing.assert_frame_equal(got, served.predict_frame(rows), rtol=0, atol=TOLERANCE)
    assert_frame_matches_windows(got, model, windows)
