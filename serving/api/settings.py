"""Serving settings from the environment, read once per process (tests build their own with `load`).

Platform-wide choices (exchange, symbols, data location, MLflow URI) come from
`crypto_platform.settings`; what only the API needs is read here.

CRYPTO_API_MODEL_NAME (crypto-volatility), CRYPTO_API_MODEL_ALIAS (champion): the model followed.
CRYPTO_API_MODEL_POLL_S (60): seconds between alias checks; 0 stops polling once a model is loaded.
CRYPTO_API_MODEL_STARTUP_S (20): how long start-up waits for the first load attempt.
CRYPTO_API_HISTORY_URL (sqlite file `serving_history.db` beside the local data): the history DB.
CRYPTO_API_HISTORY_QUEUE_MAX (10000): history rows waiting for the writer at most. When the queue is
    full a request waits up to CRYPTO_API_HISTORY_ENQUEUE_WAIT_S (0.05) seconds for room, then its row
    is dropped, logged and counted (crypto_api_history_dropped_total; alert CryptoApiHistoryDropped).
CRYPTO_API_MARKET_TTL_S (15): OHLCV cache lifetime (a new closed bar always refetches).
CRYPTO_API_MAX_STALE_BARS (2): stored bars further behind go to the live source instead.
CRYPTO_API_KEYS (`name:role:key,...`, role reader|admin), CRYPTO_API_KEYS_FILE (same, one per line).
CRYPTO_API_KEY_PEPPER (random per process): HMAC key the API keys are hashed with; set it when keys
    must hash the same across processes.
    Keys and a set pepper must be at least 32 characters and must not contain `change-me` (the
    placeholders of .env.example): a stack started unchanged would otherwise run with a publicly known
    admin key. Start-up fails naming the variable.
CRYPTO_API_REQUIRE_KEY (false): every /v1 route needs a valid key.
CRYPTO_API_RATE_LIMIT (600): request units per minute per key, or per client address without one
    (a GraphQL document costs one per operation it runs, a gRPC stream one per message); 0 = off.
CRYPTO_API_TRUSTED_PROXIES (none): comma-separated addresses/networks whose X-Forwarded-For /
    X-Forwarded-Proto are believed (uvicorn's forwarded_allow_ips); from anyone else they are ignored,
    so a client cannot choose the address its rate limit counts under.
CRYPTO_API_MAX_STREAMS (64), CRYPTO_API_MAX_STREAMS_PER_CALLER (4): concurrent gRPC StreamPrices
    calls in total and per key / client address.
CRYPTO_API_CORS_ORIGINS (none): comma-separated allowed origins (`*` for any).
CRYPTO_API_MAX_BATCH (16): symbols per batch signal request.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from crypto_platform.lib.model.registry import CHAMPION, MODEL_NAME
from crypto_platform.settings import Settings, load_settings
from serving.core.auth import ROLES
from serving.core.history import DEFAULT_ENQUEUE_WAIT_S, DEFAULT_QUEUE_MAX, history_url


@dataclass(frozen=True)
class ApiKeySpec:
    """One configured key, as read from the environment (the API keeps only its hash)."""

    name: str
    role: str
    key: str = field(repr=False)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _number(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return value


MIN_SECRET_CHARS = 32
PLACEHOLDER_MARK = "change-me"


def check_secret(variable: str, what: str, value: str) -> None:
    """Refuse a placeholder (`change-me…`) or a short secret, naming the variable it came from."""
    if PLACEHOLDER_MARK in value.lower():
        raise ValueError(f"{variable}: {what} is a placeholder ({PLACEHOLDER_MARK}…); set a random secret")
    if len(value) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{variable}: {what} is shorter than {MIN_SECRET_CHARS} characters "
            f"(`openssl rand -hex 32` makes one)"
        )


def _csv(env: dict[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


def parse_api_keys(text: str, source: str = "CRYPTO_API_KEYS") -> tuple[ApiKeySpec, ...]:
    """`name:role:key` entries separated by commas or newlines; `#` starts a comment line."""
    specs = []
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError(f"{source}: entry {entry.split(':', 1)[0]!r}… must be name:role:key")
        name, role, key = (p.strip() for p in parts)
        if role not in ROLES:
            raise ValueError(f"{source}: key {name!r} has role {role!r}; roles are {ROLES}")
        # A short key is guessable within any rate limit worth having; a placeholder is public.
        check_secret(source, f"key {name!r}", key)
        specs.append(ApiKeySpec(name, role, key))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: key names must be unique, got {names}")
    return tuple(specs)


@dataclass(frozen=True)
class ServingSettings:
    platform: Settings = field(default_factory=Settings)
    model_name: str = MODEL_NAME
    model_alias: str = CHAMPION
    model_poll_s: float = 60.0
    model_startup_wait_s: float = 20.0
    history_url: str = "sqlite:///data/serving_history.db"
    history_queue_max: int = DEFAULT_QUEUE_MAX
    history_enqueue_wait_s: float = DEFAULT_ENQUEUE_WAIT_S
    market_cache_ttl_s: float = 15.0
    max_stale_bars: int = 2
    api_keys: tuple[ApiKeySpec, ...] = ()
    key_pepper: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    require_key: bool = False
    rate_limit_per_minute: int = 600
    cors_origins: tuple[str, ...] = ()
    max_batch: int = 16
    trusted_proxies: tuple[str, ...] = ()
    max_streams: int = 64
    max_streams_per_caller: int = 4


def load_serving_settings(env: dict[str, str] | None = None) -> ServingSettings:
    env = dict(os.environ if env is None else env)
    platform = load_settings(env)
    keys_text = env.get("CRYPTO_API_KEYS", "")
    keys = parse_api_keys(keys_text) if keys_text.strip() else ()
    keys_file = env.get("CRYPTO_API_KEYS_FILE", "").strip()
    if keys_file:
        keys = keys + parse_api_keys(Path(keys_file).read_text(), source=keys_file)
    pepper = env.get("CRYPTO_API_KEY_PEPPER", "").strip()
    require_key = _truthy(env.get("CRYPTO_API_REQUIRE_KEY"))
    if pepper and (keys or require_key):  # the pepper only guards something once keys exist
        check_secret("CRYPTO_API_KEY_PEPPER", "the pepper", pepper)
    pepper = pepper or secrets.token_hex(32)
    origins = _csv(env, "CRYPTO_API_CORS_ORIGINS")
    return ServingSettings(
        platform=platform,
        model_name=env.get("CRYPTO_API_MODEL_NAME", MODEL_NAME).strip() or MODEL_NAME,
        model_alias=env.get("CRYPTO_API_MODEL_ALIAS", CHAMPION).strip() or CHAMPION,
        model_poll_s=_number(env, "CRYPTO_API_MODEL_POLL_S", 60.0),
        model_startup_wait_s=_number(env, "CRYPTO_API_MODEL_STARTUP_S", 20.0),
        history_url=history_url(platform, env),
        history_queue_max=max(1, int(_number(env, "CRYPTO_API_HISTORY_QUEUE_MAX", DEFAULT_QUEUE_MAX))),
        history_enqueue_wait_s=_number(env, "CRYPTO_API_HISTORY_ENQUEUE_WAIT_S", DEFAULT_ENQUEUE_WAIT_S),
        market_cache_ttl_s=_number(env, "CRYPTO_API_MARKET_TTL_S", 15.0),
        max_stale_bars=int(_number(env, "CRYPTO_API_MAX_STALE_BARS", 2)),
        api_keys=keys,
        key_pepper=pepper,
        require_key=require_key,
        rate_limit_per_minute=int(_number(env, "CRYPTO_API_RATE_LIMIT", 600)),
        cors_origins=origins,
        max_batch=max(1, int(_number(env, "CRYPTO_API_MAX_BATCH", 16))),
        trusted_proxies=_csv(env, "CRYPTO_API_TRUSTED_PROXIES"),
        max_streams=max(1, int(_number(env, "CRYPTO_API_MAX_STREAMS", 64))),
        max_streams_per_caller=max(1, int(_number(env, "CRYPTO_API_MAX_STREAMS_PER_CALLER", 4))),
    )


@lru_cache(maxsize=1)
def get_serving_settings() -> ServingSettings:
    """This process's serving settings, read once (`get_serving_settings.cache_clear()` in tests)."""
    return load_serving_settings()
