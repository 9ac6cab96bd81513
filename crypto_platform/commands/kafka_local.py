"""`crypto-platform kafka-local`: a real single-node Apache Kafka (KRaft) broker in the foreground.

The broker's jars come from Maven Central once (the pom in `crypto_platform/devtools/kafka/`), the storage is
formatted on the first start, then this process *becomes* the broker (exec): SIGTERM and SIGINT reach
the JVM directly and run its controlled shutdown, and whoever started the command holds the broker's
pid, with no wrapper process left behind to forward signals or to survive it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.command(name="kafka-local")
@click.option("--port", type=int, default=9092, show_default=True, help="Client listener port.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".kafka-data"),
    show_default=True,
    help="Configuration, metadata and topic logs; kept across restarts.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on and advertise.")
@click.option(
    "--controller-port",
    type=int,
    default=0,
    show_default=True,
    help="KRaft controller port (0: the data directory's previous one if free, else any free port).",
)
@click.option("--heap", default="512m", show_default=True, help="JVM maximum heap (-Xmx).")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Broker jar cache (default: $CRYPTO_KAFKA_CACHE or ~/.cache/crypto-platform/kafka-<version>).",
)
@click.option("--resolve-only", is_flag=True, help="Download the jars into the cache and exit.")
def command(
    port: int,
    data_dir: Path,
    host: str,
    controller_port: int,
    heap: str,
    cache_dir: Path | None,
    resolve_only: bool,
) -> None:
    """Run a single-node Kafka broker (KRaft, broker+controller) on HOST:PORT until SIGTERM/SIGINT."""
    from crypto_platform.devtools.kafka.local_broker import (
        BrokerConfig,
        BrokerSetupError,
        broker_command,
        choose_controller_port,
        java_executable,
        kafka_version,
        prepare_data_dir,
        resolve_jars,
    )

    def say(message: str) -> None:
        click.echo(f"kafka-local: {message}", err=True)

    try:
        libs = resolve_jars(cache_dir)
        if resolve_only:
            say(f"Kafka {kafka_version()} jars in {libs}")
            return
        java = java_executable()
        if java is None:
            raise BrokerSetupError(
                "Java (17+) is needed to run the broker: no JAVA_HOME and no `java` on PATH"
            )
        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        config = BrokerConfig(
            port=port,
            controller_port=controller_port or choose_controller_port(data_dir, port, host),
            data_dir=data_dir,
            host=host,
        )
        if prepare_data_dir(config, java, libs):
            say(f"formatted new storage in {config.log_dir}")
    except BrokerSetupError as exc:
        raise click.ClickException(str(exc)) from exc
    say(
        f"Kafka {kafka_version()} (KRaft) on {config.bootstrap_servers}, controller port "
        f"{config.controller_port}, data in {data_dir}"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    args = broker_command(java, libs, config, heap)
    os.execv(args[0], args)
