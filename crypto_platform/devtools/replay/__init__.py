"""The Binance-compatible replay server (`server`) and its building blocks.

- `binance`: wire formats (kline rows, exchangeInfo, tickers) and Binance's error bodies;
- bars come from `crypto_platform.lib.market.bar_store` (files of real candles, or the simulator), which the
  producer's replay source reads too;
- `faults`: injected failures (429/418/5xx/slow answers), consumed one request at a time.
"""
