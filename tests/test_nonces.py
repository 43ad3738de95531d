"""The nonce allocator: strictly increasing across callers, and still ahead after FLUSHALL."""

from __future__ import annotations

import threading

from pydantic import SecretStr
from redis import Redis

from config.accounts import Account
from providers.base import NoncePolicy, NonceUnit
from tests.conftest import TEST_REDIS_URL
from worker.nonces import NonceAllocator, clock

ACCOUNT = Account("acc", "coincorner", "http://x", secrets={"api_key": SecretStr("k" * 10)})


def test_concurrent_nonces_are_unique_and_increasing() -> None:
    redis = Redis.from_url(TEST_REDIS_URL)
    allocator = NonceAllocator(redis, "nonce-test")
    got: list[list[int]] = [[] for _ in range(8)]

    def take(i: int) -> None:
        got[i] = [allocator.next(ACCOUNT, NoncePolicy.INCREASING, NonceUnit.MS) for _ in range(200)]

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    flat = [n for per in got for n in per]
    assert len(flat) == len(set(flat)) == 1600
    for per in got:  # each caller sees its own nonces strictly increase
        assert per == sorted(per)


def test_after_flushall_the_clock_keeps_nonces_ahead() -> None:
    redis = Redis.from_url(TEST_REDIS_URL)
    allocator = NonceAllocator(redis, "nonce-test-flush")
    issued = [allocator.next(ACCOUNT, NoncePolicy.INCREASING, NonceUnit.MS) for _ in range(500)]
    redis.flushdb()  # the test's own database: the same loss as FLUSHALL for this counter
    redis.set("refundq-test-owner", "restored")
    after = allocator.next(ACCOUNT, NoncePolicy.INCREASING, NonceUnit.MS)
    assert after > max(issued)
    assert after >= clock(NonceUnit.MS) - 1000


def test_policies() -> None:
    allocator = NonceAllocator(Redis.from_url(TEST_REDIS_URL), "nonce-test-policy")
    assert allocator.next(ACCOUNT, NoncePolicy.NONE, NonceUnit.S) == 0
    assert abs(allocator.next(ACCOUNT, NoncePolicy.TIMESTAMP, NonceUnit.S) - clock(NonceUnit.S)) <= 1


def test_counters_expire_when_unused() -> None:
    """Retired accounts' counters do not pile up; expiry is as safe as a flush (clock floor)."""
    redis = Redis.from_url(TEST_REDIS_URL)
    allocator = NonceAllocator(redis, "nonce-test-ttl")
    allocator.next(ACCOUNT, NoncePolicy.INCREASING, NonceUnit.MS)
    (key,) = redis.keys("nonce-test-ttl:nonce:*")
    assert 0 < redis.ttl(key) <= 86400


def test_redis_keys_name_the_key_group_not_a_digest_of_the_secret() -> None:
    import hashlib
    import re

    from worker.lane import Lane
    from worker.nonces import key_id

    redis = Redis.from_url(TEST_REDIS_URL)
    account = Account("acc", "coincorner", "http://x", secrets={"api_key": SecretStr("k" * 10)}, key_group="cc-main")
    NonceAllocator(redis, "nonce-test-names").next(account, NoncePolicy.INCREASING, NonceUnit.MS)
    lane = Lane(redis, "nonce-test-names", ttl=5, wait=0)
    with lane.held(account):
        keys = sorted(k.decode() for k in redis.scan_iter("nonce-test-names:*"))
    assert keys == ["nonce-test-names:lane:coincorner:cc-main", "nonce-test-names:nonce:coincorner:cc-main"]
    digest = hashlib.sha256(b"coincorner|api_key=" + b"k" * 10).hexdigest()
    assert not any(digest[:8] in k or re.search(r"[0-9a-f]{16}", k) for k in keys)
    assert key_id(Account("solo", "coincorner", "http://x")) == "solo"  # built in code: its own name
    redis.delete(*keys)
