"""Building blocks of the Binance-compatible replay server (`crypto_platform.lib.market.replay_server`).

- `binance`: wire formats (kline rows, exchangeInfo, tickers) and Binance's error bodies;
- `store`: where bars come from (files of real candles, or the simulator), with a clock cut-off;
- `faults`: injected failures (429/418/5xx/slow answers), consumed one request at a time.
"""
