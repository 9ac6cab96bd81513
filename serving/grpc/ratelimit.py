"""The gRPC side of the request budget (serving.core.ratelimit): who a call is, by its peer address."""

from __future__ import annotations


def peer_host(peer: str | None) -> str:
    """`ipv4:127.0.0.1:5000` / `ipv6:[::1]:5000` → the address without the port."""
    if not peer:
        return "unknown"
    _, _, address = peer.partition(":")
    host, _, _ = address.rpartition(":")
    return host.strip("[]") or address or "unknown"
