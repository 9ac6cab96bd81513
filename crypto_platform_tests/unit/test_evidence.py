"""The evidence the UI shows, computed from frames, rows and files (serving.api.evidence)."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.features import compute_features
from crypto_platform.lib.market.simulator import simulate_ohlcv
from crypto_platform.lib.model.metrics import qlike
from crypto_platform.lib.storage import LocalStore, quality_report_keys
from serving.api import evidence
from serving.api import evidence_schemas as es
from serving.api.services import InvalidInputError
from serving.core.history import History

HOUR = 3_600_000
T0 = 1_700_000_000_000 // HOUR * HOUR


def _bars(closes: list[float], start: int = T0) -> pl.DataFrame:
    n = len(closes)
    return pl.DataFrame(
        {
            "ts": [start + i * HOUR for i in range(n)],
            "open": closes,
            "high": [c * 1.001 for c in closes],
            "low": [c * 0.999 for c in closes],
            "close": closes,
            "volume": [10.0] * n,
        }
    )


@pytest.fixture(scope="module")
def features() -> pl.DataFrame:
    bars = simulate_ohlcv("BTC/USDT", "1h", T0, T0 + 400 * HOUR, seed=3)
    return compute_features(bars, "1h")


def _served(bar_ts: int, value: float, prediction: dict | None = None, times: int = 1) -> evidence.ServedRow:
    return evidence.ServedRow(bar_ts, "7", value, 1.7e9, times, prediction or {})


def test_realized_after_a_forecast_is_the_realized_vol_of_the_next_24_bars(features):
    made = int(features["ts"][200])
    [matched] = evidence.match_forecasts([_served(made, 0.02)], features, "1h")
    rets = features.filter((pl.col("ts") > made) & (pl.col("ts") <= made + 24 * HOUR))["log_ret"].to_numpy()
    assert len(rets) == 24
    assert matched.target_ts == made + 24 * HOUR
    assert matched.realized_volatility == pytest.approx(math.sqrt(float(np.sum(rets**2))), rel=1e-12)
    assert matched.qlike == pytest.approx(
        qlike(np.array([matched.realized_volatility**2]), np.array([0.02**2]))
    )


def test_a_forecast_whose_bars_have_not_all_closed_is_pending(features):
    made = int(features["ts"][-10])
    [pending] = evidence.match_forecasts([_served(made, 0.02)], features, "1h")
    assert pending.realized_volatility is None and pending.qlike is None


def test_a_hole_in_the_following_bars_leaves_the_forecast_unmatched():
    closes = list(100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.01, 120))))
    bars = _bars(closes).filter(pl.col("ts") != T0 + 80 * HOUR)  # one bar missing inside the target
    feats = compute_features(bars, "1h")
    [unmatched] = evidence.match_forecasts([_served(T0 + 70 * HOUR, 0.02)], feats, "1h")
    [matched] = evidence.match_forecasts([_served(T0 + 90 * HOUR, 0.02)], feats, "1h")
    assert unmatched.realized_volatility is None
    assert matched.realized_volatility is not None


def test_track_record_scores_the_champion_and_each_baseline_on_the_same_forecasts(features):
    made = [int(t) for t in features["ts"][180:360:3]]
    realized_at = dict(features.select("ts", "realized_vol_24").iter_rows())
    # A forecaster that knows the future exactly beats every persistence baseline.
    perfect = [_served(t, realized_at[t + 24 * HOUR]) for t in made]
    forecasts = evidence.match_forecasts(perfect, features, "1h")
    record = evidence.track_record(forecasts, features, window=10)
    assert record.matched == len(made) and record.pending == 0
    assert record.champion_qlike == pytest.approx(0.0, abs=1e-12)
    naive = [realized_at[t] for t in made]
    expected_naive = qlike(np.array([f.realized_volatility**2 for f in forecasts]), np.array(naive) ** 2)
    assert record.baseline_qlike["naive"] == pytest.approx(expected_naive)
    assert record.best_baseline == min(record.baseline_qlike, key=record.baseline_qlike.get)
    assert len(record.rolling) == len(made)
    last_ten = [f.qlike for f in forecasts[-10:]]
    assert record.rolling[-1].champion == pytest.approx(np.mean(last_ten))


def test_track_record_without_matches_explains_itself(features):
    assert evidence.track_record([], features).note.startswith("no forecasts have been served")
    pending = evidence.match_forecasts([_served(int(features["ts"][-1]), 0.02)], features, "1h")
    record = evidence.track_record(pending, features)
    assert record.matched == 0 and record.pending == 1 and "24 bars closed" in record.note


def _listed(*intervals: dict) -> dict:
    return {"intervals": list(intervals), "predicted_volatility": 0.02}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        (
            _listed({"level": 0.8, "lower": 0.015, "upper": 0.03}, {"level": 0.95, "lower": 0.01}),
            es.Interval(lower=0.015, upper=0.03, level=0.8),
        ),
        ({"intervals": None, "predicted_volatility": 0.02}, None),  # a model without dispersion
        ({"predicted_volatility": 0.02}, None),
        (_listed({"level": 0.8, "lower": 0.03, "upper": 0.01}), None),  # inverted bounds are not an interval
        (_listed({"level": 0.8, "lower": "x", "upper": 0.01}), None),
        (_listed({"level": 0.8, "lower": float("nan"), "upper": 0.01}), None),
        ({"intervals": {"level": 0.8, "lower": 0.01, "upper": 0.03}}, None),  # not a list
        # Shapes no release served (a single `interval`, flat bounds) are not guessed at.
        ({"interval": {"lower": 0.01, "upper": 0.03, "level": 0.8}}, None),
        (None, None),
    ],
)
def test_interval_is_the_narrowest_valid_served_interval(prediction, expected):
    assert evidence.interval_of(prediction) == expected


def test_every_served_interval_is_read_narrowest_first_and_broken_ones_left_out():
    prediction = {
        "intervals": [
            {"level": 0.8, "lower": 0.015, "upper": 0.03},
            {"level": 0.9, "lower": 0.02, "upper": None},  # a bound that is not a number
            {"level": 0.95, "lower": 0.01, "upper": 0.04},
        ]
    }
    assert evidence.intervals_of(prediction) == [
        es.Interval(lower=0.015, upper=0.03, level=0.8),
        es.Interval(lower=0.01, upper=0.04, level=0.95),
    ]
    assert evidence.intervals_of({"intervals": None}) == [] and evidence.intervals_of(None) == []


def test_change_over_a_day_is_matched_by_time_not_by_row():
    bars = _bars([100.0 + i for i in range(30)])
    assert evidence.change_over_day(bars, "1h") == pytest.approx(129 / 105 - 1)
    holed = bars.filter(pl.col("ts") != T0 + 5 * HOUR)  # the bar 24 h before the newest is missing
    assert evidence.change_over_day(holed, "1h") is None


def test_regime_spans_join_consecutive_bars_and_skip_undefined_ones():
    frame = pl.DataFrame(
        {"ts": [T0 + i * HOUR for i in range(6)], "vol24": [None, 0.001, 0.002, 0.02, 0.02, 0.001]}
    )
    spans = evidence.regime_spans(frame, "1h")
    assert [(s.regime, (s.start_ts - T0) // HOUR, (s.end_ts - T0) // HOUR) for s in spans] == [
        ("calm", 1, 2),
        ("turbulent", 3, 4),
        ("calm", 5, 5),
    ]


def test_served_forecasts_are_one_per_bar_and_version_with_the_first_payload(tmp_path):
    history = History(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        row = {"symbol": "BTC/USDT", "exchange": "binance", "timeframe": "1h", "volatility_regime": "calm"}
        for i, (bar, version, value) in enumerate(
            [(T0, "1", 0.02), (T0, "1", 0.02), (T0, "2", 0.03), (T0 + HOUR, "1", 0.04)]
        ):
            payload = {
                "ml_prediction": {
                    "predicted_volatility": value,
                    "intervals": [{"level": 0.8, "lower": value / 2, "upper": value * 2}],
                }
            }
            history.record_prediction(
                {
                    **row,
                    "model_version": version,
                    "predicted_volatility": value,
                    "bar_ts": bar,
                    "created_at": 100.0 + i,
                },
                payload,
            )
        history.record_prediction(
            {**row, "symbol": "ETH/USDT", "model_version": "1", "predicted_volatility": 0.5, "bar_ts": T0}, {}
        )
        rows = sorted(
            evidence.served_forecasts(history, "BTC/USDT", "1h", T0, T0 + HOUR),
            key=lambda r: (r.bar_ts, r.model_version),
        )
    finally:
        history.close()
    assert [(r.bar_ts - T0, r.model_version, r.predicted_volatility, r.times_served) for r in rows] == [
        (0, "1", 0.02, 2),
        (0, "2", 0.03, 1),
        (HOUR, "1", 0.04, 1),
    ]
    assert rows[0].first_served_at == 100.0
    # A row stored without the intervals column: read from its stored answer.
    assert evidence.interval_of(rows[0].prediction) == es.Interval(lower=0.01, upper=0.04, level=0.8)


def test_evaluation_rows_come_from_the_logged_artifact():
    document = {
        "primary": "qlike",
        "best_baseline": "har",
        "rows": [
            {"name": "lstm", "kind": "model", "qlike": 0.21, "mse_var": 1e-6, "rmse_vol": 0.01, "mz_a": 0.0,
             "mz_b": 0.9, "mz_r2": 0.3, "dm_stat": -2.1, "dm_pvalue": 0.03, "n": 400},
            {"name": "har", "kind": "baseline", "qlike": 0.25, "dm_stat": None, "n": 400},
            {"kind": "broken row without a name"},
        ],
    }  # fmt: skip
    evaluation = evidence.evaluation_from_artifact(document, "run1", {"holdout_qlike": 0.21})
    assert [r.name for r in evaluation.rows] == ["lstm", "har"]
    assert evaluation.rows[0].dm_pvalue == 0.03 and evaluation.rows[1].dm_stat is None
    assert evaluation.best_baseline == "har" and evaluation.note is None


def test_promotion_entry_reads_the_decision_tags():
    tags = {
        "model_family": "lstm",
        "promotion.decision": "rejected",
        "promotion.reason": "QLIKE 0.3 does not beat champion 0.2",
        "promotion.challenger_qlike": "0.3",
        "promotion.champion_qlike": "0.2",
        "promotion.relative_improvement": "nan",
        "promotion.champion_version": "3",
    }
    entry = evidence.promotion_entry("4", T0, tags)
    assert (entry.decision, entry.reason, entry.challenger_qlike, entry.champion_version) == (
        "rejected", tags["promotion.reason"], 0.3, "3",
    )  # fmt: skip
    assert entry.relative_improvement is None  # not finite: no number rather than NaN in JSON
    assert evidence.promotion_entry("1", None, {}).decision is None


def test_drift_status_keeps_features_and_the_label_apart():
    document = {
        "feature_drift_detected": True,
        "label_drift_detected": False,
        "features": [
            {"feature": "rsi_14", "ks_statistic": 0.3, "p_value_adjusted": 0.001, "psi": 0.4, "drifted": True}
        ],
        "label": {
            "feature": "realized_vol_24",
            "ks_statistic": 0.05,
            "p_value_adjusted": 0.5,
            "psi": 0.01,
            "drifted": False,
        },
        "champion_version": 2,
        "current_window": "2025-05-25..2025-05-31",
    }
    status = evidence.drift_status("ml/drift/2025-05-31.json", document)
    assert [(f.feature, f.drifted, f.is_label) for f in status.features] == [
        ("rsi_14", True, False),
        ("realized_vol_24", False, True),
    ]
    assert status.champion_version == "2" and status.feature_drift_detected is True


def test_latest_drift_and_reports_read_the_newest_files(tmp_path):
    store = LocalStore(tmp_path)
    assert evidence.latest_drift(store)[1].startswith("no feature_drift artifact")
    for day in ("2025-05-30", "2025-05-31"):
        store.write_bytes(
            f"ml/drift/{day}.json", json.dumps({"current_window": day, "features": []}).encode()
        )
    drift, note = evidence.latest_drift(store)
    assert note is None and drift.key == "ml/drift/2025-05-31.json" and drift.current_window == "2025-05-31"
    for day, status in (("2025-05-30", "OK"), ("2025-05-31", "WARN")):
        md, js = quality_report_keys("BTC/USDT", day)
        store.write_bytes(js, json.dumps({"status": status, "rows": 24, "warnings": ["volume"]}).encode())
        store.write_bytes(md, f"### BTC/USDT {day}".encode())
    latest = evidence._latest_quality(store, store.list("quality-reports/"), "BTC/USDT")
    assert (latest.day, latest.status, latest.rows, latest.warnings) == ("2025-05-31", "WARN", 24, ["volume"])
    assert latest.markdown == "### BTC/USDT 2025-05-31"
    assert evidence._latest_quality(store, store.list("quality-reports/"), "ETH/USDT").note.startswith(
        "no quality"
    )


@pytest.mark.parametrize("day", ["2025-13-01", "yesterday", "2025-5-1", "../../etc/passwd"])
def test_a_report_day_must_be_an_iso_day(day):
    with pytest.raises(InvalidInputError) as caught:
        evidence.check_day(day)
    assert caught.value.fields == ["day"]


def test_uris_lose_their_credentials_and_runs_get_links():
    assert evidence.redact_uri("https://user:secret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert (
        evidence.run_url("http://a:b@127.0.0.1:5000/", "3", "abc")
        == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    )
    assert evidence.run_url("sqlite:///mlflow.db", "3", "abc") is None


def test_an_unreachable_tracking_server_is_noticed_without_mlflow_retries():
    from crypto_platform.devtools.ports import free_port

    assert evidence.unreachable_reason(f"http://127.0.0.1:{free_port()}") is not None
    assert evidence.unreachable_reason("sqlite:///mlflow.db") is None


def test_timed_cache_answers_late_without_waiting_and_fills_in_after():
    import threading

    release = threading.Event()
    cache = evidence.TimedCache(ttl_s=60)

    def slow() -> str:
        release.wait(5)
        return "done"

    assert cache.get_within("k", slow, 0.05, lambda: "late") == "late"
    release.set()
    for _ in range(100):
        if cache.get_within("k", slow, 0.05, lambda: "late") == "done":
            break
        threading.Event().wait(0.02)
    assert cache.get_within("k", lambda: "recomputed", 0.05, lambda: "late") == "done"  # cached


def test_track_record_counts_the_realized_values_inside_each_served_interval(features):
    made = [int(t) for t in features["ts"][180:360:3]]
    realized_at = dict(features.select("ts", "realized_vol_24").iter_rows())
    truth = [realized_at[t + 24 * HOUR] for t in made]
    # 80 % and 95 % intervals around a constant forecast: some realized values inside, some not
    levels = {0.8: (0.006, 0.012), 0.95: (0.004, 0.016)}
    intervals = [{"level": lv, "lower": lo, "upper": hi} for lv, (lo, hi) in levels.items()]
    served = [_served(t, 0.01, {"intervals": intervals}) for t in made[:-5]] + [
        _served(t, 0.01)
        for t in made[-5:]  # a model without intervals served these
    ]
    record = evidence.track_record(evidence.match_forecasts(served, features, "1h"), features)
    expected = {lv: sum(lo <= v <= hi for v in truth[:-5]) for lv, (lo, hi) in levels.items()}
    assert [(c.level, c.n, c.inside) for c in record.interval_coverage] == [
        (lv, len(made) - 5, inside) for lv, inside in expected.items()
    ]
    assert 0 < expected[0.8] < expected[0.95] < len(made) - 5
