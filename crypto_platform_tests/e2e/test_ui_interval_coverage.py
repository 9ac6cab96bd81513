"""The web UI's interval coverage of the live track record, in headless Chromium against a real uvicorn
server whose champion serves predictive intervals.

The champion is the HAR+ feature-frame model with its fitted dispersion (fixtures/api.py
`api_frame_champion`, on the real MLflow server); the bars are the pipeline-written store of
`api_data_dir`; the history is what `operations.ml_signal` stored when the clock stood a minute after
each of SERVED_AT_BARS closed. What the page must say is worked out here from those two alone: the
intervals the serving code answered with, and the realized volatility of the 24 stored bars after each
forecast's bar, √Σ of the squared log returns of their closes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path

import pytest

from crypto_platform_tests.e2e import test_api_browser
from crypto_platform_tests.e2e.test_ui_evidence import _watch
from crypto_platform_tests.fixtures.api import (
    API_NOW_MS,
    API_SYMBOLS,
    FRAME_MODEL_NAME,
    HOUR_MS,
    serving_settings,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
browser = test_api_browser.browser  # the Debian-Chromium fixture, shared

SYMBOL = "BTC/USDT"
HORIZON_BARS = 24  # the forecast's target: the realized volatility of the next 24 bars
LAST_CLOSED = API_NOW_MS // HOUR_MS * HOUR_MS - HOUR_MS
# Every 3 bars over the last 6 days: the 40 oldest have their 24 bars closed by now, 8 are pending.
SERVED_AT_BARS = [LAST_CLOSED - k * 3 * HOUR_MS for k in range(48)]


def _settings(data_dir: Path, tracking_uri: str, history_url: str):
    return serving_settings(data_dir, tracking_uri, history_url, FRAME_MODEL_NAME, API_SYMBOLS)


@pytest.fixture(scope="module")
def served_intervals(api_data_dir, api_frame_champion, tmp_path_factory) -> tuple[str, dict[int, list]]:
    """A history DB of the frame champion's answers for SYMBOL at SERVED_AT_BARS (each served twice, as
    a polling client would), through `operations.ml_signal`; and the intervals each bar's answer carried."""
    from serving.api import operations, schemas
    from serving.api.services import build_services

    url = f"sqlite:///{tmp_path_factory.mktemp('ui-intervals') / 'history.db'}"
    clock = {"now": API_NOW_MS}
    svc = build_services(
        _settings(api_data_dir, api_frame_champion.tracking_uri, url), now_ms=lambda: clock["now"]
    )
    assert svc.models.refresh().success, svc.models.last_error
    answered: dict[int, list] = {}
    try:
        for bar in SERVED_AT_BARS:
            clock["now"] = bar + HOUR_MS + 60_000  # a minute after the bar closed
            for _ in range(2):
                answer = asyncio.run(operations.ml_signal(svc, schemas.MLSignalRequest(symbol=SYMBOL)))
            answered[bar] = answer.ml_prediction.intervals
    finally:
        svc.history.close()
    assert sorted(answered) == sorted(SERVED_AT_BARS)
    return url, answered


def _realized_after(closes: dict[int, float], bar: int) -> float | None:
    """√Σ r² of the log returns of the HORIZON_BARS bars after `bar`; None unless all of them closed."""
    path = [bar + k * HOUR_MS for k in range(HORIZON_BARS + 1)]
    if path[-1] > LAST_CLOSED or any(ts not in closes for ts in path):
        return None
    returns = [math.log(closes[b] / closes[a]) for a, b in itertools.pairwise(path)]
    return math.sqrt(sum(r * r for r in returns))


def _expected_lines(data_dir: Path, answered: dict[int, list]) -> list[str]:
    """The coverage lines the symbol view must show, one per level: each forecast's intervals against
    the realized volatility after its bar."""
    from crypto_platform.lib.storage import open_store, read_ohlcv

    bars = read_ohlcv(open_store(str(data_dir)), SYMBOL, min(answered) - HOUR_MS, LAST_CLOSED + HOUR_MS)
    closes = dict(zip(bars["ts"].to_list(), bars["close"].to_list(), strict=True))
    counts: dict[float, list[int]] = {}
    for bar, intervals in answered.items():
        realized = _realized_after(closes, bar)
        if realized is None or not intervals:
            continue
        for interval in intervals:
            seen = counts.setdefault(interval.level, [0, 0])
            seen[0] += 1
            seen[1] += int(interval.lower <= realized <= interval.upper)
    return [
        f"{round(level * 100)} % intervals: the realized volatility fell inside {inside} of {n} "
        f"({100 * inside / n:.1f} %)."
        for level, (n, inside) in sorted(counts.items())
    ]


@pytest.fixture(scope="module")
def interval_server(api_data_dir, api_frame_champion, served_intervals):
    from crypto_platform_tests.fixtures.api import api_now, serve_in_thread
    from serving.api.app import create_app

    settings = _settings(api_data_dir, api_frame_champion.tracking_uri, served_intervals[0])
    with serve_in_thread(create_app(settings, now_ms=api_now)) as url:
        yield url


def test_the_symbol_view_says_how_often_what_happened_fell_inside_the_served_intervals(
    browser, interval_server, served_intervals, api_data_dir
):
    expected = _expected_lines(api_data_dir, served_intervals[1])
    # the champion's two levels, each over the 40 forecasts with their 24 bars closed
    assert len(expected) == 2 and all("of 40 " in line for line in expected), expected
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, external = _watch(page, interval_server)
    page.goto(f"{interval_server}/#/symbol/BTC%2FUSDT")
    page.wait_for_selector("#series-charts[data-forecasts]")
    assert page.get_attribute("#series-charts", "data-forecasts") == str(len(SERVED_AT_BARS))
    record = page.text_content("#series-record")
    assert "40 served forecasts have their 24 bars closed (8 pending)" in record
    lines = [" ".join(p.text_content().split()) for p in page.query_selector_all("#series-record p.coverage")]
    assert lines == expected
    assert errors == [] and external == [], (errors, external)


def test_the_served_answers_stored_their_intervals_in_the_history_column(served_intervals):
    """What the UI read: the serving code's rows carry the answer's intervals in `ml_predictions.intervals`
    as well as in the stored answer (the payload)."""
    from sqlalchemy import create_engine, text

    url, answered = served_intervals
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("select bar_ts, intervals, payload from ml_predictions")).all()
    finally:
        engine.dispose()
    assert len(rows) == 2 * len(SERVED_AT_BARS)
    for bar_ts, column, payload in rows:
        served = [{"level": i.level, "lower": i.lower, "upper": i.upper} for i in answered[bar_ts]]
        assert json.loads(column) == served == json.loads(payload)["ml_prediction"]["intervals"]
