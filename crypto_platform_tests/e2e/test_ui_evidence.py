"""The web UI a quant opens first, in headless Chromium against a real uvicorn server.

The server has a real champion in a real MLflow registry (the LSTM of `api_champion`, registered under a
model name of its own with a training run that logged its holdout evaluation table, and a baseline
challenger rejected by a real promotion decision), a data location the pipeline's own code wrote
(ohlcv/features partitions, quality reports, a daily report, a feature_drift artifact), and a history of
forecasts the serving code itself served at past bars (`operations.ml_signal` under a clock moved back
bar by bar). The page is never clicked before the overview is checked.

Screenshots are kept under the test's tmp dir (and copied to $CRYPTO_UI_SCREENSHOTS when set).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crypto_platform_tests.e2e import test_api_browser
from crypto_platform_tests.fixtures.api import (
    API_NOW_MS,
    API_SYMBOLS,
    HOUR_MS,
    STORED_DAYS,
    serving_settings,
    write_pipeline_store,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
browser = test_api_browser.browser  # the Debian-Chromium fixture, shared

UI_MODEL = "crypto-volatility-ui-test"
SERVED_SYMBOLS = (*API_SYMBOLS, "SOL/USDT")  # SOL has no stored bars: the live (simulated) path
LAST_CLOSED = API_NOW_MS // HOUR_MS * HOUR_MS - HOUR_MS
# Forecasts served every 3 bars over the last 6 days: the first 40 have their 24 bars closed by now.
SERVED_AT_BARS = [LAST_CLOSED - k * 3 * HOUR_MS for k in range(48)]


@dataclass(frozen=True)
class Registry:
    tracking_uri: str
    champion_version: str
    challenger_version: str
    rejection_reason: str


@pytest.fixture(scope="module")
def ui_data_dir(tmp_path_factory) -> Path:
    """A data location as the pipeline writes it: bars and features, the last day's quality report per
    stored symbol, that day's daily report, and a feature_drift artifact."""
    from crypto_platform.lib.drift import detect_drift
    from crypto_platform.lib.features import MODEL_FEATURES
    from crypto_platform.lib.quality.report import build_quality_report
    from crypto_platform.lib.reports import DailyReport, QualityStatus, build_daily_report, report_key
    from crypto_platform.lib.storage import (
        day_of_ms,
        day_start_ms,
        open_store,
        quality_report_keys,
        read_ohlcv,
        read_partitioned,
    )

    root = tmp_path_factory.mktemp("ui-data")
    write_pipeline_store(root, API_SYMBOLS, LAST_CLOSED + HOUR_MS, STORED_DAYS)
    store = open_store(str(root))
    day = day_of_ms(LAST_CLOSED)
    start = day_start_ms(day)
    statuses = []
    for symbol in API_SYMBOLS:
        bars = read_ohlcv(store, symbol, start - 7 * 24 * HOUR_MS, start + 24 * HOUR_MS)
        report = build_quality_report(
            bars.filter(bars["ts"] >= start),
            "1h",
            API_NOW_MS,
            symbol,
            day,
            context=bars.filter(bars["ts"] < start),
        )
        md_key, json_key = quality_report_keys(symbol, day)
        store.write_bytes(md_key, report.to_markdown().encode())
        store.write_bytes(json_key, json.dumps(report.to_dict()).encode())
        statuses.append(QualityStatus(symbol, day, report.status, report.failed_checks, report.warnings))
    markdown = build_daily_report(
        DailyReport(day=day, generated_at=f"{day}T23:59:00+00:00", quality=statuses)
    )
    store.write_bytes(report_key(day), markdown.encode())
    features, _ = read_partitioned(
        store, "features", "BTC/USDT", start - 30 * 24 * HOUR_MS, start + 24 * HOUR_MS
    )
    reference = features.filter(features["ts"] < start - 7 * 24 * HOUR_MS).drop_nulls(list(MODEL_FEATURES))
    current = features.filter(features["ts"] >= start - 7 * 24 * HOUR_MS).drop_nulls(list(MODEL_FEATURES))
    columns = [c for c in MODEL_FEATURES if c != "realized_vol_24"]
    drift = detect_drift(reference, current, columns)
    payload = {
        **drift.to_dict(),
        "champion_version": "1",
        "current_window": f"{day}..{day}",
        "symbols": ["BTC/USDT"],
    }
    store.write_bytes(f"ml/drift/{day}.json", json.dumps(payload, default=str).encode())
    return root


