"""REST's side of auth: the key read from the request, the guards, and the rate-limit identity.

The decision itself (key → role → allowed?) is `serving.core.auth`, shared with GraphQL and gRPC; here
it is only read from the connection (`X-API-Key` or `Authorization: Bearer <key>`) and answered as 401
(no or unknown key) or 403 (a key whose role is too low). Roles: `reader` (every /v1 read and signal)
and `admin` (also model reload).
"""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from serving.api.asgi_json import send_json
from serving.core.auth import (
    ADMIN,
    READER,
    AuthDecision,
    Denial,
    Identity,
    KeyRing,
    authorize,
    presented_key,
)

IDENTITY_STATE_KEY = "api_identity"
WHERE_THE_KEY_GOES = "X-API-Key header or Authorization: Bearer"
_UNRESOLVED = object()


def _lookup(connection: ASGIConnection, ring: KeyRing) -> tuple[bool, Identity | None]:
    """(a key was presented, what it identified), hashed once per connection (guards may run twice)."""
    state = connection.scope.setdefault("state", {})
    cached = state.get(IDENTITY_STATE_KEY, _UNRESOLVED)
    if cached is _UNRESOLVED:
        key = presented_key(connection.headers)
        cached = state[IDENTITY_STATE_KEY] = (key is not None, ring.identify(key) if key else None)
    return cached


def caller_identity(connection: ASGIConnection, ring: KeyRing) -> Identity | None:
    """Who the connection's key identifies; None without a key or with an unknown one (where no key
    is needed, such a caller is anonymous: probes, the rate limit's per-address budget)."""
    return _lookup(connection, ring)[1]


def decide(connection: ASGIConnection, ring: KeyRing, needs: str) -> AuthDecision:
    """`serving.core.auth.authorize` for the key this connection presents."""
    presented, identity = _lookup(connection, ring)
    return authorize(presented, identity, needs, ring.require_key, ring.has_admin)


def require(connection: ASGIConnection, ring: KeyRing, needs: str) -> Identity | None:
    """The caller's identity if allowed; else 401 (no or unknown key) or 403 (role too low)."""
    decision = decide(connection, ring, needs)
    if decision.allowed:
        return decision.identity
    if decision.forbidden:
        raise PermissionDeniedException(detail=decision.message)
    detail = decision.message
    if decision.denial is Denial.KEY_REQUIRED and needs == READER:
        detail = f"{detail} ({WHERE_THE_KEY_GOES})"
    raise NotAuthorizedException(detail=detail)


def _keyring(connection: ASGIConnection) -> KeyRing:
    return connection.app.state.keyring


# `async def` although it only hashes a header: Litestar runs a sync guard in a worker thread, a hop
# that cost more than the whole ml-signal handler (profiled: ~0.3 ms per request under load).
async def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    require(connection, _keyring(connection), ADMIN)


class ReaderGateMiddleware(ASGIMiddleware):
    """The reader rule for a whole router (any valid key; none needed unless CRYPTO_API_REQUIRE_KEY is
    set), as middleware: the same decision (`require`) and the same 401/403 body Litestar makes of a
    guard's exception, answered here.

    On a router every route pays for its guards, and Litestar calls each guard with a fresh copy of
    the route handler (`copy(handler)` per guard per request): profiled under wrk, that copy cost as
    much as the guard's own work. /v1 is all reader routes; the one admin route keeps `admin_guard`.
    """

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        try:
            require(ASGIConnection(scope), self.ring, READER)
        except HTTPException as refused:
            if scope["type"] == ScopeType.WEBSOCKET:
                await send({"type": "websocket.close", "code": 1008, "reason": "not authorized"})
                return
            body = {"status_code": refused.status_code, "detail": refused.detail}
            await send_json(send, refused.status_code, body)
            return
        await next_app(scope, receive, send)
