"""API keys (hashed, roles), the require-key option, rate limits with RateLimit headers, CORS, settings."""

from __future__ import annotations

import pytest

from serving.api.settings import ApiKeySpec, load_serving_settings, parse_api_keys
from serving.core.auth import KeyRing

READER = ApiKeySpec("dash", "reader", "reader-key-0123456789abcdef-0123456")
ADMIN = ApiKeySpec("ops", "admin", "admin-key-0123456789abcdef-01234567")
A32, B32 = "a" * 32, "b" * 32


def test_keys_are_kept_only_as_peppered_hashes():
    ring = KeyRing((READER, ADMIN), pepper="pepper-a")
    assert ring.identify(READER.key).role == "reader"
    assert ring.identify(ADMIN.key).name == "ops"
    assert ring.identify("reader-key-0123456789abcdeX") is None
    stored = repr(ring.__dict__)
    assert READER.key not in stored and ADMIN.key not in stored
    # Another pepper gives other digests: a leaked table is useless without the server's pepper.
    other = KeyRing((READER,), pepper="pepper-b")
    assert other._entries[0][0] != ring._entries[0][0]


def test_parse_api_keys_validates_entries():
    assert [(s.name, s.role) for s in parse_api_keys(f"a:reader:{A32},\nb:admin:{B32}")] == [
        ("a", "reader"),
        ("b", "admin"),
    ]
    with pytest.raises(ValueError, match="role"):
        parse_api_keys(f"a:root:{A32}")
    with pytest.raises(ValueError, match="CRYPTO_API_KEYS: key 'a' is shorter than 32"):
        parse_api_keys("a:reader:" + "x" * 31)
    with pytest.raises(ValueError, match="unique"):
        parse_api_keys(f"a:reader:{A32},a:admin:{B32}")
    with pytest.raises(ValueError, match="name:role:key"):
        parse_api_keys("just-a-key-without-fields")


