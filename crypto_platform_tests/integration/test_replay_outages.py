"""The replay exchange's outages: hidden bars are skipped the way Binance skips a hole, pages stay full,
bad requests are 400s naming the field, and lifting the outage serves the bars again."""

from __future__ import annotations

import pytest
import requests

from crypto_platform_tests.fixtures.exchange import REPLAY_NOW_MS

pytestmark = pytest.mark.integration

H = 3_600_000
START = REPLAY_NOW_MS // H * H - 48 * H


def _klines(url: str, **params: int | str) -> list[int]:
    answer = requests.get(
        f"{url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h", **params}, timeout=10
    )
    answer.raise_for_status()
    return [int(row[0]) for row in answer.json()]


def test_outage_hides_bars_and_pages_stay_full(replay_server) -> None:
    url = replay_server.url
    before = _klines(url, startTime=START, limit=10)
    assert before == [START + i * H for i in range(10)]
    posted = requests.post(
        f"{url}/__replay__/outages",
        json={"symbol": "BTCUSDT", "start": START + 2 * H, "end": START + 5 * H},
        timeout=10,
    )
    assert posted.status_code == 200
    assert posted.json()["outages"] == [
        {"symbol": "BTCUSDT", "start_ms": START + 2 * H, "end_ms": START + 5 * H}
    ]
    during = _klines(url, startTime=START, limit=10)
    # 02:00-04:00 skipped, and the page still holds 10 bars (a client pages on from the last one)
    assert during == [START, START + H] + [START + i * H for i in range(5, 13)]
    # paging backwards from the end (no startTime) skips them too
    tail = _klines(url, endTime=START + 6 * H - 1, limit=3)
    assert tail == [START, START + H, START + 5 * H]
    # other symbols are untouched
    assert (
        len(
            requests.get(
                f"{url}/api/v3/klines",
                params={"symbol": "ETHUSDT", "interval": "1h", "startTime": START, "limit": 10},
                timeout=10,
            ).json()
        )
        == 10
    )
    cleared = requests.post(f"{url}/__replay__/outages", json={"clear": True}, timeout=10)
    assert cleared.json()["outages"] == []
    assert _klines(url, startTime=START, limit=10) == before


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"symbol": "BTCUSDT", "start": START}, "end"),
        ({"symbol": "NOPEUSDT", "start": START, "end": START + H}, "NOPEUSDT"),
        ({"symbol": "BTCUSDT", "start": START + H, "end": START}, "end"),
        ({"symbol": "BTCUSDT", "start": "yesterday", "end": START}, "yesterday"),
        ({"symbols": "BTCUSDT"}, "symbols"),
        (["BTCUSDT"], "JSON object"),
    ],
)
def test_bad_outage_requests_are_400s_naming_the_field(replay_server, body, named) -> None:
    answer = requests.post(f"{replay_server.url}/__replay__/outages", json=body, timeout=10)
    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert requests.get(f"{replay_server.url}/__replay__/outages", timeout=10).json()["outages"] == []
