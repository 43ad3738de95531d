"""The shared token bucket on real Redis: the rate holds across callers, burst, penalize."""

from __future__ import annotations

import threading
import time
import uuid

from redis import Redis

from config.accounts import Account, RateLimit
from tests.conftest import TEST_REDIS_URL
from worker.ratelimit import RateLimiter


def _limiter() -> RateLimiter:
    return RateLimiter(Redis.from_url(TEST_REDIS_URL), f"rl-test-{uuid.uuid4().hex[:8]}")


def _account(rate: float, burst: int) -> Account:
    return Account("acc", "cobo", "http://x", rate_limit=RateLimit(rate, burst))


def test_burst_then_the_rate() -> None:
    limiter, account = _limiter(), _account(rate=10, burst=5)
    assert [limiter.acquire(account) for _ in range(5)] == [0.0] * 5  # the burst
    wait = limiter.acquire(account)
    assert 0.0 < wait <= 0.1 + 1e-6  # 10/s: the next token within 0.1 s
    time.sleep(wait + 0.01)
    assert limiter.acquire(account) == 0.0


def test_no_rate_limit_means_unlimited() -> None:
    limiter = _limiter()
    account = Account("acc", "cobo", "http://x")
    assert all(limiter.acquire(account) == 0.0 for _ in range(1000))
    limiter.penalize(account, 5)  # nothing to drain
    assert limiter.acquire(account) == 0.0


def test_rate_respected_by_concurrent_callers() -> None:
    """8 threads (as many workers) spinning on one bucket for 1.5 s: at most burst + rate * t."""
    limiter, account = _limiter(), _account(rate=20, burst=4)
    taken: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + 1.5

    def spin() -> None:
        for _ in range(10_000):
            if time.monotonic() >= end:
                return
            wait = limiter.acquire(account)
            if wait == 0.0:
                with lock:
                    taken.append(time.monotonic())
            else:
                time.sleep(min(wait, 0.01))

    threads = [threading.Thread(target=spin) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert 4 + 20 * 1.5 - 4 <= len(taken) <= 4 + 20 * 1.5 + 1, len(taken)


def test_reserve_queues_callers_behind_each_other() -> None:
    limiter, account = _limiter(), _account(rate=10, burst=1)
    assert limiter.reserve(account, 1.0) == (True, 0.0)
    grants = [limiter.reserve(account, 0.35) for _ in range(5)]
    taken = [g for g in grants if g[0]]
    refused = [g for g in grants if not g[0]]
    assert [round(w, 1) for _, w in taken] == [0.1, 0.2, 0.3]  # each one slot later
    assert len(refused) == 2 and all(w > 0.35 for _, w in refused)
    # Nothing was taken by the refusals: the next reservation is still the fourth slot.
    ok, wait = limiter.reserve(account, 1.0)
    assert ok and round(wait, 1) == 0.4


def test_wait_for_token_sleeps_only_within_budget() -> None:
    limiter, account = _limiter(), _account(rate=5, burst=1)
    assert limiter.wait_for_token(account, 1.0) == 0.0
    started = time.monotonic()
    assert limiter.wait_for_token(account, 1.0) == 0.0  # reserved 0.2 s ahead, slept
    assert 0.15 <= time.monotonic() - started < 0.6
    started = time.monotonic()
    wait = limiter.wait_for_token(account, 0.05)  # would need ~0.2 s: give back, do not sleep
    assert wait > 0.05 and time.monotonic() - started < 0.05


def test_penalize_drains_for_retry_after() -> None:
    limiter, account = _limiter(), _account(rate=100, burst=50)
    assert limiter.acquire(account) == 0.0
    limiter.penalize(account, 0.5)
    wait = limiter.acquire(account)
    assert 0.45 <= wait <= 0.5 + 1e-6
    time.sleep(0.3)
    assert limiter.acquire(account) > 0  # still drained
    time.sleep(0.25)
    assert limiter.acquire(account) == 0.0
