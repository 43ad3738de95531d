"""The circuit breaker on real Redis: opens after N, one half-open probe, closes on success."""

from __future__ import annotations

import time
import uuid

import pytest
from redis import Redis

from config.accounts import Account
from tests.conftest import TEST_REDIS_URL
from worker.breaker import Breaker, CircuitOpen

ACCOUNT = Account("cobo-main", "cobo", "http://x")


def _breaker(threshold: int = 3, cooldown: float = 0.3, probe_ttl: float = 5.0) -> Breaker:
    prefix = f"breaker-test-{uuid.uuid4().hex[:8]}"
    return Breaker(Redis.from_url(TEST_REDIS_URL), prefix, threshold=threshold, cooldown=cooldown, probe_ttl=probe_ttl)


def test_opens_after_n_consecutive_failures() -> None:
    breaker = _breaker(threshold=3)
    for _ in range(2):
        breaker.failure(ACCOUNT, "HTTP 503")
        assert breaker.allow(ACCOUNT).probe is None
    breaker.success(ACCOUNT)  # not consecutive any more
    for _ in range(2):
        breaker.failure(ACCOUNT, "HTTP 503")
    assert breaker.allow(ACCOUNT).probe is None  # 2 after the success: still closed
    breaker.failure(ACCOUNT, "HTTP 503")
    with pytest.raises(CircuitOpen) as info:
        breaker.allow(ACCOUNT)
    assert 0.2 < info.value.wait <= 0.3
    assert "open_until" in breaker.state(ACCOUNT)


def test_half_open_lets_one_probe_and_success_closes() -> None:
    breaker = _breaker(threshold=1, cooldown=0.2)
    breaker.failure(ACCOUNT, "not sent")
    with pytest.raises(CircuitOpen):
        breaker.allow(ACCOUNT)
    time.sleep(0.25)
    probe = breaker.allow(ACCOUNT)
    assert probe.probe is not None
    with pytest.raises(CircuitOpen) as info:  # a second caller while the probe is out
        breaker.allow(ACCOUNT)
    assert 0 < info.value.wait <= 1.0
    breaker.success(ACCOUNT)
    assert breaker.allow(ACCOUNT).probe is None
    assert breaker.state(ACCOUNT) == {}


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    breaker = _breaker(threshold=2, cooldown=0.2)
    breaker.failure(ACCOUNT, "HTTP 500")
    breaker.failure(ACCOUNT, "HTTP 500")
    time.sleep(0.25)
    assert breaker.allow(ACCOUNT).probe is not None
    breaker.failure(ACCOUNT, "HTTP 503")
    with pytest.raises(CircuitOpen) as info:
        breaker.allow(ACCOUNT)
    assert info.value.wait > 0.15


def test_abandoned_probe_frees_the_slot_and_a_lost_probe_expires() -> None:
    breaker = _breaker(threshold=1, cooldown=0.1, probe_ttl=0.3)
    breaker.failure(ACCOUNT, "HTTP 503")
    time.sleep(0.15)
    first = breaker.allow(ACCOUNT)
    assert first.probe is not None
    breaker.abandon(ACCOUNT, first)  # throttled before sending
    second = breaker.allow(ACCOUNT)
    assert second.probe is not None  # never reports: its worker died
    with pytest.raises(CircuitOpen):
        breaker.allow(ACCOUNT)
    time.sleep(0.35)
    assert breaker.allow(ACCOUNT).probe is not None


def test_breakers_are_per_account() -> None:
    breaker = _breaker(threshold=1)
    breaker.failure(ACCOUNT, "HTTP 503")
    with pytest.raises(CircuitOpen):
        breaker.allow(ACCOUNT)
    assert breaker.allow(Account("cobo-other", "cobo", "http://x")).probe is None
