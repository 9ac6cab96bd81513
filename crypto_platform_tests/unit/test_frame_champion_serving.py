"""Serving a feature-frame champion (HAR+ fitted on simulated bars): the model store's contract branch,
the cross-symbol frame (serving.core.frames), the API's per-bar memo and the uncertainty it returns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl
import pytest

from crypto_platform.lib.features import compute_features
from crypto_platform.lib.model.frame_serving import FRAME_CONTRACT, WINDOW_CONTRACT, FrameForecaster
from crypto_platform.lib.model.intervals import expected_shortfall, value_at_risk, volatility_interval
from crypto_platform.lib.model.windows import FEATURE_BARS
from crypto_platform_tests.fixtures.frame_models import (
    FRAME_SYMBOLS,
    HOUR_MS,
    fit_har_plus_champion,
    frame_rows,
    log_frame_champion,
    simulated_bars,
)
from serving.api.scoring import FeatureCache, NotEnoughHistoryError, ml_prediction
from serving.core import frames
from serving.core.market import Bars
from serving.core.model_store import LoadedModel, ModelStore, load_version, version_contract

FIT_END_MS = 1_700_000_000_000 // HOUR_MS * HOUR_MS
SERVE_END_MS = FIT_END_MS + 30 * 24 * HOUR_MS  # served bars come after the fitted ones


@pytest.fixture(scope="module")
def champion() -> FrameForecaster:
    forecaster, _ = fit_har_plus_champion(end_ms=FIT_END_MS)
    return forecaster


def served_model(forecaster: FrameForecaster, version: str = "1", calls: list[int] | None = None):
    """The LoadedModel `load_version` makes of a frame champion, without MLflow (counting calls)."""

    def predict_frame(frame):
        if calls is not None:
            calls.append(len(frame))
        return forecaster.predict_frame(frame)

    return LoadedModel(
        name="m",
        version=version,
        alias="champion",
        family="har_plus",
        run_id=f"run-{version}",
        load_time=0.0,
        metrics={},
        sequence_length=forecaster.sequence_length,
        feature_columns=forecaster.feature_columns,
        timeframe="1h",
        horizon_bars=forecaster.horizon,
        predict=lambda X: np.zeros(len(X)),
        contract=FRAME_CONTRACT,
        predict_frame=predict_frame,
        symbols=forecaster.symbols,
        dispersion=forecaster.dispersion,
    )


def serve_window(end_ms: int = SERVE_END_MS) -> pl.DataFrame:
    """The last FEATURE_BARS closed bars before `end_ms` of both symbols (what the API holds)."""
    return simulated_bars(FRAME_SYMBOLS, end_ms - FEATURE_BARS * HOUR_MS, end_ms, seed=7)


def expected_last(forecaster: FrameForecaster, bars: pl.DataFrame) -> dict[str, float]:
    """The contract's answer at each symbol's newest bar, from a frame over a longer history."""
    longer = simulated_bars(FRAME_SYMBOLS, SERVE_END_MS - 2000 * HOUR_MS, SERVE_END_MS, seed=7)
    out = forecaster.predict_frame(frame_rows(longer))
    last = out[out["ts"] == int(bars["ts"].max())]
    return dict(zip(last["symbol"], last["predicted_volatility"], strict=True))


# --- the model store ---------------------------------------------------------------------------------


def test_the_contract_comes_from_the_tag_or_the_metadata_and_must_agree():
    assert version_contract("m", "1", {}, None) == WINDOW_CONTRACT  # versions from before the tag
    assert version_contract("m", "1", {}, {"input_contract": FRAME_CONTRACT}) == FRAME_CONTRACT
    assert version_contract("m", "1", {"input_contract": FRAME_CONTRACT}, None) == FRAME_CONTRACT
    with pytest.raises(ValueError, match="tag says 'window-array/v1'"):
        version_contract("m", "1", {"input_contract": WINDOW_CONTRACT}, {"input_contract": FRAME_CONTRACT})
    with pytest.raises(ValueError, match="unknown input contract 'frame/v9'"):
        version_contract("m", "1", {"input_contract": "frame/v9"}, None)


@pytest.fixture
def sqlite_mlflow(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("frame-serving", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_the_model_store_loads_a_logged_frame_champion_and_scores_a_feature_frame(sqlite_mlflow, champion):
    from mlflow import MlflowClient

    from crypto_platform.lib.model import registry

    _, fitted_rows = fit_har_plus_champion(end_ms=FIT_END_MS)
    tagged = log_frame_champion(champion, fitted_rows, sqlite_mlflow, "frame-m")
    untagged = log_frame_champion(champion, fitted_rows, sqlite_mlflow, "frame-m", tag_contract=False)
    client = MlflowClient(sqlite_mlflow)
    rows = frame_rows(serve_window())
    for version in (tagged, untagged):  # untagged: the pyfunc's own metadata says frame
        mv = client.get_model_version("frame-m", version)
        model = load_version(sqlite_mlflow, "frame-m", version, "champion", dict(mv.tags), mv.run_id)
        assert model.is_frame and model.contract == FRAME_CONTRACT
        assert model.symbols == FRAME_SYMBOLS and model.interval_levels == (0.8, 0.95)
        info = model.info()
        assert (info["input_contract"], info["interval_levels"], info["symbols"]) == (
            FRAME_CONTRACT,
            [0.8, 0.95],
            list(FRAME_SYMBOLS),
        )
        assert model.metrics == {"holdout_qlike": 0.2} and model.feature_columns == champion.feature_columns
        pd.testing.assert_frame_equal(model.predict_frame(rows), champion.predict_frame(rows), rtol=1e-12)
        with pytest.raises(TypeError, match="feature frames"):
            model.predict(np.zeros((1, 1, len(model.feature_columns)), dtype=np.float32))
    assert client.get_model_version("frame-m", untagged).tags.get("input_contract") is None

    # Through the store, as the API and the scorer load it: the alias resolves, the version is swapped in.
    registry.move_alias(client, "champion", tagged, "frame-m")
    store = ModelStore(sqlite_mlflow, "frame-m", "champion")
    outcome = store.refresh()
    assert outcome.success, outcome.message
    assert store.require().is_frame and store.require().version == tagged


# --- the cross-symbol frame ----------------------------------------------------------------------------


def per_symbol_features(bars: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {
        str(s): compute_features(part.drop("symbol"), "1h")
        for (s,), part in bars.group_by("symbol", maintain_order=True)
    }


def test_a_frame_from_per_symbol_features_forecasts_what_the_contract_forecasts(champion):
    bars = serve_window()
    model = served_model(champion)
    frame = frames.cross_symbol_features(per_symbol_features(bars), "1h")
    last = int(bars["ts"].max())
    scores = frames.score_frame(model, frame, [(s, last) for s in FRAME_SYMBOLS], FRAME_SYMBOLS)
    expected = expected_last(champion, bars)
    assert scores.missing == {}
    for symbol in FRAME_SYMBOLS:
        assert scores.forecasts[(symbol, last)] == pytest.approx(expected[symbol], rel=1e-9)


def test_a_stale_symbol_means_no_forecast_with_the_reason_never_an_error(champion):
    bars = serve_window()
    last = int(bars["ts"].max())
    stale = bars.filter(~((pl.col("symbol") == "ETH/USDT") & (pl.col("ts") == last)))
    frame = frames.cross_symbol_features(per_symbol_features(stale), "1h")
    model = served_model(champion)
    scores = frames.score_frame(model, frame, [("BTC/USDT", last)], FRAME_SYMBOLS)
    assert scores.forecasts == {}
    reason, message = scores.missing[("BTC/USDT", last)]
    assert reason == frames.STALE and "ETH/USDT has no bar" in message
    # An empty buffer is the same case; too little history is a NaN from the model, also no forecast.
    only_btc = frames.cross_symbol_features({"BTC/USDT": per_symbol_features(bars)["BTC/USDT"]}, "1h")
    assert frames.score_frame(model, only_btc, [("BTC/USDT", last)], FRAME_SYMBOLS).missing
    short = bars.filter(pl.col("ts") > last - 100 * HOUR_MS)
    short_scores = frames.score_frame(
        model,
        frames.cross_symbol_features(per_symbol_features(short), "1h"),
        [("BTC/USDT", last)],
        FRAME_SYMBOLS,
    )
    assert short_scores.missing[("BTC/USDT", last)][0] == frames.NO_FORECAST


# --- the API's scoring -------------------------------------------------------------------------------


class HeldBars:
    """A MarketService that serves held frames (per symbol), counting fetches."""

    def __init__(self, bars: pl.DataFrame) -> None:
        self.frames = {str(s): part.drop("symbol") for (s,), part in bars.group_by("symbol")}
        self.fetched: list[str] = []

    def bars(self, symbol: str, timeframe: str, n: int) -> Bars:
        self.fetched.append(symbol)
        frame = self.frames.get(symbol, pl.DataFrame(schema={"ts": pl.Int64}))
        last_closed = max(int(f["ts"].max()) for f in self.frames.values())
        return Bars(symbol, timeframe, frame.tail(n), "simulated", "store", last_closed)

    def cached_bars(self, symbol: str, timeframe: str, n: int) -> Bars | None:
        return None


def test_the_api_scores_one_frame_per_bar_for_every_symbol_and_adds_intervals_and_var(champion):
    bars = serve_window()
    market = HeldBars(bars)
    cache = FeatureCache(market)  # type: ignore[arg-type]
    calls: list[int] = []
    v1 = served_model(champion, "1", calls)
    expected = expected_last(champion, bars)
    btc, _ = ml_prediction(v1, cache.snapshot("BTC/USDT", "1h"), cache)
    eth, _ = ml_prediction(v1, cache.snapshot("ETH/USDT", "1h"), cache)
    assert len(calls) == 1  # ETH was scored in BTC's frame: one predict_frame call for the bar
    for ml, symbol in ((btc, "BTC/USDT"), (eth, "ETH/USDT")):
        predicted = ml.predicted_volatility
        assert predicted == pytest.approx(expected[symbol], rel=1e-9)
        assert [i.level for i in ml.intervals] == [0.8, 0.95]
        for interval in ml.intervals:
            lower, upper = volatility_interval(predicted, champion.dispersion, interval.level)
            assert (interval.lower, interval.upper) == pytest.approx((float(lower), float(upper)))
        assert ml.intervals[1].lower < ml.intervals[0].lower < predicted < ml.intervals[0].upper
        assert ml.var_level == 0.99
        assert ml.value_at_risk == pytest.approx(float(value_at_risk(predicted, 0.99)))
        assert ml.expected_shortfall == pytest.approx(float(expected_shortfall(predicted, 0.99)))
        assert 0 < ml.value_at_risk < ml.expected_shortfall < 1
    # Another version (a reload) scores its own frame; the memo never answers for it.
    v2 = served_model(champion, "2", calls)
    ml_prediction(v2, cache.snapshot("BTC/USDT", "1h"), cache)
    assert len(calls) == 2


def test_the_api_refuses_a_frame_forecast_when_another_symbol_has_no_bars(champion):
    bars = serve_window().filter(pl.col("symbol") == "BTC/USDT")
    cache = FeatureCache(HeldBars(bars))  # type: ignore[arg-type]
    with pytest.raises(NotEnoughHistoryError, match="ETH/USDT"):
        ml_prediction(served_model(champion), cache.snapshot("BTC/USDT", "1h"), cache)


def test_a_window_model_has_no_intervals_but_its_var_and_es(champion):
    from crypto_platform.lib.features import MODEL_FEATURES
    from crypto_platform.lib.model.windows import SEQUENCE_LENGTH

    bars = serve_window()
    cache = FeatureCache(HeldBars(bars))  # type: ignore[arg-type]
    window_model = LoadedModel(
        "m", "7", "champion", "lstm", None, 0.0, {}, SEQUENCE_LENGTH, MODEL_FEATURES, "1h", 24,
        predict=lambda X: np.full(len(X), 0.04),
    )  # fmt: skip
    ml, _ = ml_prediction(window_model, cache.snapshot("BTC/USDT", "1h"), cache)
    assert ml.intervals is None and ml.predicted_volatility == 0.04
    assert ml.value_at_risk == pytest.approx(1 - math.exp(-2.3263478740408408 * 0.04))


def test_a_symbol_the_model_was_not_fitted_on_gets_no_forecast_and_leaves_the_others_unchanged(champion):
    """HAR+ holds per-asset statistics: an unseen symbol gets the model's symbols in the reason, never
    foreign parameters, and asking for it does not change the fitted symbols' cross-asset column."""
    sol = simulated_bars(("SOL/USDT",), SERVE_END_MS - FEATURE_BARS * HOUR_MS, SERVE_END_MS, seed=7)
    bars = pl.concat([serve_window(), sol])
    cache = FeatureCache(HeldBars(bars))  # type: ignore[arg-type]
    model = served_model(champion)
    with pytest.raises(NotEnoughHistoryError, match=r"fitted on \['BTC/USDT', 'ETH/USDT'\].*SOL/USDT"):
        ml_prediction(model, cache.snapshot("SOL/USDT", "1h"), cache)
    btc, _ = ml_prediction(model, cache.snapshot("BTC/USDT", "1h"), cache)
    assert btc.predicted_volatility == pytest.approx(
        expected_last(champion, serve_window())["BTC/USDT"], rel=1e-9
    )