class _FixedWindowModel:
    """A registered window model walked forward as it is (it is not refitted per fold)."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded

    def predict(self, windows):
        import numpy as np

        return np.asarray(self.loaded.predict(windows.X.astype(np.float32)), dtype=float)


@pytest.fixture(scope="module")
def ui_registry(api_champion) -> Registry:
    """The api_champion LSTM and baseline registered under UI_MODEL: a training run with the holdout
    evaluation table (lib.model.evaluation over real forecasts), the LSTM champion, the baseline
    challenger rejected by lib.model.promotion's rule."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    from crypto_platform.lib.features import MODEL_FEATURES, compute_features
    from crypto_platform.lib.market.simulator import simulate_ohlcv
    from crypto_platform.lib.model import registry
    from crypto_platform.lib.model.baselines import ExpandingMeanBaseline, NaiveBaseline
    from crypto_platform.lib.model.evaluation import evaluate_forecasts
    from crypto_platform.lib.model.promotion import judge_challenger, sanity_probes
    from crypto_platform.lib.model.walk_forward import Candidate, baseline_candidate, walk_forward
    from crypto_platform.lib.model.windows import build_windows
    from serving.core.model_store import load_version

    uri = api_champion.tracking_uri
    client = MlflowClient(tracking_uri=uri)
    lstm_src = client.get_model_version(api_champion.model_name, api_champion.lstm_version)
    base_src = client.get_model_version(api_champion.model_name, api_champion.baseline_version)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("ui-tests")
    window = {"data_window": "2025-02-01..2025-03-22", "symbols": "BTC/USDT", "timeframe": "1h"}
    with mlflow.start_run() as run:
        mlflow.set_tags(window)
    train_run = run.info.run_id
    lstm_tags = {"model_family": "lstm", "timeframe": "1h", "training_run_id": train_run, **window}
    lstm = registry.register_version(client, lstm_src.source, train_run, lstm_tags, model_name=UI_MODEL)
    base_tags = {"model_family": "baseline:naive", "timeframe": "1h", "training_run_id": train_run, **window}
    base = registry.register_version(client, base_src.source, train_run, base_tags, model_name=UI_MODEL)

    end = API_NOW_MS - 60 * 24 * HOUR_MS
    bars = simulate_ohlcv("BTC/USDT", "1h", end - 45 * 24 * HOUR_MS, end, seed=13)
    windows = build_windows(compute_features(bars, "1h"), MODEL_FEATURES)
    cut = int(len(windows) * 0.7)
    train, hold = windows.take(np.arange(cut)), windows.take(np.arange(cut, len(windows)))
    model = load_version(uri, UI_MODEL, str(lstm.version), "champion", lstm_tags, train_run)
    forecasts = {
        "lstm": np.asarray(model.predict(hold.X.astype(np.float32)), dtype=float),
        "naive": NaiveBaseline().fit(train).predict(hold),
        "expanding_mean": ExpandingMeanBaseline().fit(train).predict(hold),
    }
    table = evaluate_forecasts(hold.y, forecasts, ts=hold.ts)
    with mlflow.start_run(run_id=train_run):
        mlflow.log_metric("holdout_qlike", table.row("lstm").qlike)
        mlflow.log_dict(
            {"primary": table.primary, "best_baseline": table.best_baseline, "hac_lag": table.hac_lag,
             "rows": table.to_records()},
            "evaluation/holdout.json",
        )  # fmt: skip

    # The promotion rule on real evidence: the served LSTM (a fixed model) and the naive baseline
    # walked forward on the same folds of the simulated windows, then lib.model.promotion's judgement.
    def served_lstm(_train, _ctx):
        return _FixedWindowModel(model)

    evidence = walk_forward(
        windows,
        [baseline_candidate("naive"), Candidate("lstm", served_lstm)],
        n_folds=2,
        reference="naive",
    )
    recent = hold.last("realized_vol_24")
    first = judge_challenger(evidence, "lstm", None, sanity_probes(forecasts["lstm"], recent), margin=0.0)
    registry.tag_version(client, str(lstm.version), first.to_tags(), UI_MODEL)
    # The baseline challenger is then judged against it with a margin no forecaster can clear.
    second = judge_challenger(
        evidence, "naive", "lstm", sanity_probes(forecasts["naive"], recent), margin=10.0
    )
    assert not second.promote
    registry.tag_version(
        client,
        str(base.version),
        {**second.to_tags(), "promotion.champion_version": str(lstm.version)},
        UI_MODEL,
    )
    registry.move_alias(client, registry.CHAMPION, str(lstm.version), UI_MODEL)
    registry.move_alias(client, registry.CHALLENGER, str(base.version), UI_MODEL)
    return Registry(uri, str(lstm.version), str(base.version), second.reason)


