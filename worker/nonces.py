"""Nonces per (provider, API key): shared by every worker through one Redis Lua script, on
Redis's clock (`nonces.lua`), so no worker's clock skew reaches a signature."""

from __future__ import annotations

import time
from pathlib import Path

from redis import Redis

from config.accounts import Account
from providers.base import NoncePolicy, NonceUnit
from worker.clock import time_ns
from worker.errors import NonceWait

_SCRIPT = (Path(__file__).parent / "nonces.lua").read_text()
_SCALE = {NonceUnit.S: 1, NonceUnit.MS: 1_000, NonceUnit.US: 1_000_000}
_MICROS = {NonceUnit.S: 1_000_000, NonceUnit.MS: 1_000, NonceUnit.US: 1}
MAX_WAIT = 0.5  # seconds; a counter further ahead than this gives the refund back to the schedule


def clock(unit: NonceUnit) -> int:
    return time_ns() * _SCALE[unit] // 1_000_000_000


def key_id(account: Account) -> str:
    """The account's key group (config/accounts.py): a name, shared by every account that signs
    with the same key. Never derived from a secret: an unsalted digest in a Redis key name would
    let anyone who reads Redis test guesses of the key."""
    return account.key_group or account.name


class NonceAllocator:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_SCRIPT)

    def next(self, account: Account, policy: NoncePolicy, unit: NonceUnit) -> int:
        """Raises NonceWait (nothing sent) rather than sleep past MAX_WAIT: the caller may hold
        a claim or a lane, whose time is counted (worker/app.py send_budget)."""
        if policy is NoncePolicy.NONE:
            return 0
        if policy is NoncePolicy.TIMESTAMP and unit is NonceUnit.S:
            # Second-resolution timestamps cannot also be strictly increasing under load
            # without running ahead of the provider's clock window; send the clock as is.
            return clock(unit)
        key = f"{self._prefix}:nonce:{account.provider}:{key_id(account)}"
        deadline = time.monotonic() + MAX_WAIT
        # One nonce per clock unit per key at most (1,000/s in ms): far above any provider's limit.
        for _ in range(1000):
            issued, value = self._script(keys=[key], args=[_MICROS[unit]])
            if int(issued):
                return int(value)
            wait = int(value) / _SCALE[unit]
            if time.monotonic() + wait > deadline:
                raise NonceWait(f"nonce counter of {account.name} is {wait:.3f}s ahead of the clock", max(wait, 0.05))
            time.sleep(min(wait, 0.05))
        raise NonceWait(f"no nonce for {account.name} after 1000 tries")
