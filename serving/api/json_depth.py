"""Request bodies nested deeper than `MAX_JSON_DEPTH` are refused with a 400 before anything parses them.

msgspec (Litestar's decoder) and the GraphQL variable coercion both recurse per nesting level: a body of
1,000 `[` raised RecursionError deep in the request and came back as a bare 500. No request of this API
nests more than a few levels (the deepest is a GraphQL document's variables), so the body is measured
first: strings are skipped (a `[` inside a symbol is not nesting) and the bracket depth is counted.
The body is buffered (it is bounded by the app's `request_max_body_size`) and handed on unchanged.
"""

from __future__ import annotations

import re

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.asgi_json import send_json

MAX_JSON_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays/objects in `body` (0 for a scalar); malformed JSON is measured as
    far as its brackets go (the parser refuses it afterwards, with its own message)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= 1:
        return 1 if brackets else 0
    depth = deepest = 0
    for byte in brackets:
        if byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth -= 1
    return deepest


class JsonDepthMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, max_depth: int = MAX_JSON_DEPTH, max_body_bytes: int = 1_048_576) -> None:
        self.max_depth, self.max_body_bytes = max_depth, max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await next_app(scope, receive, send)
            return
        chunks, size, messages = [], 0, []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_body_bytes or not message.get("more_body", False):
                break  # too large: Litestar's own body limit answers 413
        depth = json_depth(b"".join(chunks)) if size <= self.max_body_bytes else 0
        if depth > self.max_depth:
            detail = f"request body: JSON nested {depth} levels deep; at most {self.max_depth}"
            content = {"status_code": 400, "detail": f"Validation failed: {detail}"}
            await send_json(send, 400, {**content, "extra": [{"key": "body", "message": detail}]})
            return
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await next_app(scope, replayed, send)
