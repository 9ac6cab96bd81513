"""The web UI in headless Chromium (Playwright) against a real uvicorn server running the API.

Skipped with the reason when the `playwright` package or a Chromium binary is missing (browsers are not
downloaded by Playwright here: the Debian `chromium` package is used). The screenshot of the chart is
written to $TMPDIR/crypto_api_ui.png for a human look.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = os.environ.get("CRYPTO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip
SCREENSHOT = Path(tempfile.gettempdir()) / "crypto_api_ui.png"


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CRYPTO_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def live_server(api_settings, api_champion):
    """The app under uvicorn on a free loopback port, in this process (the clock is frozen like the data)."""
    from crypto_platform_tests.fixtures.api import api_now, serve_in_thread
    from serving.api.app import create_app

    with serve_in_thread(
        create_app(api_settings(mlflow_uri=api_champion.tracking_uri), now_ms=api_now)
    ) as url:
        yield url


def _painted(page, colour: tuple[int, int, int], top_fraction: float) -> int:
    """Pixels of the chart canvas close to `colour` below `top_fraction` of its height."""
    return page.evaluate(
        """([r, g, b, top]) => {
            const c = document.getElementById('chart');
            const d = c.getContext('2d').getImageData(0, Math.floor(c.height * top), c.width,
                                                        c.height - Math.floor(c.height * top)).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40
                    && d[i + 3] > 0) n++;
            }
            return n;
        }""",
        [*colour, top_fraction],
    )


def test_ui_signals_chart_history_and_errors(browser, live_server, api_champion):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    external: list[str] = []
    page.on("request", lambda req: external.append(req.url) if not req.url.startswith(live_server) else None)

    page.goto(f"{live_server}/")
    assert page.title() == "Crypto risk"
    page.wait_for_function("document.getElementById('status').textContent.startsWith('model')")
    assert page.text_content("#status") == f"model v{api_champion.lstm_version}"

    page.click("nav button[data-tab=signals]")  # the overview is the landing view (test_ui_evidence.py)
    page.check("#explain")
    page.click("#run-signal")
    page.wait_for_selector("#signal-out .kv")
    out = page.text_content("#signal-out")
    assert "risk score" in out and "SIMULATED" in out and "vol24" in out

    page.click("nav button[data-tab=ohlcv]")
    page.click("#run-ohlcv")
    page.wait_for_selector("#chart[data-drawn]")
    assert page.get_attribute("#chart", "data-drawn") == "240"
    assert "SIMULATED" in page.text_content("#chart-note")
    assert _painted(page, (0x4A, 0xA3, 0xFF), 0.0) > 300  # the price line
    assert _painted(page, (0xC9, 0xA2, 0x27), 0.6) > 300  # realized volatility
    assert _painted(page, (0xD6, 0x45, 0x45), 0.6) > 20  # the forecast point
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.click("nav button[data-tab=ml]")
    page.click("#run-ml")
    page.wait_for_selector("#ml-out .kv")
    assert "forecast vol" in page.text_content("#ml-out")
    page.click("#run-explain")
    page.wait_for_selector("#ml-out table")
    assert "realized_vol_24" in page.text_content("#ml-out")

    page.click("nav button[data-tab=compare]")
    page.click("#run-compare")
    page.wait_for_selector("#compare-out h3")
    compared = page.text_content("#compare-out")
    assert "Heuristic" in compared and "forecast vol" in compared and "regimes agree" in compared

    page.click("nav button[data-tab=history]")
    page.wait_for_selector("#hist-ml td")
    assert "BTC/USDT" in page.text_content("#hist-signals")

    page.click("nav button[data-tab=signals]")
    page.fill("#symbol", "DOGE/USDT")
    page.click("#run-signal")
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert message.startswith("400") and "symbol" in message and "DOGE/USDT" in message

    # Swagger UI (vendored) renders the API's own OpenAPI 3.1 schema, reaching nothing outside.
    page.goto(f"{live_server}/docs")
    page.wait_for_selector("#swagger-ui .opblock")
    assert "/v1/crypto/ml-signal" in page.text_content("#swagger-ui")
    assert errors == [], errors
    assert external == [], f"the UI reached outside the server: {external}"
