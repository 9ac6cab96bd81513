"""One place that reads the environment of the platform (the Dagster code location, its CLI and `lib`).

Every env-dependent choice goes through `get_settings()`, so the Dagster code location, the API and the
scorer agree on where data lives and which market they watch. Each `Settings` field names the variable it
is read from, its default and its meaning; `load_settings` is the only reader. (The serving faces keep
their own variables in `serving/api/settings.py` and `serving/stream/config.py`.)
Defaults describe the embedded single-machine setup: Parquet under ./data, SQLite for Dagster and
MLflow, the exchange tried once and the seeded simulator as fallback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


def _env_positive_int(env: dict[str, str], name: str, default: int) -> int:
    value = _env_int(env, name, default)
    if value < 1:
        raise ValueError(f"{name} must be ≥ 1, got {value}")
    return value


def _env_flag(env: dict[str, str], name: str) -> bool:
    """`1`, `true`, `yes` (any case) → True; unset, empty or anything else → False."""
    return env.get(name, "").strip().lower() in ("1", "true", "yes")


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
    """Platform configuration; the comment on each field names its environment variable."""

    exchange: str = "binance"  # CRYPTO_EXCHANGE: ccxt exchange id
    # CRYPTO_SYMBOLS: comma-separated pairs (BTC/USDT, BTCUSDT, btc/usdt all accepted)
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    timeframe: str = "1h"  # CRYPTO_TIMEFRAME: bar length
    # CRYPTO_HISTORY_DAYS: days of history `crypto-platform materialize` loads besides today. Features need
    # 30 days of look-back (the 720-bar monthly realized volatility), so 90 leaves ~60 days of complete
    # features for the model to train and be evaluated on.
    history_days: int = 90
    # CRYPTO_PARTITIONS_START: first day of the `ohlcv` date partitions (UTC).
    partitions_start: str = "2017-08-17"
    # CRYPTO_DATA_LOCATION: local directory or s3://bucket/prefix for Parquet, reports and other data.
    data_location: str = "data"
    # CRYPTO_S3_ENDPOINT_URL, else AWS_ENDPOINT_URL: S3-compatible endpoint (MinIO); unset on AWS.
    s3_endpoint_url: str | None = None
    # AWS_REGION, else AWS_DEFAULT_REGION: region of the S3 client (MinIO accepts any).
    aws_region: str = "us-east-1"
    # CRYPTO_MARKET_SOURCE: `auto` (exchange, else simulator), `exchange` or `simulated`.
    market_source: str = "auto"
    # CRYPTO_EXCHANGE_API_URL: base URL of the exchange's REST API (the replay server, a proxy).
    exchange_api_url: str | None = None
    exchange_timeout_ms: int = 10_000  # CRYPTO_EXCHANGE_TIMEOUT_MS: per-request timeout
    # CRYPTO_EXCHANGE_RETRY_BUDGET_S: total time one fetch may spend retrying before it gives up.
    exchange_retry_budget_s: float = 60.0
    simulator_seed: int = 7  # CRYPTO_SIMULATOR_SEED: seed of the simulated market
    # CRYPTO_REFRESH_BATCH_SYMBOLS: symbols one market run covers (`materialize`, the hourly refresh, gap
    # repair). 64: 256 pairs are 4 runs; 1 is the old run-per-symbol shape (kept to measure against).
    refresh_batch_symbols: int = 64
    # CRYPTO_FETCH_CONCURRENCY: symbols one run fetches at the same time; the exchange's rate limit is
    # shared by all of them (one limiter per process), so this bounds waiting on latency, not request rate.
    fetch_concurrency: int = 8
    dagster_home: str = ".dagster_home"  # DAGSTER_HOME: the Dagster instance directory
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI: tracking server and registry
    # CRYPTO_ML_FAST (1/true/yes): retrains the sensor and the schedule request, and `materialize` without
    # --model-config, use the tiny LSTM preset (the offline demo).
    ml_fast_training: bool = False
    # CRYPTO_SERVING_URL and CRYPTO_ADMIN_API_KEY: where and with which key the promotion sensor POSTs
    # /v1/ml/model/reload; both unset, it does nothing (serving polls the champion alias anyway).
    serving_url: str | None = None
    admin_api_key: str | None = field(default=None, repr=False)  # a credential: never in a repr or log
    # CRYPTO_CODE_VERSION: the code version training runs record; unset, the git commit of the checkout.
    code_version: str | None = None

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
        aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        market_source=source,
        exchange_api_url=env.get("CRYPTO_EXCHANGE_API_URL") or None,
        exchange_timeout_ms=_env_int(env, "CRYPTO_EXCHANGE_TIMEOUT_MS", 10_000),
        exchange_retry_budget_s=_env_float(env, "CRYPTO_EXCHANGE_RETRY_BUDGET_S", 60.0),
        simulator_seed=_env_int(env, "CRYPTO_SIMULATOR_SEED", 7),
        refresh_batch_symbols=_env_positive_int(env, "CRYPTO_REFRESH_BATCH_SYMBOLS", 64),
        fetch_concurrency=_env_positive_int(env, "CRYPTO_FETCH_CONCURRENCY", 8),
        dagster_home=env.get("DAGSTER_HOME", ".dagster_home"),
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        ml_fast_training=_env_flag(env, "CRYPTO_ML_FAST"),
        serving_url=env.get("CRYPTO_SERVING_URL") or None,
        admin_api_key=env.get("CRYPTO_ADMIN_API_KEY") or None,
        code_version=env.get("CRYPTO_CODE_VERSION") or None,
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()
