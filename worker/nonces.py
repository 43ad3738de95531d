"""Nonces per (provider, API key): shared by every worker through one Redis Lua script."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from redis import Redis

from config.accounts import Account
from providers.base import NoncePolicy, NonceUnit

_SCRIPT = (Path(__file__).parent / "nonces.lua").read_text()
_SCALE = {NonceUnit.S: 1, NonceUnit.MS: 1_000, NonceUnit.US: 1_000_000}


def clock(unit: NonceUnit) -> int:
    return time.time_ns() * _SCALE[unit] // 1_000_000_000


def key_id(account: Account) -> str:
    """A stable, non-secret id for the account's credentials (for Redis keys and logs)."""
    material = "|".join(f"{k}={v.get_secret_value()}" for k, v in sorted(account.secrets.items()))
    return hashlib.sha256(f"{account.provider}|{material}".encode()).hexdigest()[:16]


class NonceAllocator:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_SCRIPT)

    def next(self, account: Account, policy: NoncePolicy, unit: NonceUnit) -> int:
        if policy is NoncePolicy.NONE:
            return 0
        now = clock(unit)
        if policy is NoncePolicy.TIMESTAMP and unit is NonceUnit.S:
            # Second-resolution timestamps cannot also be strictly increasing under load
            # without running ahead of the provider's clock window; send the clock as is.
            return now
        key = f"{self._prefix}:nonce:{account.provider}:{key_id(account)}"
        # One nonce per clock unit per key at most (1,000/s in ms): far above any provider's limit.
        for _ in range(1000):
            issued, value = self._script(keys=[key], args=[clock(unit)])
            if int(issued):
                return int(value)
            time.sleep(min(int(value) / _SCALE[unit], 0.05))
        raise TimeoutError(f"no nonce for {account.name}: the counter is far ahead of this machine's clock")
