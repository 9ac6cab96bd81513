"""MarketService: the stored asset first, the live source when the store is stale, a short-TTL cache."""

from __future__ import annotations

import time

import pytest

from crypto_platform.lib.market.client import ExchangeUnavailableError
from crypto_platform.lib.market.source import load_bars
from crypto_platform.lib.storage import open_store
from crypto_platform.settings import Settings
from serving.core.market import LIVE_ORIGIN, STORE_ORIGIN, MarketService, MarketUnavailableError

HOUR = 3_600_000


class CountingLive:
    """The real simulated live source, counting calls (and optionally failing like an exchange outage)."""

    def __init__(self, settings: Settings, fail: bool = False) -> None:
        self.settings, self.fail, self.calls = settings, fail, 0

    def __call__(self, symbol, timeframe, since, until, now):
        self.calls += 1
        if self.fail:
            raise ExchangeUnavailableError("exchange down", url="http://x", attempts=1, last_error=None)
        return load_bars(
            symbol, timeframe, since, until, source="simulated", settings=self.settings, now_ms=now
        )


@pytest.fixture
def platform(api_data_dir) -> Settings:
    return Settings(data_location=str(api_data_dir), market_source="simulated")


def _service(platform, clock, live, ttl_s=60.0):
    return MarketService(
        platform, open_store(platform.data_location), ttl_s, 2, now_ms=clock, live_loader=live
    )


def test_fresh_store_is_served_and_cached_until_the_next_bar(platform, api_last_closed_ms):
    now = [api_last_closed_ms + HOUR + 10 * 60_000]
    live = CountingLive(platform)
    service = _service(platform, lambda: now[0], live)
    first = service.bars("BTC/USDT", "1h", 100)
    assert (first.origin, first.source, first.frame.height, first.last_ts) == (
        STORE_ORIGIN, "simulated", 100, api_last_closed_ms
    )  # fmt: skip
    assert service.bars("BTC/USDT", "1h", 50).frame["ts"].to_list() == first.frame["ts"].tail(50).to_list()
    assert service._cache[("BTC/USDT", "1h")][1] is not None and live.calls == 0
    # One bar later the store (written up to api_last_closed_ms) is one bar behind: still within
    # the staleness slack, so still the store, but re-read (the cache never spans a bar boundary).
    now[0] += HOUR
    later = service.bars("BTC/USDT", "1h", 100)
    assert later.origin == STORE_ORIGIN and later.last_closed_ts == api_last_closed_ms + HOUR
    # Three bars behind is stale: the live source takes over and provides the newest bars.
    now[0] += 2 * HOUR
    live_bars = service.bars("BTC/USDT", "1h", 100)
    assert live_bars.origin == LIVE_ORIGIN and live_bars.last_ts == api_last_closed_ms + 3 * HOUR
    assert live.calls == 1


def test_cache_expires_after_ttl(platform, api_last_closed_ms):
    live = CountingLive(platform)
    service = _service(platform, lambda: api_last_closed_ms + HOUR + 1, live, ttl_s=0.05)
    a = service.bars("SOL/USDT", "1h", 10)
    b = service.bars("SOL/USDT", "1h", 10)
    assert live.calls == 1 and a.frame.equals(b.frame)
    time.sleep(0.1)
    service.bars("SOL/USDT", "1h", 10)
    assert live.calls == 2


def test_live_failure_serves_stale_store_with_warning_or_502(platform, api_last_closed_ms):
    stale_now = api_last_closed_ms + 10 * HOUR
    service = _service(platform, lambda: stale_now, CountingLive(platform, fail=True))
    bars = service.bars("BTC/USDT", "1h", 24)
    assert bars.origin == STORE_ORIGIN and bars.warnings and "unavailable" in bars.warnings[0]
    assert bars.last_ts == api_last_closed_ms  # the newest stored bar, labelled as such
    with pytest.raises(MarketUnavailableError, match="SOL/USDT"):
        service.bars("SOL/USDT", "1h", 24)


def test_other_timeframes_come_from_the_live_source(platform, api_last_closed_ms):
    live = CountingLive(platform)
    service = _service(platform, lambda: api_last_closed_ms + HOUR, live)
    bars = service.bars("BTC/USDT", "4h", 10)
    assert bars.origin == LIVE_ORIGIN and live.calls == 1
    assert bars.frame.height == 10 and (bars.frame["ts"] % (4 * HOUR) == 0).all()
