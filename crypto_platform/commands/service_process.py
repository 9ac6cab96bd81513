"""What every long-running process of the platform does first: its log lines and its first SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys

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
