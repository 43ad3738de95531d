"""Everything a process needs to do refund work, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from redis import Redis
from sqlalchemy import Engine

from config.accounts import Accounts
from config.logging import configure_logging, register_secrets
from config.producers import Producers, load_accounts_and_producers
from config.settings import Settings, get_settings
from worker.breaker import Breaker
from worker.db import get_engine
from worker.lane import Lane
from worker.nonces import NonceAllocator
from worker.ratelimit import RateLimiter
from worker.transport import Transport


@dataclass
class Runtime:
    settings: Settings
    accounts: Accounts = field(repr=False)
    # Door (b) senders and their accounts (config/producers.py); empty: single tenant, unsigned.
    producers: Producers = field(default_factory=Producers, repr=False)

    @cached_property
    def engine(self) -> Engine:
        return get_engine(self.settings.database_url)

    @cached_property
    def redis(self) -> Redis:
        return Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)

    @cached_property
    def nonces(self) -> NonceAllocator:
        return NonceAllocator(self.redis, self.settings.redis_prefix)

    @cached_property
    def lane(self) -> Lane:
        s = self.settings
        return Lane(
            self.redis,
            s.redis_prefix,
            ttl=s.http_connect_timeout + s.http_read_timeout + s.lane_ttl_margin,
            wait=s.lane_wait,
        )

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis, self.settings.redis_prefix)

    @cached_property
    def breaker(self) -> Breaker:
        s = self.settings
        return Breaker(
            self.redis,
            s.redis_prefix,
            threshold=s.breaker_threshold,
            cooldown=s.breaker_cooldown,
            probe_ttl=s.http_connect_timeout + s.http_read_timeout + s.lane_ttl_margin,
        )

    @cached_property
    def transport(self) -> Transport:
        return Transport(
            connect_timeout=self.settings.http_connect_timeout, read_timeout=self.settings.http_read_timeout
        )


_runtime: Runtime | None = None


def build_runtime(settings: Settings | None = None) -> Runtime:
    settings = settings or get_settings()
    accounts, producers = load_accounts_and_producers(settings.accounts_file)
    register_secrets([*accounts.secret_values(), *producers.secret_values()])
    return Runtime(settings=settings, accounts=accounts, producers=producers)


def get_runtime() -> Runtime:
    """The process-wide runtime (workers, CLI). Libraries and tests may build their own."""
    global _runtime
    if _runtime is None:
        settings = get_settings()
        configure_logging(settings.log_format, settings.log_level)
        _runtime = build_runtime(settings)
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime
