"""uvicorn's h11 protocol with a deadline for the request head.

uvicorn times out idle keep-alive connections (`timeout_keep_alive`) but not a client that connects and
then sends its headers slowly, or never: such half-open connections were held indefinitely (slowloris).
Here a connection must deliver a complete request head within `HEADER_TIMEOUT_S` of connecting, or of
the previous response on a kept-alive connection; otherwise it is closed. The body, once headers are
in, is the app's business (its size is bounded by Litestar's `request_max_body_size`).
"""

from __future__ import annotations

import asyncio
import contextlib

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
# h11's own default, stated: the request line and headers together may not exceed this.
MAX_HEADER_BYTES = 16 * 1024


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout_s = HEADER_TIMEOUT_S
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_head():
            self._arm_header_deadline()
        else:
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        """No request in progress: none yet, or the last one answered (keep-alive)."""
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_deadline(self) -> None:
        # Armed once per wait: more bytes of the same slow head do not push the deadline back.
        if self._header_deadline is None and not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _head_timed_out(self) -> None:
        self._header_deadline = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.logger.info(
                "closing a connection that sent no complete request head in %.0fs", self.header_timeout_s
            )
            if self.conn.our_state != h11.ERROR:
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
            self.transport.close()
