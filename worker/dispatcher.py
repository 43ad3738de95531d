"""`refundq dispatcher`: every second, claim due rows and publish their work.

A small loop rather than celery beat: it does one thing, needs no schedule file, and holds a
Redis leader lease so a second dispatcher stands by instead of doubling the work (claims are
conditional UPDATEs, so even two leaders would not double a send or a poll).
"""

from __future__ import annotations

import threading
import time
import uuid

import structlog
from redis import Redis
from redis.exceptions import RedisError

from worker.engine import Engine
from worker.reconcile import maybe_schedule
from worker.runtime import Runtime

log = structlog.get_logger("refundq.dispatcher")

# Take the lease if free, or extend it if we hold it; atomic so two dispatchers never both hold it.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Delete the lease only if we still hold it: a GET then a DEL could delete the next leader's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaderLease:
    def __init__(self, redis: Redis, key: str, ttl_ms: int) -> None:
        self._redis, self._key, self._ttl = redis, key, ttl_ms
        self.token = uuid.uuid4().hex
        self._script = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    def hold(self) -> bool:
        try:
            return bool(self._script(keys=[self._key], args=[self.token, self._ttl]))
        except RedisError as exc:
            log.warning("leader_lease_unavailable", error=str(exc))
            return False

    def release(self) -> bool:
        """True when we held the lease and gave it back."""
        try:
            return bool(self._release(keys=[self._key], args=[self.token]))
        except RedisError:
            return False


def run(rt: Runtime, stop: threading.Event | None = None, max_ticks: int | None = None) -> None:
    stop = stop or threading.Event()
    engine = Engine(rt)
    interval = rt.settings.dispatch_interval
    lease = LeaderLease(rt.redis, f"{rt.settings.redis_prefix}:dispatcher:leader", int(interval * 5000))
    was_leader = False
    ticks = 0
    log.info("dispatcher_started", interval=interval)
    try:
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            ticks += 1
            started = time.monotonic()
            leader = lease.hold()
            if leader != was_leader:
                log.info("dispatcher_leadership", leader=leader)
                was_leader = leader
            if leader:
                try:
                    counts = engine.dispatch_once()
                    if counts["claimed"] or counts["taken_over"]:
                        log.info("dispatched", **counts)
                except Exception as exc:  # a DB or broker hiccup must not kill the loop
                    log.error("dispatch_failed", error=f"{type(exc).__name__}: {exc}")
                try:  # at most once per reconcile_interval, across dispatchers (worker/reconcile.py)
                    maybe_schedule(rt)
                except Exception as exc:
                    log.error("reconcile_schedule_failed", error=f"{type(exc).__name__}: {exc}")
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        lease.release()
