"""Credentials out of every text the serving process lets go: error bodies, health and readiness
reasons, model-info fields and log lines all pass through `redact`.

Two nets, because either alone misses something:
- shapes: the userinfo of a URL (`scheme://user:password@host` → `scheme://***@host`), secret-named
  query parameters and `name=value` / `name: value` pairs (`password=`, `token=`, `api_key=`, …), and
  `Authorization: Bearer …` / `X-API-Key: …` headers written out;
- values: the exact secrets this process was configured with (`register_secret`: API keys, the key
  pepper, the passwords inside configured URLs), wherever they turn up, whatever wraps them.

`RedactingFilter` applies the same function to log records (message, arguments, traceback text) and
`install_log_redaction` puts it on every handler the process has, uvicorn's included.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
# Secrets shorter than this are not matched by value (a 3-character password would mask every word
# it happens to spell); their URLs are still caught by shape.
_MIN_SECRET_CHARS = 6

_SECRET_NAMES = (
    r"api[_-]?key|apikey|x-api-key|access[_-]?key(?:[_-]?id)?|secret(?:[_-]?access[_-]?key)?|"
    r"client[_-]?secret|password|passwd|pwd|pass|token|access[_-]?token|refresh[_-]?token|auth|"
    r"authorization|signature|sig|pepper|credentials?"
)
# scheme://user:password@host, scheme://token@host: everything between `//` and the last `@` of
# the authority goes.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@'\"<>]+@")
# ?token=…, &password=…, ;sig=… in a URL or a query string.
_QUERY_SECRET = re.compile(rf"(?i)([?&;](?:{_SECRET_NAMES})=)[^&#\s'\"<>]*")
# password=…, "api_key": "…", token: … written out in a message (libpq DSNs, reprs, JSON).
_PAIR_SECRET = re.compile(
    rf"""(?ix)\b((?:{_SECRET_NAMES})["']?\s*[=:]\s*["']?)(?!\*\*\*)[^\s&,;'"<>)}}\]]+"""
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}")


class _SecretValues:
    """The configured secrets, longest first (a secret containing another is masked whole)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            before = len(self._values)
            self._values.update(v for v in values if v and len(v) >= _MIN_SECRET_CHARS)
            if len(self._values) != before:
                ordered = sorted(self._values, key=len, reverse=True)
                self.pattern = re.compile("|".join(re.escape(v) for v in ordered))


_SECRETS = _SecretValues()


def url_secrets(url: str | None) -> list[str]:
    """The password (and the username, which is often a key too) of a URL's userinfo, raw and
    percent-decoded; [] for a URL without one."""
    if not url or "@" not in url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = []
    for value in (parts.password, parts.username):
        if value:
            found.extend({value, unquote(value)})
    return found


def register_secret(*values: str | None) -> None:
    """Mask these exact values from now on, in every text `redact` sees (None and short ones are ignored)."""
    _SECRETS.add(v for v in values if v)


def register_url_secrets(*urls: str | None) -> None:
    """Mask the userinfo of these configured URLs by value too (also where a library prints it apart)."""
    for url in urls:
        register_secret(*url_secrets(url))


def redact(text: object) -> str:
    """`text` as a string with every credential it carries replaced by `***`."""
    out = text if isinstance(text, str) else str(text)
    pattern = _SECRETS.pattern
    if pattern is not None:
        out = pattern.sub(MASK, out)
    out = _URL_USERINFO.sub(rf"\g<1>{MASK}@", out)
    out = _QUERY_SECRET.sub(rf"\g<1>{MASK}", out)
    out = _BEARER.sub(rf"\g<1> {MASK}", out)
    return _PAIR_SECRET.sub(rf"\g<1>{MASK}", out)


def redact_optional(text: object | None) -> str | None:
    return None if text is None else redact(text)


def _redacted_argument(value: object) -> object:
    """A log argument with its credentials masked; numbers stay numbers (`%d` must still format)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(value)


class RedactingFilter(logging.Filter):
    """Masks credentials in each record before any handler formats it: the message, each argument
    (kept as arguments: formatters such as uvicorn's access log read them by position), the traceback
    and the stack text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        record.msg = redact(record.msg) if isinstance(record.msg, str) else record.msg
        if isinstance(record.args, dict):
            record.args = {k: _redacted_argument(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_redacted_argument(v) for v in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            # Formatters print exc_text when set; exc_info would print the raw traceback again.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._redacted = True
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Put the filter on every handler that exists now: the root's, each named logger's (uvicorn
    configures its own before it loads the app) and logging's last-resort handler. Idempotent; call it
    again after adding handlers."""
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
