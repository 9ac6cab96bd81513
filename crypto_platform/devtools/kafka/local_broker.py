"""Apache Kafka (KRaft) brokers from Maven Central, for development and tests: one node, or an N-node cluster.

What `crypto-platform kafka-local` and the test fixtures share:

- `resolve_jars()`: the broker's jars, copied once from Maven Central with `mvn dependency:copy-dependencies`
  (the pom beside this module pins the version) into a cache directory, under a file lock so two processes
  starting at once do not both download into it;
- `server_properties()`: each process acts as broker and controller, both listeners on loopback. One node:
  the internal topics (consumer offsets, transaction state) at replication 1 / min ISR 1 so transactions
  work on it. A cluster (`ClusterLayout`, every node a voter of the controller quorum): replication
  `min(3, N)` and min ISR one less (2 on 3 brokers) for the internal topics and as the topics' default,
  so one broker may die without an `acks=all` write failing;
- `ClusterLayout`: a cluster's id, ports and controller ports, kept in `cluster.json` of its root directory
  (each node's data in `node-<id>/`): every node and every restart reads the same quorum;
- `prepare_data_dir()`: writes the configuration into the data directory and formats the storage the first
  time (`kafka.tools.StorageTool format`, what `kafka-storage.sh format` runs);
- `broker_command()`: the `java -cp … kafka.Kafka server.properties` command line.

Java 17 runs the broker; `mvn` is needed only the first time (or after the version changes).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from crypto_platform.devtools.ports import free_port, port_is_free
from serving.stream.config import replication_for  # the runtime's rule, applied to any cluster

POM_PATH = Path(__file__).with_name("pom.xml")
CACHE_ENV = "CRYPTO_KAFKA_CACHE"
# The jar that proves a cache directory holds this version's broker.
_BROKER_JAR = "kafka_2.13-{version}.jar"
_COMPLETE_MARKER = ".complete"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
LOG_DIR_NAME = "kraft-combined-logs"
STATE_FILE = "kafka-local.json"
CLUSTER_FILE = "cluster.json"
DEFAULT_HEAP = "512m"

# WARN and above to stderr: a dev broker at INFO prints hundreds of lines per start.
LOG4J_PROPERTIES = """\
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
# The state change and request loggers are noisy even at WARN during a single-node start.
log4j.logger.state.change.logger=ERROR
log4j.logger.kafka.request.logger=ERROR
"""


class BrokerSetupError(RuntimeError):
    """The broker could not be provisioned (no Java, jar resolution failed, storage format failed)."""


@cache
def kafka_version(pom: Path = POM_PATH) -> str:
    """The Kafka version the pom pins (`<kafka.version>`): the single place it is written."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise BrokerSetupError(f"{pom} has no <kafka.version> property")
    return node.text.strip()  # type: ignore[union-attr]


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$CRYPTO_KAFKA_CACHE`, else `$XDG_CACHE_HOME|~/.cache` / crypto-platform / kafka-<version>."""
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "crypto-platform" / f"kafka-{kafka_version()}"


def _is_complete(cache_dir: Path) -> bool:
    libs = cache_dir / "libs"
    return (cache_dir / _COMPLETE_MARKER).exists() and (
        libs / _BROKER_JAR.format(version=kafka_version())
    ).exists()


def resolve_jars(cache_dir: Path | None = None, *, mvn: str | None = None, timeout_s: float = 600.0) -> Path:
    """The directory holding the broker's jars, resolving them from Maven Central on first use.

    Concurrent callers serialise on a lock file beside the cache; the jars are copied into a temporary
    directory and renamed into place, so a cache directory that exists is always complete.
    """
    cache_dir = (cache_dir or default_cache_dir()).expanduser()
    if _is_complete(cache_dir):
        return cache_dir / "libs"
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_dir.parent / f".{cache_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _is_complete(cache_dir):  # another process resolved it while we waited
            return cache_dir / "libs"
        mvn = mvn or shutil.which("mvn")
        if mvn is None:
            raise BrokerSetupError(
                f"Kafka jars are not cached in {cache_dir} and `mvn` is not on PATH to resolve them "
                f"(install Maven, or point {CACHE_ENV} at a directory holding libs/)"
            )
        staging = cache_dir.parent / f".{cache_dir.name}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        command = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(POM_PATH),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging / 'libs'}",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerSetupError(f"resolving Kafka jars with mvn took over {timeout_s:.0f}s") from exc
        if (
            done.returncode != 0
            or not (staging / "libs" / _BROKER_JAR.format(version=kafka_version())).exists()
        ):
            shutil.rmtree(staging, ignore_errors=True)
            output = (done.stdout + done.stderr).strip()[-3000:]
            raise BrokerSetupError(
                f"`{' '.join(command)}` failed (exit {done.returncode}); Maven Central must be reachable "
                f"the first time:\n{output}"
            )
        (staging / _COMPLETE_MARKER).write_text(kafka_version() + "\n")
        shutil.rmtree(cache_dir, ignore_errors=True)  # an incomplete leftover
        staging.rename(cache_dir)
    return cache_dir / "libs"


def java_executable() -> str | None:
    """`$JAVA_HOME/bin/java`, else `java` on PATH, else None."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding (22 characters).

    Like Kafka's `Uuid.randomUuid()`, ids starting with "-" are avoided: tools would read one as an option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True)
class BrokerConfig:
    """One KRaft node (broker and controller): where it listens, where it keeps its data, its quorum."""

    port: int
    controller_port: int
    data_dir: Path
    host: str = "127.0.0.1"
    node_id: int = 1
    partitions: int = 3
    # The controller quorum as (node id, controller port); empty: this node alone.
    voters: tuple[tuple[int, int], ...] = ()
    brokers: int = 1

    @property
    def quorum_voters(self) -> str:
        voters = self.voters or ((self.node_id, self.controller_port),)
        return ",".join(f"{node}@{self.host}:{port}" for node, port in voters)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / LOG_DIR_NAME

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.data_dir / "log4j.properties"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


def server_properties(config: BrokerConfig) -> str:
    """server.properties of a combined broker+controller node (alone, or one of `config.brokers`)."""
    host = config.host
    replication, min_isr = replication_for(config.brokers)
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(config.node_id),
        "controller.quorum.voters": config.quorum_voters,
        "listeners": f"PLAINTEXT://{host}:{config.port},CONTROLLER://{host}:{config.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{config.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(config.log_dir),
        "num.partitions": str(config.partitions),
        # Topics are created explicitly (ensure_topics), with the partition count the platform expects;
        # a typo in a topic name must fail rather than create a new one.
        "auto.create.topics.enable": "false",
        # Internal topics cannot have more replicas than brokers (one node: 1), and the transaction
        # coordinator refuses to start with min.insync above the replication factor. On a cluster a
        # committed offset or transaction state survives one broker down, as the topics' records do.
        "offsets.topic.replication.factor": str(replication),
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "3",
        # Topics created without a replication factor (-1), and every topic's min ISR unless it sets one.
        "default.replication.factor": str(replication),
        "min.insync.replicas": str(min_isr),
        # An out-of-sync replica never becomes leader: a broker that crashed behind would lose writes.
        "unclean.leader.election.enable": "false",
        # Consumers join a group at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        # Controlled shutdown is what makes SIGTERM clean (leadership moves first on a cluster); its
        # retries are pointless with one node.
        "controlled.shutdown.max.retries": "1" if config.brokers == 1 else "3",
        "log.retention.hours": "168",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    header = "# Written by crypto-platform kafka-local; rewritten on every start.\n"
    return header + "".join(f"{key}={value}\n" for key, value in lines.items())


def is_formatted(config: BrokerConfig) -> bool:
    return (config.log_dir / "meta.properties").exists()


def choose_controller_port(data_dir: Path, port: int, host: str = "127.0.0.1") -> int:
    """The controller port this data directory used last time if it is still free, else a new free one.

    The quorum's voter address is configuration, not state, so a new port works; keeping the old one
    avoids surprises for anyone watching the process.
    """
    state = data_dir / STATE_FILE
    try:
        previous = int(json.loads(state.read_text())["controller_port"])
    except (OSError, ValueError, KeyError, TypeError):
        previous = 0
    if previous and previous != port and port_is_free(previous, host):
        return previous
    while True:
        candidate = free_port(host)
        if candidate != port:
            return candidate


def java_options(config: BrokerConfig, heap: str = DEFAULT_HEAP, *, short_lived: bool = False) -> list[str]:
    """JVM options; `short_lived` (the storage tool) trades peak speed for a faster start."""
    tuning = (
        ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
        if short_lived
        else ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError"]
    )
    return [
        "-Xms64m",
        f"-Xmx{heap}",
        *tuning,
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration={config.log4j_path.as_uri()}",
        f"-Dkafka.logs.dir={config.data_dir / 'logs'}",
    ]


def classpath(libs: Path) -> str:
    # A wildcard entry: the JVM expands it; the command line stays short.
    return str(libs / "*")


def format_command(java: str, libs: Path, config: BrokerConfig, cluster_id: str) -> list[str]:
    return [
        java,
        *java_options(config, "256m", short_lived=True),
        "-cp",
        classpath(libs),
        STORAGE_TOOL_CLASS,
        "format",
        "--ignore-formatted",
        "-t",
        cluster_id,
        "-c",
        str(config.properties_path),
    ]


def broker_command(java: str, libs: Path, config: BrokerConfig, heap: str = DEFAULT_HEAP) -> list[str]:
    return [
        java,
        *java_options(config, heap),
        "-cp",
        classpath(libs),
        MAIN_CLASS,
        str(config.properties_path),
    ]


def prepare_data_dir(
    config: BrokerConfig, java: str, libs: Path, timeout_s: float = 120.0, *, cluster_id: str | None = None
) -> bool:
    """Write the configuration and format the storage if it never was; True when it formatted.

    The nodes of one cluster must be formatted with the same `cluster_id` (a single node: a new one).
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.properties_path.write_text(server_properties(config))
    config.log4j_path.write_text(LOG4J_PROPERTIES)
    (config.data_dir / STATE_FILE).write_text(
        json.dumps({"port": config.port, "controller_port": config.controller_port, "host": config.host})
    )
    if is_formatted(config):
        return False
    done = subprocess.run(
        format_command(java, libs, config, cluster_id or new_cluster_id()),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0 or not is_formatted(config):
        raise BrokerSetupError(
            f"formatting Kafka storage in {config.log_dir} failed (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr).strip()[-3000:]}"
        )
    return True


@dataclass(frozen=True)
class ClusterNode:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True)
class ClusterLayout:
    """An N-node KRaft cluster on one host: the id its storage is formatted with, and every node's ports.

    Written once into `<root>/cluster.json` and read by every node and every restart: the controller
    quorum is configuration each node must agree on, so, unlike a single node's, a cluster's controller
    ports never change.
    """

    root: Path
    cluster_id: str
    host: str
    nodes: tuple[ClusterNode, ...]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{node.port}" for node in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise BrokerSetupError(
            f"node {node_id} is not in the cluster of {self.root} (nodes {[n.node_id for n in self.nodes]})"
        )

    def broker_config(self, node_id: int, partitions: int = 3) -> BrokerConfig:
        node = self.node(node_id)
        return BrokerConfig(
            port=node.port,
            controller_port=node.controller_port,
            data_dir=self.root / f"node-{node_id}",
            host=self.host,
            node_id=node_id,
            partitions=partitions,
            voters=tuple((n.node_id, n.controller_port) for n in self.nodes),
            brokers=len(self.nodes),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "cluster_id": self.cluster_id,
                "host": self.host,
                "nodes": [
                    {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
                    for n in self.nodes
                ],
            },
            indent=2,
        )


def _read_layout(root: Path) -> ClusterLayout | None:
    try:
        raw = json.loads((root / CLUSTER_FILE).read_text())
        nodes = tuple(
            ClusterNode(int(n["node_id"]), int(n["port"]), int(n["controller_port"])) for n in raw["nodes"]
        )
        return ClusterLayout(root, str(raw["cluster_id"]), str(raw["host"]), nodes)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BrokerSetupError(f"{root / CLUSTER_FILE} is not a cluster layout: {exc}") from exc


def cluster_layout(root: Path, brokers: int, host: str = "127.0.0.1", base_port: int = 0) -> ClusterLayout:
    """The cluster kept in `root`, created the first time: node ids 1..N, client ports `base_port + i`
    (0: free ports), controller ports free ones. An existing layout must have `brokers` nodes on `host`."""
    if brokers < 1:
        raise BrokerSetupError(f"a cluster needs at least one broker, got {brokers}")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{CLUSTER_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # nodes started at once agree on one layout
        layout = _read_layout(root)
        if layout is not None:
            if len(layout.nodes) != brokers or layout.host != host:
                raise BrokerSetupError(
                    f"{root} holds a {len(layout.nodes)}-broker cluster on {layout.host}, not {brokers} on "
                    f"{host}: use another --data-dir (or delete this one)"
                )
            return layout
        taken: set[int] = set(range(base_port, base_port + brokers)) if base_port else set()
        nodes = []
        for node_id in range(1, brokers + 1):
            port = base_port + node_id - 1 if base_port else _distinct_free_port(host, taken)
            taken.add(port)
            controller_port = _distinct_free_port(host, taken)
            taken.add(controller_port)
            nodes.append(ClusterNode(node_id, port, controller_port))
        layout = ClusterLayout(root, new_cluster_id(), host, tuple(nodes))
        (root / CLUSTER_FILE).write_text(layout.to_json() + "\n")
        return layout


def _distinct_free_port(host: str, taken: set[int]) -> int:
    while True:
        port = free_port(host)
        if port not in taken:
            return port
