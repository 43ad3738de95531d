"""A rate limit per (provider, account), shared by every worker: a token bucket in Redis.

Celery's own `rate_limit` is per worker (CELERY-PITFALLS #12). The bucket's rate and burst
come from the account (`rate_limit = { rate = 5, burst = 5 }` in the accounts file); an
account without one is not limited here. The arithmetic runs in one Lua script on Redis's
clock. A 429 from the provider drains the bucket for its Retry-After (`penalize`).
"""

from __future__ import annotations

import time
from pathlib import Path

from redis import Redis

from config.accounts import Account
from worker.errors import NotSent

_SCRIPT = (Path(__file__).parent / "ratelimit.lua").read_text()
DEFAULT_PENALTY = 1.0  # seconds, when a 429 names no Retry-After


class Throttled(NotSent):
    """No token within the caller's budget: nothing was sent; come back after `wait` seconds."""

    def __init__(self, account: str, wait: float) -> None:
        super().__init__(f"rate limit of {account}: next token in {wait:.2f}s", wait)


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_SCRIPT)

    def key(self, account: Account) -> str:
        return f"{self._prefix}:bucket:{account.provider}:{account.name}"

    def _run(self, account: Account, mode: str, seconds: float) -> tuple[bool, float]:
        limit = account.rate_limit
        assert limit is not None
        taken, wait = self._script(
            keys=[self.key(account)], args=[repr(float(limit.rate)), max(1, limit.burst), mode, repr(float(seconds))]
        )
        return bool(int(taken)), float(wait)

    def acquire(self, account: Account) -> float:
        """0.0 when a token was taken; else the seconds until one is free (nothing taken)."""
        if account.rate_limit is None:
            return 0.0
        taken, wait = self._run(account, "take", 0.0)
        return 0.0 if taken else wait

    def reserve(self, account: Account, max_wait: float) -> tuple[bool, float]:
        """(True, delay): a token is ours `delay` seconds from now (0: at once); the caller waits
        that long, then sends. (False, wait): none within `max_wait`; nothing was taken."""
        if account.rate_limit is None:
            return True, 0.0
        return self._run(account, "take", max(0.0, max_wait))

    def wait_for_token(self, account: Account, max_wait: float) -> float:
        """Take a token, sleeping up to `max_wait` for a reserved one: 0.0 then. Otherwise the
        seconds to come back after, without sleeping (a task must not sleep long)."""
        taken, wait = self.reserve(account, max_wait)
        if not taken:
            return wait
        if wait > 0:
            time.sleep(wait)
        return 0.0

    def penalize(self, account: Account, seconds: float | None) -> None:
        """The provider answered 429: no token for anyone before `seconds` (Retry-After) from now."""
        if account.rate_limit is None:
            return
        self._run(account, "penalize", max(0.0, seconds if seconds is not None else DEFAULT_PENALTY))
