"""The one request budget of a serving process: N units per clock minute per identity
(`key:<name>` for a valid key, else `ip:<client address>`), from CRYPTO_API_RATE_LIMIT.

REST's middleware, the GraphQL cost charge and the gRPC servicer all spend from the same
`MinuteLimiter` of `Services`. A unit is one REST request; a GraphQL document is charged one unit per
operation it runs, a gRPC stream one unit per message it sends, and a refused call (no key, a wrong
key) still costs its caller one unit: refusals are what a key-guessing client sends.

The table is bounded: windows that have ended are swept as new identities arrive (oldest first), and
past `max_identities` the identity whose window started longest ago is dropped. A client that
rotates addresses can therefore evict others' windows, giving them a fresh budget early; it cannot
grow the process. Everything runs on one event loop per process (uvicorn's, grpc.aio's) except
GraphQL resolvers in worker threads, so a lock keeps the table consistent.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0
DEFAULT_MAX_IDENTITIES = 10_000


@dataclass(frozen=True)
class Budget:
    """What is left of an identity's window after a charge."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # seconds until the window ends

    @property
    def retry_after_s(self) -> int:
        """Whole seconds to wait (HTTP Retry-After, gRPC `retry-after`); at least 1."""
        return max(math.ceil(self.reset_s), 1)


class MinuteLimiter:
    """Fixed one-minute windows per identity; `per_minute` 0 turns the limit off."""

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_identities: int = DEFAULT_MAX_IDENTITIES,
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_identities = max(1, max_identities)
        # identity → [window start, units used]; ordered by window start (a new window moves to the end)
        self._windows: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def __len__(self) -> int:
        return len(self._windows)

    def charge(self, identity: str, cost: int = 1) -> Budget:
        """Spend `cost` units of `identity`'s window if they fit; a refused charge spends nothing."""
        if not self.enabled:
            return Budget(True, 0, 0, 0.0)
        cost = max(int(cost), 0)
        now = self.clock()
        with self._lock:
            window = self._windows.get(identity)
            if window is None or now - window[0] >= WINDOW_S:
                self._windows.pop(identity, None)
                window = [now, 0.0]
                self._windows[identity] = window
                self._bound(now)
            reset = max(window[0] + WINDOW_S - now, 0.0)
            if window[1] + cost > self.per_minute:
                return Budget(False, self.per_minute, max(self.per_minute - int(window[1]), 0), reset)
            window[1] += cost
            return Budget(True, self.per_minute, self.per_minute - int(window[1]), reset)

    def hit(self, identity: str, cost: int = 1) -> float | None:
        """`charge`, answered as None (allowed) or the seconds until the window resets."""
        budget = self.charge(identity, cost)
        return None if budget.allowed else budget.reset_s

    def _bound(self, now: float) -> None:
        """Sweep ended windows from the oldest end; then drop the oldest until within the bound."""
        while self._windows:
            oldest_identity, oldest = next(iter(self._windows.items()))
            if now - oldest[0] < WINDOW_S and len(self._windows) <= self.max_identities:
                break
            del self._windows[oldest_identity]
