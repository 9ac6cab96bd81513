"""Injected failures for the replay server: the next N requests (optionally to one endpoint) fail.

Each kind answers the way Binance or its CDN does, so the client's retry policy is tested against
what ccxt really raises: 429/418 carry `Retry-After` and code -1003 (ccxt: DDoSProtection);
500 carries -1000 (OperationFailed); 503 carries -1008, which ccxt does not map, so only an HTTP
status aware client retries it; 502/504 are HTML pages from a gateway (ExchangeNotAvailable /
RequestTimeout); `timeout` answers normally but only after sleeping past the client's timeout.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

FAULT_KINDS = ("429", "418", "500", "502", "503", "504", "timeout")
DEFAULT_DELAY_S = 15.0  # longer than the client's default 10 s timeout


class FaultSpecError(ValueError):
    """A fault description that cannot be understood."""


@dataclass(frozen=True)
class FaultRule:
    kind: str
    count: int = 1
    # "klines" or "/api/v3/klines"; None = any API endpoint (control endpoints never fail).
    endpoint: str | None = None
    retry_after_s: int = 1
    delay_s: float = DEFAULT_DELAY_S
    # "BTCUSDT": only requests for this symbol (the `symbol` parameter) fail; None = any request.
    # One pair failing while the others answer is how a delisted or broken market looks.
    symbol: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultSpecError(f"fault kind {self.kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if self.count < 1:
            raise FaultSpecError(f"fault count must be ≥ 1, got {self.count}")
        if self.retry_after_s < 0 or self.delay_s < 0:
            raise FaultSpecError("retry_after_s and delay_s must be ≥ 0")

    def matches(self, path: str, symbol: str | None = None) -> bool:
        if self.symbol is not None and (symbol or "").upper() != self.symbol.upper():
            return False
        if self.endpoint is None:
            return True
        endpoint = self.endpoint.strip("/")
        return path.strip("/") == endpoint or path.endswith("/" + endpoint)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        unknown = set(data) - {"kind", "count", "endpoint", "retry_after_s", "delay_s", "symbol"}
        if unknown:
            raise FaultSpecError(f"unknown fault fields: {sorted(unknown)}")
        try:
            return cls(
                kind=str(data["kind"]),
                count=int(data.get("count", 1)),
                endpoint=(str(data["endpoint"]) if data.get("endpoint") else None),
                retry_after_s=int(data.get("retry_after_s", 1)),
                delay_s=float(data.get("delay_s", DEFAULT_DELAY_S)),
                symbol=(str(data["symbol"]) if data.get("symbol") else None),
            )
        except KeyError as exc:
            raise FaultSpecError("a fault needs a 'kind'") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, FaultSpecError):
                raise
            raise FaultSpecError(f"bad fault {dict(data)!r}: {exc}") from exc


def parse_fault_spec(spec: str, retry_after_s: int = 1, delay_s: float = DEFAULT_DELAY_S) -> FaultRule:
    """CLI form `KIND[:COUNT[:ENDPOINT]]`, e.g. `429`, `503:2`, `timeout:1:klines`."""
    parts = spec.strip().split(":")
    if not parts[0] or len(parts) > 3:
        raise FaultSpecError(f"fault {spec!r} must look like KIND[:COUNT[:ENDPOINT]], e.g. 429:2:klines")
    try:
        count = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    except ValueError as exc:
        raise FaultSpecError(f"fault {spec!r}: count must be an integer") from exc
    endpoint = parts[2] if len(parts) > 2 and parts[2] else None
    return FaultRule(parts[0], count, endpoint, retry_after_s, delay_s)


class FaultPlan:
    """Pending faults, consumed first-in first-out by the requests they match (thread-safe)."""

    def __init__(self, rules: Iterable[FaultRule] = ()) -> None:
        self._lock = threading.Lock()
        self._pending: list[list[Any]] = []  # [rule, remaining]
        self.add(rules)

    def add(self, rules: Iterable[FaultRule]) -> None:
        with self._lock:
            self._pending.extend([rule, rule.count] for rule in rules)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self, path: str, symbol: str | None = None) -> FaultRule | None:
        with self._lock:
            for entry in self._pending:
                rule, remaining = entry
                if rule.matches(path, symbol):
                    if remaining <= 1:
                        self._pending.remove(entry)
                    else:
                        entry[1] = remaining - 1
                    return rule
        return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**rule.to_dict(), "remaining": remaining} for rule, remaining in self._pending]


def _json(code: int, msg: str) -> bytes:
    return json.dumps({"code": code, "msg": msg}).encode()


def _html(title: str) -> bytes:
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>".encode()


def fault_response(rule: FaultRule, now_ms: int) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a failing answer (not for `timeout`, which answers late instead)."""
    json_type = {"Content-Type": "application/json;charset=UTF-8"}
    html_type = {"Content-Type": "text/html"}
    if rule.kind == "429":
        msg = "Too much request weight used; current limit is 6000 request weight per 1 MINUTE."
        return 429, {**json_type, "Retry-After": str(rule.retry_after_s)}, _json(-1003, msg)
    if rule.kind == "418":
        banned_until = now_ms + rule.retry_after_s * 1000
        msg = f"Way too much request weight used; IP banned until {banned_until}."
        return 418, {**json_type, "Retry-After": str(rule.retry_after_s)}, _json(-1003, msg)
    if rule.kind == "500":
        return 500, json_type, _json(-1000, "An unknown error occurred while processing the request.")
    if rule.kind == "503":
        msg = "Server is currently overloaded with other requests. Please try again in a few minutes."
        return 503, json_type, _json(-1008, msg)
    if rule.kind == "502":
        return 502, html_type, _html("502 Bad Gateway")
    if rule.kind == "504":
        return 504, html_type, _html("504 Gateway Time-out")
    raise ValueError(f"fault kind {rule.kind!r} has no error answer")
