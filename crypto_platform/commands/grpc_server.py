"""`crypto-platform grpc`: the gRPC interface (crypto.CryptoService) over the API's services.

Configuration comes from the environment, as for `serve` (serving.api.settings): the same data
location, history DB, MLflow model alias and API keys, so both interfaces give the same answers.
SIGTERM or SIGINT stops it gracefully: health turns NOT_SERVING, in-flight calls get `--grace`
seconds to finish (StreamPrices calls, which never finish by themselves, are then cancelled), the
model poller stops and the history is drained.
"""

from __future__ import annotations

import asyncio
import signal

import click

from crypto_platform.commands.service_process import configure_logging


@click.command(name="grpc")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=50051, show_default=True, help="Port to listen on (0: any free).")
@click.option("--grace", type=float, default=5.0, show_default=True, help="Seconds calls get on stop.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def command(host: str, port: int, grace: float, log_level: str) -> None:
    """Serve crypto.CryptoService, the grpc.health.v1 health service and server reflection."""
    from serving.api.settings import load_serving_settings

    configure_logging(log_level)
    settings = load_serving_settings()  # fail here, with the variable's name, on a bad setting
    asyncio.run(_serve(settings, host, port, grace))


async def _serve(settings, host: str, port: int, grace: float) -> None:
    from serving.api.services import build_services
    from serving.core.gc_pauses import freeze_startup_heap
    from serving.grpc.server import SERVICE_NAME, running_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    services = build_services(settings)
    async with running_server(services, host, port, grace_s=grace) as running:
        # Started (the first model load awaited): what is alive now lives as long as the process, and
        # a full collection no longer walks it (serving.core.gc_pauses).
        freeze_startup_heap()
        click.echo(f"{SERVICE_NAME} listening on {host}:{running.port}", err=True)
        await stop.wait()
        click.echo("stopping", err=True)
