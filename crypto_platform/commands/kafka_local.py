"""`crypto-platform kafka-local`: an Apache Kafka (KRaft) broker, or an N-broker cluster, in the foreground.

The broker's jars come from Maven Central once (the pom in `crypto_platform/devtools/kafka/`), the storage is
formatted on the first start, then this process *becomes* the broker (exec): SIGTERM and SIGINT reach
the JVM directly and run its controlled shutdown, and whoever started the command holds the broker's
pid, with no wrapper process left behind to forward signals or to survive it.

`--brokers N` (N > 1): a cluster in `--data-dir` (layout in `cluster.json`, node i's data in `node-i/`,
client ports `--port` … `--port + N - 1`). With `--node-id i` this process becomes node i (what the test
fixtures start, one process per node, so one broker can be killed alone); without it, it starts every
node as a child, creates the platform's topics (CRYPTO_TOPIC_*, replication 3 / min ISR 2 on 3 brokers)
and waits, passing SIGTERM/SIGINT on to all of them.
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
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Nodes of the cluster (each broker+controller, all voters of the quorum).",
)
@click.option(
    "--node-id",
    type=int,
    default=None,
    help="With --brokers N: run only this node (1..N) of the cluster in --data-dir.",
)
@click.option("--resolve-only", is_flag=True, help="Download the jars into the cache and exit.")
def command(
    port: int,
    data_dir: Path,
    host: str,
    controller_port: int,
    heap: str,
    cache_dir: Path | None,
    brokers: int,
    node_id: int | None,
    resolve_only: bool,
) -> None:
    """Run a Kafka broker (KRaft, broker+controller) on HOST:PORT, or a cluster, until SIGTERM/SIGINT."""
    from crypto_platform.devtools.kafka.local_broker import (
        BrokerConfig,
        BrokerSetupError,
        broker_command,
        choose_controller_port,
        cluster_layout,
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
        if node_id is not None and brokers == 1:
            raise click.BadParameter("needs --brokers N with N > 1", param_hint="--node-id")
        cluster_id = None
        if brokers > 1:
            if controller_port:
                raise click.BadParameter(
                    "a cluster's controller ports are chosen once and kept in cluster.json",
                    param_hint="--controller-port",
                )
            layout = cluster_layout(data_dir, brokers, host, port)
            if node_id is None:
                _run_cluster(data_dir, brokers, host, port, heap, say)
                return
            config = layout.broker_config(node_id)
            cluster_id = layout.cluster_id
        else:
            config = BrokerConfig(
                port=port,
                controller_port=controller_port or choose_controller_port(data_dir, port, host),
                data_dir=data_dir,
                host=host,
            )
        if prepare_data_dir(config, java, libs, cluster_id=cluster_id):
            say(f"formatted new storage in {config.log_dir}")
    except BrokerSetupError as exc:
        raise click.ClickException(str(exc)) from exc
    node = f"node {config.node_id} of {brokers}, " if brokers > 1 else ""
    say(
        f"Kafka {kafka_version()} (KRaft) {node}on {config.bootstrap_servers}, controller port "
        f"{config.controller_port}, data in {config.data_dir}"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    args = broker_command(java, libs, config, heap)
    os.execv(args[0], args)


def _run_cluster(root: Path, brokers: int, host: str, base_port: int, heap: str, say) -> None:
    """Every node as a child `kafka-local --node-id i`; the platform topics; then wait for a signal."""
    import asyncio
    import signal
    import threading

    from crypto_platform.devtools.kafka.local_broker import replication_for
    from crypto_platform.devtools.kafka.runner import LocalKafkaCluster
    from serving.stream.config import ensure_topics, load_stream_settings

    cluster = LocalKafkaCluster(root, brokers, host=host, base_port=base_port, heap=heap)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start()
        stream = load_stream_settings()
        replication, min_isr = replication_for(brokers)
        asyncio.run(
            ensure_topics(
                cluster.bootstrap_servers, stream.topics, stream.partitions, replication_factor=replication
            )
        )
        say(
            f"{brokers}-broker cluster on {cluster.bootstrap_servers} (replication {replication}, "
            f"min ISR {min_isr}); topics {', '.join(stream.topics.all())}; node logs in {root}"
        )
        reported: set[int] = set()
        while not stop.wait(1.0):
            down = set(cluster.nodes) - set(cluster.running_ids())
            for node_id in sorted(down - reported):
                say(f"node {node_id} exited; the cluster goes on with {brokers - len(down)} (see its log)")
            reported = down
            if len(down) == brokers:
                raise click.ClickException("every node exited")
    finally:
        cluster.stop()
