"""Who may call what: API key → identity and role → allowed? One decision for REST, GraphQL and gRPC.

Keys are configured as `name:role:key` (serving.api.settings) and kept only as HMAC-SHA256 digests
under a server pepper: a memory dump or a log of the key table does not reveal a usable key, and a
leaked table cannot be brute-forced offline without the pepper. A presented key is hashed the same
way and compared with `hmac.compare_digest` against every entry (no early exit), so the answer time
does not depend on how many leading bytes matched or which entry matched.

The decision (`authorize`), for an operation that needs `reader` or `admin`:

| key presented | key known | role   | needs  | require_key | answer                        |
|---------------|-----------|--------|--------|-------------|-------------------------------|
| yes           | no        | –      | any    | any         | INVALID_KEY (401)             |
| no            | –         | –      | reader | no          | allowed, anonymous            |
| no            | –         | –      | reader | yes         | KEY_REQUIRED (401)            |
| no            | –         | –      | admin  | any         | KEY_REQUIRED (401)            |
| yes           | yes       | reader | admin  | any         | ROLE_TOO_LOW (403)            |
| yes           | yes       | any    | ≤ role | any         | allowed, as that key          |

A presented but unknown key is refused even where anonymous access is allowed: a typo must not fall
back to the anonymous rate limit silently. Each face only reads the key from its transport
(`presented_key`) and words the refusal in its own vocabulary (HTTP status, GraphQL code, gRPC status).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

READER = "reader"
ADMIN = "admin"
ROLES = (READER, ADMIN)  # in order of power: a role may do what every role before it may
_RANK = {role: rank for rank, role in enumerate(ROLES)}


class KeySpec(Protocol):
    name: str
    role: str
    key: str


@dataclass(frozen=True)
class Identity:
    name: str
    role: str


class Denial(StrEnum):
    INVALID_KEY = "invalid_key"  # unauthenticated: the key matches no configured key
    KEY_REQUIRED = "key_required"  # unauthenticated: no key, and this operation needs one
    ROLE_TOO_LOW = "role_too_low"  # forbidden: a valid key whose role is not enough


@dataclass(frozen=True)
class AuthDecision:
    """`denial` None: allowed, as `identity` (None: anonymously). Else why not, and a message for the
    caller (faces add where a key goes when it is `KEY_REQUIRED`)."""

    identity: Identity | None
    denial: Denial | None = None
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.denial is None

    @property
    def forbidden(self) -> bool:
        """True for a known key with too little power (403 / FORBIDDEN / PERMISSION_DENIED); the other
        denials are unauthenticated (401 / UNAUTHENTICATED)."""
        return self.denial is Denial.ROLE_TOO_LOW


class KeyRing:
    """The configured keys, as peppered digests, and whether anonymous readers are allowed."""

    def __init__(self, specs: Iterable[KeySpec], pepper: str, require_key: bool = False) -> None:
        self._pepper = pepper.encode()
        self._entries = [(self._digest(s.key), Identity(s.name, s.role)) for s in specs]
        self.require_key = require_key

    def _digest(self, key: str) -> bytes:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).digest()

    @property
    def has_admin(self) -> bool:
        return any(identity.role == ADMIN for _, identity in self._entries)

    def identify(self, key: str) -> Identity | None:
        digest = self._digest(key)
        found = None
        for stored, identity in self._entries:
            if hmac.compare_digest(stored, digest) and found is None:
                found = identity
        return found

    def decide(self, key: str | None, needs: str) -> AuthDecision:
        """`authorize` for a presented key (None: none presented)."""
        identity = self.identify(key) if key else None
        return authorize(bool(key), identity, needs, self.require_key, self.has_admin)


def authorize(
    presented: bool, identity: Identity | None, needs: str, require_key: bool, has_admin: bool = True
) -> AuthDecision:
    """The decision table of the module docstring. `identity`: what the presented key identified
    (None: unknown, or nothing presented). `has_admin` only words the admin refusal."""
    if needs not in _RANK:
        raise ValueError(f"unknown role {needs!r}; roles are {ROLES}")
    if presented and identity is None:
        return AuthDecision(None, Denial.INVALID_KEY, "invalid API key")
    if identity is None:
        if needs == ADMIN:
            message = "an admin API key is required" if has_admin else "no admin API key is configured"
            return AuthDecision(None, Denial.KEY_REQUIRED, message)
        if require_key:
            return AuthDecision(None, Denial.KEY_REQUIRED, "an API key is required")
        return AuthDecision(None)
    if _RANK.get(identity.role, -1) < _RANK[needs]:
        message = f"key {identity.name!r} has role {identity.role!r}; {needs} needed"
        return AuthDecision(identity, Denial.ROLE_TOO_LOW, message)
    return AuthDecision(identity)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of `X-API-Key`, else of `Authorization: Bearer <key>`; `headers` looked up by lower-case
    name (HTTP headers, gRPC metadata)."""
    key = (headers.get("x-api-key") or "").strip()
    if key:
        return key
    scheme, _, token = str(headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