def test_serving_settings_from_env(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops team\nops:admin:{ADMIN.key}\n")
    settings = load_serving_settings(
        {
            "CRYPTO_API_KEYS": f"dash:reader:{READER.key}",
            "CRYPTO_API_KEYS_FILE": str(keys_file),
            "CRYPTO_API_REQUIRE_KEY": "true",
            "CRYPTO_API_RATE_LIMIT": "5",
            "CRYPTO_API_CORS_ORIGINS": "https://a.example, https://b.example",
            "CRYPTO_DATA_LOCATION": str(tmp_path / "data"),
        }
    )
    assert [k.name for k in settings.api_keys] == ["dash", "ops"]
    assert settings.require_key and settings.rate_limit_per_minute == 5
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.history_url == f"sqlite:///{tmp_path / 'data' / 'serving_history.db'}"
    with pytest.raises(ValueError, match="CRYPTO_API_MODEL_POLL_S"):
        load_serving_settings({"CRYPTO_API_MODEL_POLL_S": "soon"})


def test_placeholder_and_short_secrets_fail_start_up_naming_the_variable(tmp_path):
    """.env.example's values, as a stack copied unchanged would start with them."""
    example = {"CRYPTO_DATA_LOCATION": str(tmp_path)}
    with pytest.raises(ValueError, match="CRYPTO_API_KEYS: key 'admin' is a placeholder"):
        load_serving_settings({**example, "CRYPTO_API_KEYS": "admin:admin:change-me-admin-key-0000"})
    # long enough, still the placeholder (any case)
    with pytest.raises(ValueError, match="placeholder"):
        load_serving_settings({**example, "CRYPTO_API_KEYS": f"admin:admin:CHANGE-ME-{A32}"})
    keys_file = tmp_path / "keys"
    keys_file.write_text("ops:admin:change-me-but-long-enough-0123456789abcdef\n")
    with pytest.raises(ValueError, match=f"{keys_file}: key 'ops' is a placeholder"):
        load_serving_settings({**example, "CRYPTO_API_KEYS_FILE": str(keys_file)})
    with_key = {**example, "CRYPTO_API_KEYS": f"ops:admin:{A32}"}
    with pytest.raises(ValueError, match="CRYPTO_API_KEY_PEPPER: the pepper is a placeholder"):
        load_serving_settings({**with_key, "CRYPTO_API_KEY_PEPPER": "change-me-pepper-0000000000000000"})
    with pytest.raises(ValueError, match="CRYPTO_API_KEY_PEPPER: the pepper is shorter than 32"):
        load_serving_settings({**with_key, "CRYPTO_API_KEY_PEPPER": "short-pepper"})
    with pytest.raises(ValueError, match="CRYPTO_API_KEY_PEPPER"):
        load_serving_settings({**example, "CRYPTO_API_REQUIRE_KEY": "true", "CRYPTO_API_KEY_PEPPER": "short"})
    # strong values pass; without keys the pepper guards nothing and is not checked
    assert load_serving_settings({**with_key, "CRYPTO_API_KEY_PEPPER": B32}).key_pepper == B32
    assert load_serving_settings({**example, "CRYPTO_API_KEY_PEPPER": "short"}).api_keys == ()


def test_env_example_placeholders_are_refused():
    from pathlib import Path

    env_example = Path(__file__).resolve().parents[2] / ".env.example"
    values = dict(
        line.split("=", 1) for line in env_example.read_text().splitlines() if line and line[0].isupper()
    )
    env = {
        "CRYPTO_API_KEYS": f"admin:admin:{values['CRYPTO_ADMIN_API_KEY']},"
        f"reader:reader:{values['CRYPTO_READER_API_KEY']}",
        "CRYPTO_API_KEY_PEPPER": values["CRYPTO_API_KEY_PEPPER"],
    }
    with pytest.raises(ValueError, match="CRYPTO_API_KEYS: key 'admin' is a placeholder"):
        load_serving_settings(env)


def test_require_key_protects_v1_but_not_health(make_api_client, api_settings):
    client = make_api_client(api_settings(api_keys=(READER, ADMIN), require_key=True))
    params = {"symbol": "BTC/USDT", "limit": 2}
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503  # not 401: probes never need keys
    assert client.get("/metrics").status_code == 200
    anonymous = client.get("/v1/crypto/ohlcv", params=params)
    assert anonymous.status_code == 401 and "API key" in anonymous.json()["detail"]
    assert (
        client.get(
            "/v1/crypto/ohlcv", params=params, headers={"X-API-Key": "nope-nope-nope-nope"}
        ).status_code
        == 401
    )
    assert client.get("/v1/crypto/ohlcv", params=params, headers={"X-API-Key": READER.key}).status_code == 200
    bearer = {"Authorization": f"Bearer {ADMIN.key}"}
    assert client.get("/v1/crypto/ohlcv", params=params, headers=bearer).status_code == 200


def test_invalid_key_is_rejected_even_when_keys_are_optional(make_api_client, api_settings):
    client = make_api_client(api_settings(api_keys=(READER,)))
    params = {"symbol": "BTC/USDT", "limit": 2}
    assert client.get("/v1/crypto/ohlcv", params=params).status_code == 200
    assert (
        client.get(
            "/v1/crypto/ohlcv", params=params, headers={"X-API-Key": "typo-typo-typo-typo"}
        ).status_code
        == 401
    )


def test_rate_limit_per_key_with_headers(make_api_client, api_settings):
    client = make_api_client(api_settings(api_keys=(READER, ADMIN), rate_limit_per_minute=3))
    params = {"symbol": "BTC/USDT", "limit": 2}
    reader = {"X-API-Key": READER.key}
    first = client.get("/v1/crypto/ohlcv", params=params, headers=reader)
    assert first.status_code == 200
    assert first.headers["RateLimit-Limit"] == "3"
    assert first.headers["RateLimit-Policy"] == "3; w=60"
    assert int(first.headers["RateLimit-Remaining"]) == 2
    for _ in range(2):
        assert client.get("/v1/crypto/ohlcv", params=params, headers=reader).status_code == 200
    limited = client.get("/v1/crypto/ohlcv", params=params, headers=reader)
    assert limited.status_code == 429
    assert limited.headers["RateLimit-Remaining"] == "0" and int(limited.headers["RateLimit-Reset"]) > 0
    # Another key and anonymous callers have their own budgets; probes are never limited.
    assert client.get("/v1/crypto/ohlcv", params=params, headers={"X-API-Key": ADMIN.key}).status_code == 200
    assert client.get("/v1/crypto/ohlcv", params=params).status_code == 200
    for _ in range(5):
        assert client.get("/health").status_code == 200


def test_cors_is_configurable(make_api_client, api_settings):
    client = make_api_client(api_settings(cors_origins=("https://dash.example",)))
    preflight = client.options(
        "/v1/crypto/signal",
        headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
    other = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
