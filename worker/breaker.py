"""A circuit breaker per (provider, account), in Redis so every worker sees the same state.

Closed: requests go. After `threshold` consecutive failures (not sent, or a 5xx answer) it opens
for `cooldown` seconds: nothing is sent, refunds wait in `queued`. Then it is half-open: one
request (the probe) goes; its success closes the breaker, its failure opens it again. A probe
that never reports (its worker died) frees the slot at `probe_ttl`. Every state change is
logged with the account's name (never a secret).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import structlog
from redis import Redis

from config.accounts import Account
from worker.errors import NotSent

log = structlog.get_logger("refundq.breaker")

_SCRIPT = (Path(__file__).parent / "breaker.lua").read_text()


class CircuitOpen(NotSent):
    """The breaker is open: nothing was sent; come back after `wait` seconds."""

    def __init__(self, account: str, wait: float) -> None:
        super().__init__(f"circuit breaker of {account} open for {wait:.1f}s more", wait)


@dataclass(frozen=True)
class Pass:
    """Leave to send. `probe` is the half-open probe's token (None when the breaker is closed)."""

    probe: str | None = None


class Breaker:
    def __init__(self, redis: Redis, prefix: str, *, threshold: int, cooldown: float, probe_ttl: float) -> None:
        if threshold < 1 or cooldown <= 0 or probe_ttl <= 0:
            raise ValueError("breaker threshold, cool-down and probe TTL must be positive")
        self._redis = redis
        self._prefix = prefix
        self.threshold = threshold
        self.cooldown_ms = int(cooldown * 1000)
        self.probe_ttl_ms = int(probe_ttl * 1000)
        # Forget failures of a long-quiet account: a day, or ten cool-downs if longer.
        self.state_ttl_ms = max(86_400_000, 10 * self.cooldown_ms)
        self._script = redis.register_script(_SCRIPT)

    def key(self, account: Account) -> str:
        return f"{self._prefix}:breaker:{account.provider}:{account.name}"

    def _run(self, account: Account, mode: str, token: str = "") -> tuple[str, int]:
        key = self.key(account)
        verdict, ms = self._script(
            keys=[key, f"{key}:probe"],
            args=[mode, self.threshold, self.cooldown_ms, self.probe_ttl_ms, self.state_ttl_ms, token],
        )
        return (verdict.decode() if isinstance(verdict, bytes) else str(verdict)), int(ms)

    def allow(self, account: Account) -> Pass:
        """Leave to send, or CircuitOpen with the seconds to wait."""
        token = secrets.token_hex(8)
        verdict, ms = self._run(account, "allow", token)
        if verdict == "closed":
            return Pass()
        if verdict == "probe":
            log.info("breaker_half_open", account=account.name, provider=account.provider)
            return Pass(probe=token)
        raise CircuitOpen(account.name, ms / 1000)

    def abandon(self, account: Account, grant: Pass) -> None:
        """The probe was granted but not sent (throttled, lost race): let another one go."""
        if grant.probe is not None:
            self._run(account, "abandon", grant.probe)

    def success(self, account: Account) -> None:
        verdict, _ = self._run(account, "success")
        if verdict == "reclosed":
            log.info("breaker_closed", account=account.name, provider=account.provider)

    def failure(self, account: Account, why: str) -> None:
        verdict, value = self._run(account, "failure")
        if verdict == "opened":
            log.warning(
                "breaker_opened",
                account=account.name,
                provider=account.provider,
                failures=self.threshold,
                cooldown=value / 1000,
                why=why,
            )
        elif verdict == "reopened":
            log.warning(
                "breaker_reopened", account=account.name, provider=account.provider, cooldown=value / 1000, why=why
            )

    def state(self, account: Account) -> dict[str, str]:
        """The raw Redis state (for operators and tests): {} when closed with no failures."""
        raw: dict[bytes, bytes] = self._redis.hgetall(self.key(account))  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}
