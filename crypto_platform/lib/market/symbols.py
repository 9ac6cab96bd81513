"""Symbol normalisation: `BTCUSDT`, `btc/usdt`, `BTC-USDT`, `ETHBTC` → `BASE/QUOTE`."""

from __future__ import annotations

import re

# Quote currencies Binance lists spot pairs against, longest first so `FDUSD` wins over `USD`.
KNOWN_QUOTES: tuple[str, ...] = tuple(
    sorted(
        (
            "USDT",
            "USDC",
            "FDUSD",
            "TUSD",
            "BUSD",
            "USDP",
            "DAI",
            "USD",
            "BTC",
            "ETH",
            "BNB",
            "XRP",
            "TRX",
            "DOGE",
            "SOL",
            "EUR",
            "GBP",
            "TRY",
            "BRL",
            "AUD",
            "JPY",
            "RUB",
            "UAH",
            "ZAR",
            "PLN",
            "RON",
            "ARS",
            "MXN",
        ),
        key=len,
        reverse=True,
    )
)

_SEPARATORS = re.compile(r"[/\-_:\s]+")
_VALID_PART = re.compile(r"^[A-Z0-9]{2,15}$")


class InvalidSymbolError(ValueError):
    """A symbol that cannot be read as BASE/QUOTE."""


def normalize_symbol(symbol: str, known_quotes: tuple[str, ...] = KNOWN_QUOTES) -> str:
    """Return the unified `BASE/QUOTE` form ccxt uses.

    With a separator the split is explicit; without one the longest known quote suffix is taken,
    so `ETHBTC` is ETH/BTC and `BTCFDUSD` is BTC/FDUSD.
    """
    if not isinstance(symbol, str) or not symbol.strip():
        raise InvalidSymbolError("symbol must be a non-empty string such as BTC/USDT")
    raw = symbol.strip().upper()
    parts = [p for p in _SEPARATORS.split(raw) if p]
    if len(parts) == 2:
        base, quote = parts
    elif len(parts) == 1:
        compact = parts[0]
        quote = next((q for q in known_quotes if compact.endswith(q) and len(compact) > len(q)), "")
        if not quote:
            raise InvalidSymbolError(f"symbol {symbol!r} has no known quote currency; write it as BASE/QUOTE")
        base = compact[: -len(quote)]
    else:
        raise InvalidSymbolError(f"symbol {symbol!r} must be BASE/QUOTE")
    if base == quote or not _VALID_PART.match(base) or not _VALID_PART.match(quote):
        raise InvalidSymbolError(f"symbol {symbol!r} is not a valid BASE/QUOTE pair")
    return f"{base}/{quote}"


def exchange_symbol_id(symbol: str) -> str:
    """`BTC/USDT` → `BTCUSDT`: Binance's market id, also used in partition keys and file names."""
    return normalize_symbol(symbol).replace("/", "")
