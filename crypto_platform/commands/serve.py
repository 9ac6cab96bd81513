"""`crypto-platform serve`: the Litestar risk API and web UI under uvicorn.

Configuration comes from the environment (serving.api.settings and crypto_platform.settings); the
options here only choose where to listen. One worker by default: the model, the feature cache and the
rate-limit counters live in the process, and a second worker would hold its own copies.

Connection hygiene: idle keep-alive connections close after `--keep-alive` seconds, a request head must
arrive within `--header-timeout` seconds and fit in 16 KiB (serving.api.http_protocol), and proxy
headers (X-Forwarded-For/-Proto) are believed only from CRYPTO_API_TRUSTED_PROXIES (default: nobody), so
the client address the rate limit counts under is the socket's unless a configured proxy says otherwise.
"""

from __future__ import annotations

from typing import Any

import click


@click.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=8800, show_default=True, help="Port to listen on.")
@click.option("--workers", type=int, default=1, show_default=True, help="uvicorn worker processes.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
@click.option("--keep-alive", type=int, default=5, show_default=True, help="Idle keep-alive seconds.")
@click.option(
    "--header-timeout", type=float, default=10.0, show_default=True, help="Seconds to send a request head."
)
def command(
    host: str,
    port: int,
    workers: int,
    log_level: str,
    access_log: bool,
    keep_alive: int,
    header_timeout: float,
) -> None:
    """Run the API: heuristic and ML volatility signals, OHLCV, history, metrics, and the web UI at /."""
    import uvicorn

    from serving.api.settings import load_serving_settings

    settings = load_serving_settings()  # fail here, with the variable's name, on a bad setting
    uvicorn.run(
        "serving.api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        **server_options(settings.trusted_proxies, keep_alive, header_timeout),
    )


def server_options(
    trusted_proxies: tuple[str, ...], keep_alive: int = 5, header_timeout: float = 10.0
) -> dict[str, Any]:
    """uvicorn's connection settings for the API (also what benchmarks/serving.py runs its apps with)."""
    from serving.api.http_protocol import MAX_HEADER_BYTES, HeaderTimeoutH11Protocol

    HeaderTimeoutH11Protocol.header_timeout_s = header_timeout
    trusted = ",".join(trusted_proxies)
    return {
        "http": HeaderTimeoutH11Protocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": keep_alive,
        # uvicorn otherwise believes X-Forwarded-For from 127.0.0.1 (FORWARDED_ALLOW_IPS): any local
        # process, or a sidecar forwarding raw traffic, could pick its own rate-limit address.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or "",
        "server_header": False,
    }
