"""Binance spot REST wire formats: what api.binance.com answers, reduced to what ccxt reads.

Field names and value types (prices and quantities as decimal strings, times as integer ms) follow
the Binance spot API docs, so ccxt's unmodified parsers accept the answers. Fields the replayed
data cannot know (trade counts, taker volumes, order-book prices) are sent as zeros rather than
invented; the quote volume is estimated as typical price × volume and said to be an estimate here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from crypto_platform.lib.market.symbols import normalize_symbol
from crypto_platform.lib.market.timeframes import HOUR_MS

# The 12-field kline row: open time, o, h, l, c, volume, close time, quote volume, trades,
# taker buy base volume, taker buy quote volume, ignore.
KLINE_FIELDS = 12
MAX_KLINES_LIMIT = 1000
DEFAULT_KLINES_LIMIT = 500


class BinanceError(Exception):
    """An error answer in Binance's format: HTTP status plus `{"code": ..., "msg": ...}`."""

    def __init__(self, status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def invalid_symbol() -> BinanceError:
    return BinanceError(400, -1121, "Invalid symbol.")


def invalid_interval() -> BinanceError:
    return BinanceError(400, -1120, "Invalid interval.")


def mandatory_param(name: str) -> BinanceError:
    return BinanceError(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def illegal_param(name: str) -> BinanceError:
    return BinanceError(
        400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
    )


def invalid_limit() -> BinanceError:
    return BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")


def start_after_end() -> BinanceError:
    return BinanceError(400, -1023, "Start time is greater than end time.")


def _num(value: float) -> str:
    # Binance sends fixed 8-decimal strings ("4261.48000000").
    return f"{value:.8f}"


def kline_rows(frame: pl.DataFrame, bar_ms: int) -> list[list[Any]]:
    """OHLCV frame → Binance kline arrays (close time = open + bar − 1 ms, as Binance reports it)."""
    rows = []
    for ts, o, h, low, c, v in frame.select("ts", "open", "high", "low", "close", "volume").iter_rows():
        quote_volume = (h + low + c) / 3.0 * v  # estimate: the files carry no quote volume
        rows.append(
            [
                ts,
                _num(o),
                _num(h),
                _num(low),
                _num(c),
                _num(v),
                ts + bar_ms - 1,
                _num(quote_volume),
                0,
                _num(0.0),
                _num(0.0),
                "0",
            ]
        )
    return rows


def symbol_info(symbol_id: str) -> dict[str, Any]:
    """One entry of exchangeInfo's `symbols` list for a spot pair that is trading."""
    base, quote = normalize_symbol(symbol_id).split("/")
    return {
        "symbol": symbol_id,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.00000100",
                "maxPrice": "1000000.00000000",
                "tickSize": "0.00000100",
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": "0.00001000",
                "maxQty": "9000.00000000",
                "stepSize": "0.00001000",
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": "5.00000000",
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def exchange_info(symbol_ids: Sequence[str], server_time_ms: int) -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "serverTime": server_time_ms,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": [symbol_info(s) for s in symbol_ids],
    }


def ticker_24hr(
    symbol_id: str, window: pl.DataFrame, last_close: float | None, now_ms: int
) -> dict[str, Any]:
    """24-hour rolling statistics from the closed bars of the last 24 h (`window`).

    `last_close` is the latest known price even when the window is empty (a market whose data
    ended earlier): then the price fields are flat and the volumes zero.
    """
    price = last_close if last_close is not None else 0.0
    if window.height:
        open_ = float(window["open"][0])
        high = float(window["high"].max())  # type: ignore[arg-type]
        low = float(window["low"].min())  # type: ignore[arg-type]
        volume = float(window["volume"].sum())
        typical = (window["high"] + window["low"] + window["close"]) / 3.0
        quote_volume = float((typical * window["volume"]).sum())
        open_time = int(window["ts"][0])
    else:
        open_ = high = low = price
        volume = quote_volume = 0.0
        open_time = now_ms - 24 * HOUR_MS
    change = price - open_
    return {
        "symbol": symbol_id,
        "priceChange": _num(change),
        "priceChangePercent": f"{(change / open_ * 100.0) if open_ else 0.0:.3f}",
        "weightedAvgPrice": _num(quote_volume / volume if volume else price),
        "prevClosePrice": _num(open_),
        "lastPrice": _num(price),
        "lastQty": _num(0.0),
        "bidPrice": _num(0.0),
        "bidQty": _num(0.0),
        "askPrice": _num(0.0),
        "askQty": _num(0.0),
        "openPrice": _num(open_),
        "highPrice": _num(high),
        "lowPrice": _num(low),
        "volume": _num(volume),
        "quoteVolume": _num(quote_volume),
        "openTime": open_time,
        "closeTime": now_ms,
        "firstId": -1,
        "lastId": -1,
        "count": 0,
    }


def ticker_price(symbol_id: str, last_close: float | None) -> dict[str, str]:
    return {"symbol": symbol_id, "price": _num(last_close if last_close is not None else 0.0)}