def _settings(data_dir: Path, registry: Registry, history_url: str):
    return serving_settings(data_dir, registry.tracking_uri, history_url, UI_MODEL, SERVED_SYMBOLS)


@pytest.fixture(scope="module")
def served_history(ui_data_dir, ui_registry, tmp_path_factory) -> tuple[str, dict[str, int]]:
    """A history DB holding the forecasts the serving code served at SERVED_AT_BARS for the stored
    symbols (each served twice, as a polling client would), through `operations.ml_signal`."""
    from serving.api import operations, schemas
    from serving.api.services import build_services

    url = f"sqlite:///{tmp_path_factory.mktemp('ui-history') / 'history.db'}"
    clock = {"now": API_NOW_MS}
    svc = build_services(_settings(ui_data_dir, ui_registry, url), now_ms=lambda: clock["now"])
    assert svc.models.refresh().success, svc.models.last_error
    counts = {}
    for symbol in API_SYMBOLS:
        for bar in SERVED_AT_BARS:
            clock["now"] = bar + HOUR_MS + 60_000  # a minute after the bar closed
            for _ in range(2):
                asyncio.run(operations.ml_signal(svc, schemas.MLSignalRequest(symbol=symbol)))
        counts[symbol] = len(SERVED_AT_BARS)
    svc.history.close()
    return url, counts


@pytest.fixture(scope="module")
def ui_server(ui_data_dir, ui_registry, served_history):
    from crypto_platform_tests.fixtures.api import api_now, serve_in_thread
    from serving.api.app import create_app

    with serve_in_thread(
        create_app(_settings(ui_data_dir, ui_registry, served_history[0]), now_ms=api_now)
    ) as url:
        yield url


@pytest.fixture
def screenshots(tmp_path) -> Path:
    return tmp_path


