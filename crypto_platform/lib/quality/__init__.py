"""Data quality of OHLCV bars: `checks` (one rule per function, blocking or warning) and `report` (the
per-symbol, per-UTC-day report built from the checks, and its markdown)."""
