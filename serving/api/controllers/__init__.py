"""Route handlers, one module per area: system (health, readiness, metrics, UI), market, signals, ml."""
