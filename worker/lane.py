"""The ordered send lane: one request at a time per (provider, API key), across every worker.

For providers whose nonces must *arrive* in order (NoncePolicy.INCREASING, CoinCorner), two
requests signed with nonces 5 and 6 may still reach the provider as 6 then 5, and 5 is then
refused. The lane makes allocate -> sign -> send -> response one critical section per key.

A Redis key holds a random token with a TTL longer than the HTTP timeout (connect + read +
margin): only the holder deletes it (compare-and-delete in `lane.lua`), and a holder that
dies loses it at the TTL. Waiting is bounded in time and in count, with small sleeps.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from redis import Redis

from config.accounts import Account
from worker.errors import NotSent
from worker.nonces import key_id

log = structlog.get_logger("refundq.lane")

_RELEASE = (Path(__file__).parent / "lane.lua").read_text()
_FIRST_SLEEP = 0.002  # seconds between tries at first; grows to _MAX_SLEEP
_MAX_SLEEP = 0.02


class LaneBusy(NotSent):
    """The lane stayed taken for the whole wait. Nothing was sent; try again after `wait` seconds."""

    def __init__(self, lane: str, waited: float) -> None:
        super().__init__(f"ordered lane {lane} busy for {waited:.1f}s", 1.0)


class Lane:
    def __init__(self, redis: Redis, prefix: str, *, ttl: float, wait: float) -> None:
        if ttl <= 0 or wait < 0:
            raise ValueError("lane ttl must be positive and wait not negative")
        self._redis = redis
        self._prefix = prefix
        self.ttl_ms = int(ttl * 1000)
        self.wait = wait
        self._release = redis.register_script(_RELEASE)

    def key(self, provider: str, key: str) -> str:
        return f"{self._prefix}:lane:{provider}:{key}"

    def acquire(self, provider: str, key: str, wait: float | None = None) -> str | None:
        """The holder's token, or None when the lane stayed taken for `wait` seconds."""
        name = self.key(provider, key)
        token = secrets.token_hex(16)
        budget = self.wait if wait is None else wait
        deadline = time.monotonic() + budget
        sleep = _FIRST_SLEEP
        # Bounded in count as well as time: at least the first sleep between tries.
        for _ in range(int(budget / _FIRST_SLEEP) + 2):
            if self._redis.set(name, token, nx=True, px=self.ttl_ms):
                return token
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(left, sleep * random.uniform(0.5, 1.0)))
            sleep = min(_MAX_SLEEP, sleep * 1.5)
        return None

    def release(self, provider: str, key: str, token: str) -> bool:
        """Give the lane back; False when it had already expired (and maybe passed on)."""
        return bool(self._release(keys=[self.key(provider, key)], args=[token]))

    @contextmanager
    def held(self, account: Account) -> Iterator[str]:
        """Hold the lane of the account's API key for the body; raises LaneBusy after the wait."""
        kid = key_id(account)
        started = time.monotonic()
        token = self.acquire(account.provider, kid)
        if token is None:
            raise LaneBusy(f"{account.provider}:{kid}", time.monotonic() - started)
        try:
            yield token
        finally:
            if not self.release(account.provider, kid, token):
                # Our TTL ran out while we held it: someone else may have sent meanwhile.
                log.warning("lane_expired_while_held", provider=account.provider, key_id=kid)
