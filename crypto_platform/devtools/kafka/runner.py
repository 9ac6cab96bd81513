"""Run `crypto-platform kafka-local` as child processes: start, wait until serving metadata, stop, restart.

`LocalKafka` is one node (a single broker, or one node of a cluster); `LocalKafkaCluster` is N of them
sharing a `ClusterLayout`, each its own process so one can be stopped, SIGKILLed or restarted alone.
Used by the test fixtures, the benchmarks and `kafka-local --brokers N`. A node keeps its port and data
directory across `stop()` / `start()`, so a restart looks to clients like the same broker coming back.

Readiness is a real Kafka Metadata request (v4, which every broker since 1.0 and 4.x still serves)
over a plain socket: the broker is ready when it lists itself. A plain socket, not aiokafka, so the
probe works from inside or outside an event loop and logs nothing while the port is still closed.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref
from pathlib import Path

from crypto_platform.devtools.ports import free_port

_METADATA_API_KEY = 3
_METADATA_VERSION = 4


def metadata_request(correlation_id: int, client_id: str = "crypto-platform-probe") -> bytes:
    """A Metadata v4 request for no topics (an empty array: brokers and cluster only)."""
    client = client_id.encode()
    header = struct.pack(">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(client)) + client
    body = struct.pack(">i?", 0, False)  # topics: empty array; allow_auto_topic_creation: false
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def parse_broker_count(response: bytes, correlation_id: int) -> int:
    """Brokers listed in a Metadata v4 response body (after the size prefix)."""
    got, _throttle, brokers = struct.unpack_from(">iii", response, 0)
    if got != correlation_id:
        raise ValueError(f"correlation id {got} does not match the request's {correlation_id}")
    return brokers


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def broker_count(host: str, port: int, timeout_s: float = 2.0) -> int:
    """Brokers the node at host:port reports in its metadata; raises OSError while it cannot answer."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        correlation_id = int(time.monotonic_ns() % 2**31)
        sock.sendall(metadata_request(correlation_id))
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        return parse_broker_count(_recv_exact(sock, size), correlation_id)


def wait_until_serving(
    host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None, *, min_brokers: int = 1
) -> float:
    """Seconds until the broker answers metadata listing at least `min_brokers` live brokers (itself, and on
    a cluster the others it has heard of); raises TimeoutError/RuntimeError."""
    started = time.monotonic()
    seen = 0
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the broker exited with code {proc.returncode} before serving")
        try:
            seen = broker_count(host, port)
            if seen >= max(min_brokers, 1):
                return time.monotonic() - started
        except (OSError, ValueError, struct.error):
            pass
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(
                f"no Kafka broker on {host}:{port} listed {min_brokers} live broker(s) within "
                f"{timeout_s:.0f}s (last seen: {seen})"
            )
        time.sleep(0.1)


_live: weakref.WeakSet[LocalKafka] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    # A broker outliving the process that started it would hold its port until someone kills it.
    for broker in list(_live):
        broker.stop()


