"""One place that reads the environment.

Every env-dependent choice in the platform goes through `get_settings()`, so the Dagster code
location, the API and the scorer agree on where data lives and which market they watch.
Defaults describe the embedded single-machine setup: Parquet under ./data, SQLite for Dagster and
MLflow, the exchange tried once and the seeded simulator as fallback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT")
MARKET_SOURCES = ("auto", "exchange", "simulated")


def _split_csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _env_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _env_float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Platform configuration; see README "Configuration" for the env var of each field."""

    exchange: str = "binance"
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    timeframe: str = "1h"
    # Days of history `crypto-platform materialize` loads besides today. Features need 30 days of
    # look-back (the 720-bar monthly realized volatility), so 90 leaves ~60 days of complete features
    # for the model to train and be evaluated on.
    history_days: int = 90
    # First day of the `ohlcv` date partitions (UTC).
    partitions_start: str = "2017-08-17"
    # Local directory or s3://bucket/prefix for Parquet, reports and other platform data.
    data_location: str = "data"
    s3_endpoint_url: str | None = None
    market_source: str = "auto"
    exchange_api_url: str | None = None
    exchange_timeout_ms: int = 10_000
    # Total time one fetch may spend retrying before it gives up.
    exchange_retry_budget_s: float = 60.0
    simulator_seed: int = 7
    dagster_home: str = ".dagster_home"
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"

    @property
    def data_is_s3(self) -> bool:
        return self.data_location.startswith("s3://")

    def local_data_path(self) -> Path:
        if self.data_is_s3:
            raise ValueError("data location is on S3, not a local directory")
        return Path(self.data_location).expanduser().resolve()


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build settings from an environment mapping (os.environ by default), validating as it goes."""
    env = dict(os.environ if env is None else env)
    source = env.get("CRYPTO_MARKET_SOURCE", "auto").strip().lower()
    if source not in MARKET_SOURCES:
        raise ValueError(f"CRYPTO_MARKET_SOURCE must be one of {MARKET_SOURCES}, got {source!r}")
    symbols = _split_csv(env.get("CRYPTO_SYMBOLS", "")) or DEFAULT_SYMBOLS
    return Settings(
        exchange=env.get("CRYPTO_EXCHANGE", "binance").strip().lower(),
        symbols=symbols,
        timeframe=env.get("CRYPTO_TIMEFRAME", "1h").strip(),
        history_days=_env_int(env, "CRYPTO_HISTORY_DAYS", 90),
        partitions_start=env.get("CRYPTO_PARTITIONS_START", "2017-08-17").strip(),
        data_location=env.get("CRYPTO_DATA_LOCATION", "data").strip(),
        s3_endpoint_url=(env.get("CRYPTO_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or None),
        market_source=source,
        exchange_api_url=env.get("CRYPTO_EXCHANGE_API_URL") or None,
        exchange_timeout_ms=_env_int(env, "CRYPTO_EXCHANGE_TIMEOUT_MS", 10_000),
        exchange_retry_budget_s=_env_float(env, "CRYPTO_EXCHANGE_RETRY_BUDGET_S", 60.0),
        simulator_seed=_env_int(env, "CRYPTO_SIMULATOR_SEED", 7),
        dagster_home=env.get("DAGSTER_HOME", ".dagster_home"),
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()
