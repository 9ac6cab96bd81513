"""The forecast track record on real Binance hours: forecasts written to the history DB the way the API
and the prediction sink write them, bars stored the way the pipeline stores them; the track record must
reproduce the benchmark's QLIKE (lib.model.metrics through evaluate_forecasts) on the same bars within
1 %, for the served champion and for every baseline. Then the Dagster asset and its check on the same
data, materialized on a real (ephemeral) instance."""

from __future__ import annotations

import gzip
import json
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, instance_for_test, materialize

from crypto_platform.defs.ml.track_record import (
    BASELINES_SCORED,
    TrackRecordConfig,
    TrackRecordInputs,
    build_track_record_definitions,
    compute_track_record,
)
from crypto_platform.defs.resources import DataStoreResource, MLPlatformResource
from crypto_platform.lib.features import MODEL_FEATURES, compute_features
from crypto_platform.lib.market.schema import normalize_ohlcv
from crypto_platform.lib.model.evaluation import evaluate_forecasts
from crypto_platform.lib.model.training import fit_baselines
from crypto_platform.lib.model.windows import build_windows
from crypto_platform.lib.storage import (
    LocalStore,
    day_start_ms,
    features_key,
    track_record_key,
    with_day_column,
    write_parquet,
)
from crypto_platform.lib.track_record import CHAMPION
from serving.core.history import History, StreamForecast

pytestmark = pytest.mark.integration

SYMBOLS = {"BTCUSDT": "BTC/USDT", "ETHUSDT": "ETH/USDT"}
DAY = date(2025, 3, 14)  # the partition: the 14 days up to it are scored
CONFIG = TrackRecordConfig(window_days=14, baseline_train_days=60)
FIRST = DAY - timedelta(days=CONFIG.window_days - 1)
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def stored(shared_ohlcv_dir, tmp_path_factory):
    """Features of BTC and ETH stored per UTC day as the `features` asset stores them, 40 days of
    warm-up before everything the track record reads."""
    root = tmp_path_factory.mktemp("track-record")
    store = LocalStore(root)
    start = day_start_ms(FIRST - timedelta(days=CONFIG.baseline_train_days + 45))
    end = day_start_ms(DAY + timedelta(days=3))
    frames = []
    for symbol_id, symbol in SYMBOLS.items():
        with gzip.open(shared_ohlcv_dir / f"binance_{symbol_id}_1h.csv.gz") as fh:
            raw = pl.read_csv(fh.read(), schema_overrides={"ts": pl.Int64})
        bars = normalize_ohlcv(raw).filter((pl.col("ts") >= start) & (pl.col("ts") < end))
        frames.append(bars.with_columns(pl.lit(symbol).alias("symbol")))
    features = compute_features(pl.concat(frames))
    for (symbol, day), part in with_day_column(features, "__day").group_by("symbol", "__day"):
        write_parquet(store, features_key(symbol, day), part.drop("__day").sort("ts"))
    return root, features


def _benchmark(features: pl.DataFrame):
    """The benchmark's procedure on the window the track record reads: baselines (and the 'champion',
    HAR here) fitted on the windows whose targets ended before the first scored bar, all scored by
    evaluate_forecasts on the windows of the scored bars."""
    load_first = day_start_ms(FIRST - timedelta(days=CONFIG.baseline_train_days + 2))
    load_end = day_start_ms(DAY + timedelta(days=2))
    frame = features.filter((pl.col("ts") >= load_first) & (pl.col("ts") < load_end))
    windows = build_windows(frame, MODEL_FEATURES)
    first_bar, end_bar = day_start_ms(FIRST), day_start_ms(DAY + timedelta(days=1))
    test_idx = np.flatnonzero((windows.ts >= first_bar) & (windows.ts < end_bar))
    train = windows.take(np.flatnonzero(windows.target_end_ts < windows.ts[test_idx].min()))
    test = windows.take(test_idx)
    fitted, _ = fit_baselines(train, BASELINES_SCORED)
    forecasts = {name: np.asarray(b.predict(test), dtype=np.float64) for name, b in fitted.items()}
    champion = fitted["har"].predict(test) * 1.07  # a served model that is not exactly a baseline
    table = evaluate_forecasts(test.y, {CHAMPION: champion, **forecasts}, ts=test.ts)
    return test, champion, table


# The served intervals: 80 % and 95 % at fixed multiples of the forecast (what the test checks is that
# the record counts what landed inside them, wherever they were stored).
INTERVAL_FACTORS = {0.8: (0.75, 1.35), 0.95: (0.6, 1.8)}


def _intervals(value: float) -> list[dict[str, float]]:
    return [
        {"level": lv, "lower": lo * value, "upper": hi * value} for lv, (lo, hi) in INTERVAL_FACTORS.items()
    ]


