"""The Litestar risk API: heuristic and LSTM volatility signals over the platform's stored market data."""
