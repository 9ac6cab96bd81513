"""REST's (and GraphQL-over-HTTP's) share of the process budget (serving.core.ratelimit), as ASGI middleware.

Each metered request costs one unit of its caller's window (`key:<name>` for a valid key, else
`ip:<client>`, the client as uvicorn reports it: proxy headers count only from trusted proxies, see
`crypto-platform serve`). Every metered answer carries the IETF draft's `RateLimit-Limit`,
`RateLimit-Remaining`, `RateLimit-Reset` and `RateLimit-Policy`; a refusal is 429 with `Retry-After`
(RFC 9110) as well. GraphQL charges the rest of a document's cost in its own extension, from the same
limiter, after this unit.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.asgi_json import send_json
from serving.api.security import caller_identity
from serving.core.auth import KeyRing
from serving.core.ratelimit import Budget, MinuteLimiter

# Not metered and not behind keys: probes and scrapers must always get through, and the UI's static
# files are not API calls.
UNMETERED_PATHS = ("^/health$", "^/ready$", "^/metrics$", "^/schema", "^/docs", "^/ui/", "^/$")
RATE_LIMIT_STATE_KEY = "rate_limit_identity"


@functools.lru_cache(maxsize=8)
def _policy_headers(limit: int, window_s: int) -> tuple[tuple[bytes, bytes], ...]:
    """The headers that depend only on the configured limit: encoded once, not per request."""
    return (
        (b"ratelimit-limit", str(limit).encode()),
        (b"ratelimit-policy", f"{limit}; w={window_s}".encode()),
    )


def budget_headers(budget: Budget, window_s: int = 60) -> list[tuple[bytes, bytes]]:
    limit, policy = _policy_headers(budget.limit, window_s)
    headers = [
        limit,
        (b"ratelimit-remaining", str(budget.remaining).encode()),
        (b"ratelimit-reset", str(budget.retry_after_s).encode()),
        policy,
    ]
    if not budget.allowed:
        headers.append((b"retry-after", str(budget.retry_after_s).encode()))
    return headers


def request_identity(connection: ASGIConnection, ring: KeyRing) -> str:
    """The budget a request spends from: its valid key's, else its client address's."""
    identity = caller_identity(connection, ring)
    if identity is not None:
        return f"key:{identity.name}"
    client = connection.client
    return f"ip:{client.host if client else 'unknown'}"


class RateLimitMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    def __init__(self, limiter: MinuteLimiter, ring: KeyRing, unmetered: Sequence[str] = UNMETERED_PATHS):
        self.limiter, self.ring = limiter, ring
        pattern = re.compile("|".join(unmetered))
        self.should_bypass_for_scope = lambda scope: bool(pattern.search(scope.get("path", "")))

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        connection: ASGIConnection = ASGIConnection(scope)
        identity = request_identity(connection, self.ring)
        scope.setdefault("state", {})[RATE_LIMIT_STATE_KEY] = identity
        budget = self.limiter.charge(identity)
        headers = budget_headers(budget)
        if not budget.allowed:
            await _refuse(scope, send, budget, headers)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await next_app(scope, receive, send_with_headers)


async def _refuse(scope: Scope, send: Send, budget: Budget, headers: list[tuple[bytes, bytes]]) -> None:
    detail = f"rate limit of {budget.limit} requests per minute reached; retry in {budget.retry_after_s} s"
    if scope["type"] == ScopeType.WEBSOCKET:
        await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})
        return
    await send_json(send, 429, {"status_code": 429, "detail": detail}, headers)
