"""What every long-running process of the platform does first: its log lines and its first SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Protocol

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Lines to stderr in one format, each passed through `serving.core.redaction` (a URL's password,
    an API key) before any handler writes it."""
    from serving.core.redaction import install_log_redaction

    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    install_log_redaction()


def exit_on_sigterm() -> None:
    """A SIGTERM before the event loop installs its draining handlers (nothing consumed yet) is a
    clean exit; once they are installed, they take over."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


class StoppableService(Protocol):
    async def run(self) -> None: ...

    def request_stop(self) -> None: ...


def run_until_signalled(make: Callable[[], StoppableService]) -> None:
    """Build the service inside a new event loop and run it; SIGTERM and SIGINT ask it to stop (it
    drains and commits, then `run` returns). A Ctrl-C before the loop took over is a clean exit."""

    async def main() -> None:
        service = make()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop)
        await service.run()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