def _serve(url: str, test, champion: np.ndarray) -> int:
    """Write the champion's forecasts as the platform would have: ETH's through the prediction sink's
    table (one per bar), BTC's as API requests (two per bar, a duplicate the track record must fold),
    plus forecasts at the last bars of the window whose futures are not stored (pending). Each carries
    its intervals: in the answer the API stored, in the sink's column."""
    history = History(url)
    scorer_rows = []
    for symbol, ts, value in zip(test.symbol.astype(str), test.ts, champion, strict=True):
        intervals = _intervals(float(value))
        if symbol == "ETH/USDT":
            scorer_rows.append(
                StreamForecast(symbol, "1h", "5", int(ts), float(value), intervals=json.dumps(intervals))
            )
            continue
        for _ in range(2):
            history.record_prediction(
                {
                    "symbol": symbol,
                    "exchange": "binance",
                    "timeframe": "1h",
                    "model_version": "5",
                    "predicted_volatility": float(value),
                    "current_volatility": None,
                    "volatility_regime": "normal",
                    "bar_ts": int(ts),
                    "source": "exchange",
                },
                {
                    "symbol": symbol,
                    "ml_prediction": {"predicted_volatility": float(value), "intervals": intervals},
                },
            )
    history.store_stream_forecasts(scorer_rows)
    # served at bars of the window but never scoreable here: the SOL market is not stored
    history.store_stream_forecasts([StreamForecast("SOL/USDT", "1h", "5", day_start_ms(DAY), 0.05)])
    history.flush()
    history.close()
    return len(test) + 1


def test_track_record_reproduces_the_benchmark_qlike_on_the_same_bars(stored, tmp_path):
    root, features = stored
    test, champion, table = _benchmark(features)
    url = f"sqlite:///{tmp_path / 'history.db'}"
    served = _serve(url, test, champion)

    inputs = TrackRecordInputs(LocalStore(root), url, tuple(SYMBOLS.values()), "1h")
    record = compute_track_record(inputs, DAY.isoformat(), CONFIG)

    assert record.n_served == served and record.n_scored == len(test) and record.n_pending == 1
    assert record.sources == {
        "api": int((test.symbol == "BTC/USDT").sum()),
        "scorer": int((test.symbol == "ETH/USDT").sum()),
    }
    assert set(record.scores) == {CHAMPION, *(r.name for r in table.rows if r.name != CHAMPION)}
    for name, score in record.scores.items():
        benchmark = table.row(name).qlike
        assert abs(score.qlike - benchmark) / benchmark < 0.01, (name, score.qlike, benchmark)
        assert score.n == len(test)
    assert record.best_baseline == table.best_baseline
    worse = record.scores[CHAMPION].qlike > record.scores[record.best_baseline].qlike
    assert record.champion_worse_than_best_baseline() is worse
    assert len(record.daily_qlike) == CONFIG.window_days
    assert sum(row["n"] for row in record.daily_qlike) == len(test)
    # the share of realized volatilities inside each served interval, API- and sink-stored alike
    for level, (lo, hi) in INTERVAL_FACTORS.items():
        inside = int(np.sum((test.y >= lo * champion) & (test.y <= hi * champion)))
        assert record.interval_coverage[f"{level:g}"] == {
            "n": len(test),
            "inside": inside,
            "coverage": inside / len(test),
        }
    assert 0 < record.interval_coverage["0.8"]["inside"] < record.interval_coverage["0.95"]["inside"]


def test_the_asset_and_its_check_on_a_dagster_instance(stored, tmp_path):
    root, features = stored
    test, champion, _ = _benchmark(features)
    url = f"sqlite:///{tmp_path / 'history.db'}"
    _serve(url, test, champion * 3.0)  # a badly biased champion: every reasonable baseline beats it
    assets, checks = build_track_record_definitions("2024-01-01")
    resources = {
        "ml": MLPlatformResource(
            tracking_uri="sqlite:///unused.db", symbols=list(SYMBOLS.values()), history_url=url
        ),
        "data_store": DataStoreResource(location=str(root)),
    }
    config = {"ops": {"forecast_track_record": {"config": {"window_days": 14, "baseline_train_days": 60}}}}
    with instance_for_test() as instance:
        result = materialize(
            [*assets, *checks], partition_key=DAY.isoformat(), resources=resources, instance=instance,
            run_config=config, selection=[AssetKey("forecast_track_record")],
        )  # fmt: skip
        assert result.success
        (evaluation,) = result.get_asset_check_evaluations()
    meta = result.asset_materializations_for_node("forecast_track_record")[0].metadata
    assert meta["champion_worse_than_best_baseline"].value is True
    assert meta["n_scored"].value == len(test)
    assert set(meta["interval_coverage"].value) == {"0.8", "0.95"}
    assert not evaluation.passed and evaluation.severity.value == "WARN"
    assert "WORSE than the best baseline" in evaluation.description
    written = json.loads((root / track_record_key(DAY.isoformat())).read_text())
    assert (
        written["scores"][CHAMPION]["n"] == len(test) and (root / "ml/track_record/2025-03-14.png").exists()
    )
