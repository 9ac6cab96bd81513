"""The gRPC server's per-identity minute window (REST's rule, without Litestar's middleware)."""

from __future__ import annotations

from serving.core.ratelimit import MinuteLimiter
from serving.grpc.ratelimit import peer_host


def test_window_counts_per_identity_and_resets_after_a_minute():
    now = [1000.0]
    limiter = MinuteLimiter(2, clock=lambda: now[0])
    assert limiter.hit("key:a") is None and limiter.hit("key:a") is None
    assert limiter.hit("key:a") == 60.0
    assert limiter.hit("ip:10.0.0.1") is None  # another identity has its own budget
    now[0] += 45
    assert limiter.hit("key:a") == 15.0
    now[0] += 15
    assert limiter.hit("key:a") is None


def test_zero_means_no_limit():
    limiter = MinuteLimiter(0)
    assert all(limiter.hit("ip:x") is None for _ in range(1000))


def test_peer_host_drops_the_port():
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host(None) == "unknown"


def test_costs_are_charged_and_a_refused_charge_spends_nothing():
    now = [0.0]
    limiter = MinuteLimiter(10, clock=lambda: now[0])
    assert limiter.charge("key:a", 8).remaining == 2
    refused = limiter.charge("key:a", 5)
    assert not refused.allowed and refused.remaining == 2 and refused.retry_after_s == 60
    assert limiter.charge("key:a", 2).allowed and not limiter.charge("key:a").allowed


def test_the_table_stays_bounded_under_rotating_identities():
    now = [0.0]
    limiter = MinuteLimiter(5, clock=lambda: now[0], max_identities=100)
    for i in range(10_000):  # a client rotating addresses (or spoofing them)
        limiter.hit(f"ip:10.0.{i // 256}.{i % 256}")
        now[0] += 0.001
    assert len(limiter) <= 100
    now[0] += 61  # every window has ended: the next arrival sweeps them
    limiter.hit("ip:fresh")
    assert len(limiter) == 1
