"""The exchange client's shared rate limiter: requests from any thread are spaced by rateLimit × cost."""

from __future__ import annotations

import threading

from crypto_platform.lib.market.client import SharedThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))


def test_requests_at_the_same_instant_get_consecutive_slots() -> None:
    clock = FakeClock()
    throttle = SharedThrottle(clock=clock, sleep=clock.sleep)
    for _ in range(3):
        throttle.wait(50.0)  # Binance's rateLimit (50 ms) × cost 1
    throttle.wait(20.0)  # a cheaper request still waits for the slot the previous one left
    # the first goes at once; each later one waits for the slot after the previous request's
    assert clock.slept == [0.05, 0.1, 0.15]


def test_a_request_after_the_spacing_has_passed_does_not_wait() -> None:
    clock = FakeClock()
    throttle = SharedThrottle(clock=clock, sleep=clock.sleep)
    throttle.wait(50.0)
    clock.now += 0.06
    throttle.wait(50.0)
    assert clock.slept == []


def test_threads_share_one_schedule() -> None:
    clock = FakeClock()
    throttle = SharedThrottle(clock=clock, sleep=clock.sleep)
    threads = [threading.Thread(target=throttle.wait, args=(10.0,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # eight requests at one instant: one goes now, the other seven 10, 20, … 70 ms later
    assert sorted(clock.slept) == [round(0.01 * i, 6) for i in range(1, 8)]
