"""A single-node Apache Kafka (KRaft) broker from Maven Central, for development and tests.

What `crypto-platform kafka-local` and the test fixture share:

- `resolve_jars()`: the broker's jars, copied once from Maven Central with `mvn dependency:copy-dependencies`
  (the pom beside this module pins the version) into a cache directory, under a file lock so two processes
  starting at once do not both download into it;
- `server_properties()`: one process acting as broker and controller, both listeners on loopback, and the
  internal topics (consumer offsets, transaction state) at replication 1 / min ISR 1 so transactions work
  on one node;
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

POM_PATH = Path(__file__).with_name("pom.xml")
CACHE_ENV = "CRYPTO_KAFKA_CACHE"
# The jar that proves a cache directory holds this version's broker.
_BROKER_JAR = "kafka_2.13-{version}.jar"
_COMPLETE_MARKER = ".complete"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
LOG_DIR_NAME = "kraft-combined-logs"
STATE_FILE = "kafka-local.json"
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
    """One single-node KRaft broker: where it listens and where it keeps its data."""

    port: int
    controller_port: int
    data_dir: Path
    host: str = "127.0.0.1"
    node_id: int = 1
    partitions: int = 3

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
    """server.properties of a combined broker+controller on one node."""
    host = config.host
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(config.node_id),
        "controller.quorum.voters": f"{config.node_id}@{host}:{config.controller_port}",
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
        # One node: internal topics cannot have more replicas than brokers, and the transaction
        # coordinator refuses to start with min.insync above the replication factor.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "3",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Consumers join a group at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        # Controlled shutdown is what makes SIGTERM clean; its retries are pointless with one node.
        "controlled.shutdown.max.retries": "1",
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


def prepare_data_dir(config: BrokerConfig, java: str, libs: Path, timeout_s: float = 120.0) -> bool:
    """Write the configuration and format the storage if it never was; True when it formatted."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.properties_path.write_text(server_properties(config))
    config.log4j_path.write_text(LOG4J_PROPERTIES)
    (config.data_dir / STATE_FILE).write_text(
        json.dumps({"port": config.port, "controller_port": config.controller_port, "host": config.host})
    )
    if is_formatted(config):
        return False
    done = subprocess.run(
        format_command(java, libs, config, new_cluster_id()),
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
