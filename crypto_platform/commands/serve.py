"""`crypto-platform serve`: the Litestar risk API and web UI under uvicorn.

Configuration comes from the environment (serving.api.settings and crypto_platform.settings); the
options here only choose where to listen. One worker by default: the model, the feature cache and the
rate-limit counters live in the process, and a second worker would hold its own copies.
"""

from __future__ import annotations

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
def command(host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
    """Run the API: heuristic and ML volatility signals, OHLCV, history, metrics, and the web UI at /."""
    import uvicorn

    from serving.api.settings import load_serving_settings

    load_serving_settings()  # fail here, with the variable's name, on a bad setting
    uvicorn.run(
        "serving.api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
    )
