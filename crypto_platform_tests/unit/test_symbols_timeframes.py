"""Symbol normalisation, the timeframe whitelist, and the client's input checks (no network)."""

from __future__ import annotations

import pytest

from crypto_platform.lib.market.symbols import InvalidSymbolError, exchange_symbol_id, normalize_symbol
from crypto_platform.lib.market.timeframes import (
    TIMEFRAME_MS,
    UnsupportedTimeframeError,
    bars_per_day,
    sqrt_time_scale,
    timeframe_ms,
    validate_timeframe,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("BTCUSDT", "BTC/USDT"),
        ("btc/usdt", "BTC/USDT"),
        ("  eth-usdt ", "ETH/USDT"),
        ("SOL_USDT", "SOL/USDT"),
        ("bnb usdt", "BNB/USDT"),
        # No separator: the longest known quote suffix wins, so ETHBTC is ETH/BTC, not ETHB/TC …
        ("ETHBTC", "ETH/BTC"),
        ("ethbtc", "ETH/BTC"),
        # … and FDUSD beats USD, and BNB as a quote is recognised.
        ("BTCFDUSD", "BTC/FDUSD"),
        ("SOLBNB", "SOL/BNB"),
        ("1000SATSUSDT", "1000SATS/USDT"),
    ],
)
def test_normalize_symbol(raw: str, expected: str) -> None:
    assert normalize_symbol(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "BTC",  # no quote at all
        "USDT",  # only a quote
        "BTCXYZ",  # unknown quote, no separator
        "BTC/USDT/EUR",
        "BTC/BTC",
        "B/USDT",  # base too short
        "BTC$/USDT",
        "../../etc/passwd",
    ],
)
def test_normalize_symbol_rejects_bad_input(raw: str) -> None:
    with pytest.raises(InvalidSymbolError):
        normalize_symbol(raw)


def test_normalize_symbol_rejects_non_strings() -> None:
    with pytest.raises(InvalidSymbolError):
        normalize_symbol(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"), [("BTC/USDT", "BTCUSDT"), ("eth-btc", "ETHBTC"), ("ETHBTC", "ETHBTC")]
)
def test_exchange_symbol_id(raw: str, expected: str) -> None:
    assert exchange_symbol_id(raw) == expected


@pytest.mark.parametrize("tf", list(TIMEFRAME_MS))
def test_whitelisted_timeframes(tf: str) -> None:
    assert validate_timeframe(f" {tf} ") == tf
    assert timeframe_ms(tf) == TIMEFRAME_MS[tf]


@pytest.mark.parametrize("tf", ["1s", "3m", "8h", "3d", "1w", "1M", "1H", "60m", "", "1h; DROP TABLE"])
def test_timeframes_outside_the_whitelist_are_rejected(tf: str) -> None:
    with pytest.raises(UnsupportedTimeframeError):
        validate_timeframe(tf)


def test_timeframe_derived_quantities() -> None:
    assert timeframe_ms("1h") == 3_600_000
    assert bars_per_day("1h") == 24
    assert bars_per_day("15m") == 96
    assert bars_per_day("1d") == 1
    assert sqrt_time_scale("4h") == pytest.approx(2.0)


def test_client_accepts_only_whitelisted_exchanges() -> None:
    from crypto_platform.lib.market.client import SUPPORTED_EXCHANGES, ExchangeClient

    assert ExchangeClient("  Binance ").exchange_id == "binance"
    # Real ccxt exchange ids and attribute names that are not on the whitelist are refused.
    for name in ("kraken", "Exchange", "__class__", "binanceusdm"):
        with pytest.raises(ValueError, match="not supported"):
            ExchangeClient(name)
    assert set(SUPPORTED_EXCHANGES) == {"binance"}


def test_client_checks_symbol_and_timeframe_before_any_request() -> None:
    from crypto_platform.lib.market.client import ExchangeClient

    # Port 9 (discard) on loopback: any request would fail; the checks must come first.
    client = ExchangeClient(api_url="http://127.0.0.1:9", retry_budget_s=0, max_attempts=1)
    with pytest.raises(UnsupportedTimeframeError):
        client.fetch_ohlcv("BTC/USDT", "3d", 0, 1)
    with pytest.raises(InvalidSymbolError):
        client.fetch_ohlcv("BTCXYZ", "1h", 0, 1)
    with pytest.raises(InvalidSymbolError):
        client.fetch_ticker("nonsense")


def test_client_redirects_every_api_entry() -> None:
    from crypto_platform.lib.market.client import ExchangeClient

    client = ExchangeClient(api_url="http://127.0.0.1:8765/")
    urls = client._exchange.urls["api"]
    assert urls["public"] == "http://127.0.0.1:8765/api/v3"
    assert urls["v1"] == "http://127.0.0.1:8765/api/v1"
    assert urls["sapi"] == "http://127.0.0.1:8765/sapi/v1"
    assert all(url.startswith("http://127.0.0.1:8765/") for url in urls.values())
    assert client._exchange.options["fetchMarkets"]["types"] == ["spot"]
    with pytest.raises(ValueError, match="http"):
        ExchangeClient(api_url="ftp://example.org")


def test_load_bars_validates_its_arguments() -> None:
    from crypto_platform.lib.market.source import load_bars

    with pytest.raises(ValueError, match="source"):
        load_bars("BTC/USDT", "1h", 0, 1, source="csv")
    with pytest.raises(UnsupportedTimeframeError):
        load_bars("BTC/USDT", "7m", 0, 1, source="simulated")
    with pytest.raises(InvalidSymbolError):
        load_bars("BTC", "1h", 0, 1, source="simulated")
    with pytest.raises(ValueError, match="before"):
        load_bars("BTC/USDT", "1h", 10, 5, source="simulated")
