"""A JSON answer sent straight from ASGI middleware (refusals made before any route handler runs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from litestar.types import Send


async def send_json(
    send: Send, status: int, content: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = msgspec.json.encode(content)
    start_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})
