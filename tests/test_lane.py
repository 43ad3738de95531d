"""The ordered send lane on real Redis: exclusive, released only by its holder, lost at the TTL."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from pydantic import SecretStr
from redis import Redis

from config.accounts import Account
from tests.conftest import TEST_REDIS_URL
from worker.lane import Lane, LaneBusy
from worker.nonces import key_id


def _lane(ttl: float = 5.0, wait: float = 0.2) -> Lane:
    return Lane(Redis.from_url(TEST_REDIS_URL), f"lane-test-{uuid.uuid4().hex[:8]}", ttl=ttl, wait=wait)


ACCOUNT = Account("cc", "coincorner", "http://x", secrets={"api_key": SecretStr("very-secret-key")})


def test_exclusive_until_released() -> None:
    lane = _lane()
    token = lane.acquire("p", "k")
    assert token is not None
    started = time.monotonic()
    assert lane.acquire("p", "k", wait=0.15) is None  # bounded wait, then gives up
    assert 0.14 <= time.monotonic() - started < 1.0
    assert lane.acquire("p", "other-key", wait=0) is not None  # lanes are per key
    assert lane.release("p", "k", token)
    assert lane.acquire("p", "k", wait=0) is not None


def test_only_the_holder_releases() -> None:
    lane = _lane()
    token = lane.acquire("p", "k")
    assert token is not None
    assert not lane.release("p", "k", "not-the-token")
    assert lane.acquire("p", "k", wait=0) is None  # still held
    assert lane.release("p", "k", token)
    assert not lane.release("p", "k", token)  # twice: nothing left to release


def test_a_dead_holder_loses_it_at_the_ttl() -> None:
    lane = _lane(ttl=0.3)
    dead = lane.acquire("p", "k")  # never released
    assert dead is not None
    started = time.monotonic()
    successor = lane.acquire("p", "k", wait=2.0)
    assert successor is not None
    assert 0.15 <= time.monotonic() - started < 1.5
    assert not lane.release("p", "k", dead)  # the late holder cannot free its successor's lane
    assert lane.acquire("p", "k", wait=0) is None


def test_held_is_mutually_exclusive_across_threads() -> None:
    lane = _lane(wait=10.0)
    inside = 0
    overlaps = 0
    entries = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, overlaps, entries
        for _ in range(20):
            with lane.held(ACCOUNT):
                with guard:
                    inside += 1
                    entries += 1
                    overlaps += inside > 1
                time.sleep(0.001)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert entries == 120
    assert overlaps == 0


def test_held_raises_lane_busy_and_names_no_secret() -> None:
    lane = _lane(wait=0.05)
    token = lane.acquire(ACCOUNT.provider, key_id(ACCOUNT))
    assert token is not None
    with pytest.raises(LaneBusy) as info, lane.held(ACCOUNT):
        pass
    assert "very-secret-key" not in str(info.value)
    assert key_id(ACCOUNT) in str(info.value)
    assert info.value.wait > 0