class LocalKafka:
    """A `crypto-platform kafka-local` child process on a fixed loopback port and data directory."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        heap: str | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        brokers: int = 1,
        node_id: int | None = None,
    ) -> None:
        # A cluster node: `data_dir` is the cluster's root (its layout in cluster.json), `node_id` the node.
        self.brokers, self.node_id = brokers, node_id
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.heap = heap
        if log_path is None:
            parent = self.data_dir if node_id else self.data_dir.parent
            log_path = parent / (f"node-{node_id}.log" if node_id else f"{self.data_dir.name}.log")
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.last_start_s: float | None = None
        self._launched_at = 0.0

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "crypto_platform.cli",
            "kafka-local",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.node_id is not None:
            command += ["--brokers", str(self.brokers), "--node-id", str(self.node_id)]
        return command + (["--heap", self.heap] if self.heap else [])

    def start(self, timeout_s: float = 120.0, *, min_brokers: int = 1) -> LocalKafka:
        """Start the broker (formatting its storage the first time) and wait until it serves metadata
        listing `min_brokers` live brokers."""
        if self.running:
            return self
        self.launch()
        return self.wait_ready(timeout_s, min_brokers=min_brokers)

    def launch(self) -> None:
        """Start the process without waiting (a cluster's nodes start together: none serves alone)."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._launched_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env if self.env is not None else dict(os.environ),
                # Its own session: a Ctrl-C in the terminal reaches the test runner, which then stops
                # the broker in order, instead of killing the broker under a running test.
                start_new_session=True,
            )
        _live.add(self)

    def wait_ready(self, timeout_s: float = 120.0, *, min_brokers: int = 1) -> LocalKafka:
        try:
            wait_until_serving(self.host, self.port, timeout_s, self.proc, min_brokers=min_brokers)
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}; broker log {self.log_path}:\n{self.log_tail()}") from exc
        self.last_start_s = time.monotonic() - self._launched_at
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the broker's controlled shutdown), then SIGKILL if it is still up after `timeout_s`."""
        proc = self.signal_stop()
        if proc is None:
            return
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def signal_stop(self) -> subprocess.Popen | None:
        """Send SIGTERM and return the process to wait for (None when it was not running)."""
        proc, self.proc = self.proc, None
        _live.discard(self)
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGTERM)
        return proc

    def kill(self) -> None:
        """SIGKILL: a crash. The next start recovers the logs from the same data directory."""
        proc, self.proc = self.proc, None
        _live.discard(self)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, timeout_s: float = 120.0, *, hard: bool = False, min_brokers: int = 1) -> LocalKafka:
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start(timeout_s, min_brokers=min_brokers)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalKafkaCluster:
    """N `kafka-local` nodes (combined broker+controller, every one a quorum voter) on loopback ports.

    The layout (cluster id, ports) is written into `root/cluster.json` before any node starts, so the
    nodes and every later restart agree on it. Single nodes can be stopped, SIGKILLed and started again
    (`node(i)`, `kill(i)`, `start_node(i)`); a node started again waits until it sees every running node.
    """

    def __init__(
        self,
        root: Path,
        brokers: int = 3,
        *,
        host: str = "127.0.0.1",
        base_port: int = 0,
        heap: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        from crypto_platform.devtools.kafka.local_broker import cluster_layout

        self.root = Path(root)
        self.layout = cluster_layout(self.root, brokers, host, base_port)
        self.nodes = {
            node.node_id: LocalKafka(
                self.root, node.port, host=host, heap=heap, env=env, brokers=brokers, node_id=node.node_id
            )
            for node in self.layout.nodes
        }

    @property
    def bootstrap_servers(self) -> str:
        return self.layout.bootstrap_servers

    @property
    def size(self) -> int:
        return len(self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id]

    def running_ids(self) -> list[int]:
        return [node_id for node_id, node in self.nodes.items() if node.running]

    def start(self, timeout_s: float = 180.0) -> LocalKafkaCluster:
        """Start every node that is not running, together, and wait until each lists all of them."""
        waiting = [node for node in self.nodes.values() if not node.running]
        for node in waiting:
            node.launch()
        deadline = time.monotonic() + timeout_s
        try:
            for node in waiting:
                node.wait_ready(max(deadline - time.monotonic(), 1.0), min_brokers=self.size)
        except RuntimeError:
            self.stop()
            raise
        return self

    def start_node(self, node_id: int, timeout_s: float = 120.0) -> LocalKafka:
        """Start one node and wait until it lists every running node (itself included)."""
        node = self.nodes[node_id]
        node.launch()
        return node.wait_ready(timeout_s, min_brokers=len(self.running_ids()))

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: a crash; `start_node` recovers its logs from the same data directory."""
        self.nodes[node_id].kill()

    def stop_node(self, node_id: int, timeout_s: float = 30.0) -> None:
        self.nodes[node_id].stop(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every node at once, SIGKILL what is left after `timeout_s`.

        At once: stopped one by one, the last node would wait for a controller quorum it no longer has.
        """
        procs = [proc for node in self.nodes.values() if (proc := node.signal_stop()) is not None]
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
