"""Per-identity request limits for the gRPC server, with REST's rule: N requests per clock minute per
API key (when a valid one is presented) or per client address, from the same `CRYPTO_API_RATE_LIMIT`.

REST and GraphQL count in Litestar's rate-limit store; gRPC has no middleware for it, so this keeps the
same fixed-window count in the server's process (like Litestar's default in-memory store). The server is
one asyncio loop, so no lock is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW_S = 60.0
# Windows of identities not seen for a while are dropped once the table grows past this.
_PRUNE_AT = 10_000


class MinuteLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, identity: str) -> float | None:
        """Count one request; None when allowed, else the seconds until the window resets."""
        if self.per_minute <= 0:
            return None
        now = self.clock()
        start, count = self._windows.get(identity, (now, 0))
        if now - start >= WINDOW_S:
            start, count = now, 0
        if count >= self.per_minute:
            return max(start + WINDOW_S - now, 0.0)
        self._windows[identity] = (start, count + 1)
        if len(self._windows) > _PRUNE_AT:
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < WINDOW_S}
        return None


def peer_host(peer: str | None) -> str:
    """`ipv4:127.0.0.1:5000` / `ipv6:[::1]:5000` → the address without the port."""
    if not peer:
        return "unknown"
    _, _, address = peer.partition(":")
    host, _, _ = address.rpartition(":")
    return host.strip("[]") or address or "unknown"