def _keep(path: Path, name: str) -> None:
    target = os.environ.get("CRYPTO_UI_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


def _watch(page, origin: str) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    external: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("request", lambda req: external.append(req.url) if not req.url.startswith(origin) else None)
    return errors, external


NUMBER = re.compile(r"\d")
PERCENT = re.compile(r"\d+\.\d\d %")


def test_overview_symbol_model_reports_and_graphiql(
    browser, ui_server, ui_registry, served_history, screenshots
):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, external = _watch(page, ui_server)

    # Landing: every configured symbol with numbers on first paint, no click.
    page.goto(f"{ui_server}/")
    page.wait_for_selector("#overview-table[data-loaded]")
    assert page.get_attribute("#tab-btn-overview", "aria-selected") == "true"
    rows = page.query_selector_all("#overview-rows tr")
    assert [r.get_attribute("data-symbol") for r in rows] == list(SERVED_SYMBOLS)
    for row in rows:
        cells = [c.inner_text() for c in row.query_selector_all("td")]
        price, change, realized, forecast = cells[0], cells[1], cells[2], cells[3]
        assert NUMBER.search(price) and ("%" in change), cells
        assert PERCENT.search(realized) and PERCENT.search(forecast), cells  # realized and forecast vol
        assert row.query_selector("svg.sparkline path.spark-line") is not None
        assert "SIMULATED" in cells[6]
    assert f"champion v{ui_registry.champion_version}" in page.text_content("#overview-meta")
    page.screenshot(path=str(screenshots / "ui-overview.png"), full_page=True)
    _keep(screenshots / "ui-overview.png", "ui-overview.png")

    # Symbol view: opened from the overview row; every forecast served at the shown bars is drawn.
    page.click("#overview-rows tr[data-symbol='BTC/USDT'] td.num >> nth=0")
    page.wait_for_selector("#series-charts[data-forecasts]")
    assert page.url.endswith("#/symbol/BTC%2FUSDT")
    served = served_history[1]["BTC/USDT"]
    assert page.get_attribute("#series-charts", "data-forecasts") == str(served)
    assert len(page.query_selector_all("#series-charts circle.forecast-point")) == served
    assert len(page.query_selector_all("#series-charts circle.forecast-point.pending")) == 8  # last 24 bars
    assert len(page.query_selector_all("#series-charts line.forecast-made")) == served
    assert page.query_selector("#series-charts path.price-line") is not None
    assert len(page.query_selector_all("#series-charts rect.volume-bar")) == 336
    assert len(page.get_attribute("#series-charts path.realized-line", "d")) > 1000
    assert page.query_selector_all("#series-charts rect.regime-span")
    assert page.query_selector("#series-charts path.qlike-champion") is not None
    record = page.text_content("#series-record")
    assert "40 served forecasts have their 24 bars closed (8 pending)" in record and "QLIKE" in record
    page.screenshot(path=str(screenshots / "ui-symbol.png"), full_page=True)
    _keep(screenshots / "ui-symbol.png", "ui-symbol.png")

    # Model view, reached with the keyboard: the evaluation table and the promotion decision's reason.
    page.focus("#tab-btn-symbol")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-btn-model"
    page.wait_for_selector("#evaluation-table")
    evaluation = page.text_content("#evaluation-table")
    assert all(name in evaluation for name in ("lstm", "naive", "expanding_mean"))
    promotions = page.text_content("#promotions-table")
    assert (
        ui_registry.rejection_reason in promotions and "promoted" in promotions and "rejected" in promotions
    )
    out = page.text_content("#model-out")
    assert f"Champion: v{ui_registry.champion_version}" in out and "2025-02-01..2025-03-22" in out
    assert "Feature drift" in out and "rsi_14" in out
    assert page.query_selector("#model-out a[href*='/#/experiments/']") is not None
    page.screenshot(path=str(screenshots / "ui-model.png"), full_page=True)

    # Reports: the daily report and the latest quality report per symbol.
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#quality-table")
    quality = page.text_content("#quality-table")
    assert "BTC/USDT" in quality and "SOL/USDT" in quality and "no quality report stored yet" in quality
    page.click("#reports-out button[data-day]")
    page.wait_for_selector("#report-text:not([hidden])")
    assert "Daily platform report" in page.text_content("#report-text")

    # The request panels are still there, the API key field too.
    page.click("#tab-btn-signals")
    page.click("#run-signal")
    page.wait_for_selector("#signal-out .kv")
    assert page.query_selector("#apikey") is not None

    # GraphiQL from the vendored bundle.
    page.goto(f"{ui_server}/graphql")
    page.wait_for_selector(".graphiql-container")
    assert errors == [], errors
    assert external == [], f"the UI reached outside the server: {external}"


def test_overview_fits_a_phone(browser, ui_server, screenshots):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors, external = _watch(page, ui_server)
    page.goto(f"{ui_server}/")
    page.wait_for_selector("#overview-table[data-loaded]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert len(page.query_selector_all("#overview-rows tr")) == len(SERVED_SYMBOLS)
    page.screenshot(path=str(screenshots / "ui-phone.png"), full_page=True)
    assert errors == [] and external == [], (errors, external)


def test_served_history_was_written_by_the_serving_code(served_history):
    """The stored track record the UI reads: two rows per (symbol, bar), one per request."""
    from sqlalchemy import create_engine, text

    engine = create_engine(served_history[0])
    with engine.connect() as conn:
        n = conn.execute(text("select count(*) from ml_predictions")).scalar_one()
        first = conn.execute(text("select min(bar_ts), max(bar_ts) from ml_predictions")).one()
    assert n == 2 * len(API_SYMBOLS) * len(SERVED_AT_BARS)
    assert (first[0], first[1]) == (min(SERVED_AT_BARS), max(SERVED_AT_BARS))
    assert datetime.fromtimestamp(first[1] / 1000, UTC).hour == 23
