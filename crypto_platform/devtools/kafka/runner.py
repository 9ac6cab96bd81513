"""Run `crypto-platform kafka-local` as a child process: start, wait until it serves metadata, stop, restart.

Used by the test fixture and the streaming benchmark. The broker keeps its port and data directory
across `stop()` / `start()`, so a restart looks to clients like the same broker coming back.

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


def wait_until_serving(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> float:
    """Seconds until the broker answers metadata listing at least itself; raises TimeoutError/RuntimeError."""
    started = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the broker exited with code {proc.returncode} before serving")
        try:
            if broker_count(host, port) > 0:
                return time.monotonic() - started
        except (OSError, ValueError, struct.error):
            pass
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"no Kafka broker answered metadata on {host}:{port} within {timeout_s:.0f}s")
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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.heap = heap
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.last_start_s: float | None = None

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
        return command + (["--heap", self.heap] if self.heap else [])

    def start(self, timeout_s: float = 120.0) -> LocalKafka:
        """Start the broker (formatting its storage the first time) and wait until it serves metadata."""
        if self.running:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
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
        try:
            wait_until_serving(self.host, self.port, timeout_s, self.proc)
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}; broker log {self.log_path}:\n{self.log_tail()}") from exc
        self.last_start_s = time.monotonic() - started
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the broker's controlled shutdown), then SIGKILL if it is still up after `timeout_s`."""
        proc, self.proc = self.proc, None
        _live.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: a crash. The next start recovers the logs from the same data directory."""
        proc, self.proc = self.proc, None
        _live.discard(self)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, timeout_s: float = 120.0, *, hard: bool = False) -> LocalKafka:
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start(timeout_s)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