def test_a_multi_bar_window_model_gets_its_whole_window_of_rows_from_the_frame(champion):
    """A residual reads its last 24 rows: `score_frame` must send them all (HAR+ read as a 24-bar
    window forecasts what it forecasts from one bar, since it reads the window's last bar)."""
    windowed = FrameForecaster(
        champion.model, "har_plus", champion.feature_columns, 24, champion.dispersion, champion.timeframe
    )
    bars = serve_window()
    last = int(bars["ts"].max())
    frame = frames.cross_symbol_features(per_symbol_features(bars), "1h")
    targets = [(s, last) for s in FRAME_SYMBOLS]
    one_bar = frames.score_frame(served_model(champion), frame, targets, FRAME_SYMBOLS)
    whole = frames.score_frame(served_model(windowed), frame, targets, FRAME_SYMBOLS)
    assert whole.missing == {} and whole.forecasts == pytest.approx(one_bar.forecasts, rel=1e-12)
    # A hole inside BTC's 24-bar window: no complete window, so no forecast for BTC; ETH is unaffected.
    holed = bars.filter(~((pl.col("symbol") == "BTC/USDT") & (pl.col("ts") == last - 10 * HOUR_MS)))
    frame = frames.cross_symbol_features(per_symbol_features(holed), "1h")
    scores = frames.score_frame(served_model(windowed), frame, targets, FRAME_SYMBOLS)
    assert scores.missing[("BTC/USDT", last)][0] == frames.NO_FORECAST
    assert ("ETH/USDT", last) in scores.forecasts
