"""Door (b)'s queue, read by refundq itself rather than by Celery.

Celery parses a message before any refundq code runs: some shapes (a JSON object as body, a body
that is not base64, a list as envelope) stop its consumer for good, others are acked with a log
line and nothing else. Here every item on the intake lists, whatever its bytes, ends as one refund
row or one `rejected_intake` row before it leaves Redis:

- fetch: one Lua call moves up to `intake_batch` items from the intake lists (and the quarantine
  list that worker/broker.py fills) into this consumer's processing list, each tagged with a
  delivery number; an item is always in exactly one list;
- record: a valid request goes through `persist`, door (a)'s path; the rejected ones are inserted
  in one statement that skips a delivery number already recorded;
- ack: the processing list is deleted only after the commit. A consumer that dies leaves its list
  behind; another adopts it once the dead one's heartbeat key has expired. Redelivery is harmless:
  the idempotency key dedupes refunds, the delivery number dedupes rejections.

An ETA or countdown on an intake message is ignored: the refund is stored when it arrives, never
held. Submits and polls are other queues with their own Celery consumers, so junk here never
delays them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from config.logging import redact
from worker import store
from worker.app import INTAKE_QUEUE
from worker.broker import quarantine_key, set_aside_wrong_types
from worker.envelope import BadMessage, parse, raw_excerpt
from worker.models import utcnow
from worker.runtime import Runtime
from worker.text import escape_controls

log = structlog.get_logger("refundq.intake")

INTAKE_TASK = "refundq.intake"
KNOWN_KWARGS = ("producer", "signature")
# kombu's Redis transport keeps priorities 3, 6 and 9 in lists named queue + "\x06\x16" + priority.
PRIORITY_SEP = "\x06\x16"
HEARTBEAT = 30  # seconds a processing list stays its consumer's without a sign of life
ADOPT_EVERY = 10.0
PRUNE_EVERY = 600
IDLE_WAIT = (0.01, 0.2)  # an empty queue is polled again after 10 ms, backing off to 200 ms
POISON_ROUNDS = 3  # a message that breaks the database alone is rejected after this many rounds
_RETRYABLE = (OperationalError, InterfaceError, PoolTimeout, RedisConnectionError, RedisTimeoutError)

# KEYS: processing list, delivery counter, sources...; ARGV: how many. The counter starts at the
# Redis clock in microseconds, so delivery numbers stay unique even after Redis lost its data.
_FETCH = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], t[1] * 1000000 + t[2])
end
-- A list left from a failed round is retried first: a round never grows past the batch size.
local room = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[1])
local moved = 0
for i = 3, #KEYS do
  if room <= 0 then break end
  local items = redis.call('RPOP', KEYS[i], room)
  if items then
    local last = redis.call('INCRBY', KEYS[2], #items)
    local entries = {}
    for j, item in ipairs(items) do
      entries[j] = string.format('%d', last - #items + j) .. '|' .. (i - 3) .. '|' .. item
    end
    redis.call('LPUSH', KEYS[1], unpack(entries))
    room = room - #items
    moved = moved + #items
  end
end
return moved
"""
# KEYS: an orphaned processing list, ours, its owner's heartbeat. Atomic with the heartbeat check.
_ADOPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end
return n
"""


def intake_sources(queue: str = INTAKE_QUEUE) -> list[str]:
    return [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in (3, 6, 9))]


def read_request(raw: bytes, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request, kwargs) of a well-formed `refundq.intake` message, else BadMessage."""
    message = parse(raw, max_bytes=max_bytes)
    if message.task != INTAKE_TASK:
        raise BadMessage(
            f"task {escape_controls(message.task)!r} does not run from the intake queue (only {INTAKE_TASK})"
        )
    unknown = sorted(set(message.kwargs) - set(KNOWN_KWARGS))
    if unknown:
        raise BadMessage(
            f"kwargs.{escape_controls(unknown[0][:64])} is not a known argument (known: producer, signature)"
        )
    if len(message.args) != 1:
        raise BadMessage(f"{INTAKE_TASK} takes one argument, the refund request; got {len(message.args)}")
    request = message.args[0]
    if not isinstance(request, dict):
        raise BadMessage(f"the refund request must be a JSON object, not {type(request).__name__}")
    return request, message.kwargs


def sanitize(value: Any, depth: int = 0) -> Any:
    """What a rejected request looked like, in a form any JSON column accepts: strings escaped and
    cut, non-finite floats and huge integers as text, containers cut in size and depth."""
    if depth > 6:
        return "..."
    if isinstance(value, str):
        return redact(escape_controls(value[:1000]))
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**18 else f"{str(value)[:40]}... (integer)"
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, list):
        return [sanitize(v, depth + 1) for v in value[:50]]
    if isinstance(value, dict):
        return {redact(escape_controls(str(k)[:64])): sanitize(v, depth + 1) for k, v in list(value.items())[:50]}
    return escape_controls(repr(value)[:200])


def _short_str(value: Any, limit: int) -> str | None:
    return redact(escape_controls(value))[:limit] if isinstance(value, str) and value else None


def rejected_row(
    message_id: str,
    queue: str,
    raw: bytes,
    reasons: list[str],
    request: Mapping[str, Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "queue": escape_controls(queue)[:200],
        "producer": _short_str((kwargs or {}).get("producer"), 100),
        "idempotency_key": _short_str((request or {}).get("idempotency_key"), 200),
        "payload": sanitize(dict(request)) if request is not None else {},
        "reasons": [redact(escape_controls(r))[:1000] for r in reasons],
        "raw": redact(raw_excerpt(raw)),
        "created_at": utcnow(),
    }


class Retry(Exception):
    """The database or Redis is unreachable: keep the messages, try the round again later."""


@dataclass
class IntakeConsumer:
    rt: Runtime
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    _failures: dict[str, int] = field(default_factory=dict)
    _adopted_at: float = 0.0

    def __post_init__(self) -> None:
        prefix = self.rt.settings.redis_prefix
        self.prefix = prefix
        self.sources = [*intake_sources(), quarantine_key(prefix)]
        self.processing = f"{prefix}:intake:processing:{self.id}"
        self.heartbeat = f"{prefix}:intake:alive:{self.id}"
        self._fetch = self.rt.redis.register_script(_FETCH)
        self._adopt = self.rt.redis.register_script(_ADOPT)

    # --- one round ------------------------------------------------------------------------------

    def step(self) -> int:
        """Fetch, record, ack. The number of messages handled (0: the queues were empty)."""
        entries = self.fetch()
        if entries:
            self.record(entries)
            self.rt.redis.delete(self.processing)
        return len(entries)

    def fetch(self) -> list[bytes]:
        """Everything in our processing list (new items, and any adopted or left from a failed
        round), oldest first."""
        redis = self.rt.redis
        redis.set(self.heartbeat, self.id, ex=HEARTBEAT)
        keys = [self.processing, f"{self.prefix}:intake:delivery", *self.sources]
        try:
            self._fetch(keys=keys, args=[self.rt.settings.intake_batch])
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            set_aside_wrong_types(redis, [self.processing, *self.sources], self.prefix)
            return []
        entries: list[bytes] = redis.lrange(self.processing, 0, -1)  # type: ignore[assignment]
        return entries[::-1]

    def record(self, entries: list[bytes]) -> None:
        rejected: list[dict[str, Any]] = []
        accepted = 0
        for entry in entries:
            message_id, index, raw = self._delivery(entry)
            if index is None:
                rejected.append(rejected_row(message_id, "intake processing list", raw, ["not a delivery record"]))
                continue
            if index == len(self.sources) - 1:
                queue, raw, reason = _unwrap_quarantined(raw)
                rejected.append(rejected_row(message_id, queue, raw, [reason]))
                continue
            queue = self.sources[index]
            try:
                request, kwargs = read_request(raw, self.rt.settings.intake_max_bytes)
            except BadMessage as exc:
                rejected.append(rejected_row(message_id, queue, raw, [exc.reason]))
                continue
            reasons = self.accept(message_id, request, kwargs)
            if reasons:
                rejected.append(rejected_row(message_id, queue, raw, reasons, request, kwargs))
            else:
                accepted += 1
        try:
            with self.rt.engine.begin() as conn:
                store.record_rejected_intakes(conn, rejected)
        except _RETRYABLE as exc:
            raise Retry(f"recording rejected messages: {type(exc).__name__}") from None
        for entry in entries:
            self._failures.pop(self._delivery(entry)[0], None)
        if rejected:
            log.warning(
                "intake_rejected",
                count=len(rejected),
                accepted=accepted,
                first_reason=rejected[0]["reasons"][0] if rejected[0]["reasons"] else None,
            )

    def _delivery(self, entry: bytes) -> tuple[str, int | None, bytes]:
        """(delivery number, source index, raw bytes) of a processing-list entry. Anything else
        someone pushed onto that list gets a number of its own bytes and no source."""
        number, _, rest = entry.partition(b"|")
        source, _, raw = rest.partition(b"|")
        if number.isdigit() and source.isdigit() and int(source) < len(self.sources):
            return number.decode(), int(source), raw
        return "x" + hashlib.sha256(entry).hexdigest()[:32], None, entry

    def accept(self, message_id: str, request: dict[str, Any], kwargs: dict[str, Any]) -> list[str]:
        """Store the request (door (a)'s path). The reasons it was refused, or [] when stored."""
        from worker.producer import IdempotencyConflict, persist, publish_submit
        from worker.producer_auth import authorize
        from worker.validation import ValidationFailed

        refused = authorize(self.rt.producers, request, kwargs.get("producer"), kwargs.get("signature"))
        if refused:
            return [str(e) for e in refused]
        try:
            refund, created = persist(request, self.rt)
        except ValidationFailed as exc:
            return [str(e) for e in exc.errors]
        except IdempotencyConflict as exc:
            return [str(exc)]
        except _RETRYABLE as exc:
            if not self._database_answers():
                raise Retry(f"storing a refund: {type(exc).__name__}") from None
            # The database answers, so this message itself fails there: retry it a few rounds,
            # then record it rather than let it block the queue.
            failures = self._failures[message_id] = self._failures.get(message_id, 0) + 1
            if failures < POISON_ROUNDS:
                raise Retry(f"storing a refund: {type(exc).__name__}") from None
            return [f"could not be stored after {failures} attempts: {_error(exc)}"]
        except Exception as exc:  # a refusal the validation did not foresee: recorded, not dropped
            return [f"could not be stored: {_error(exc)}"]
        if created:
            publish_submit(refund.id, self.rt)
            log.info("intake_accepted", refund_id=refund.id, provider=refund.provider, account=refund.account)
        else:
            log.info("intake_duplicate", refund_id=refund.id)
        return []

    def _database_answers(self) -> bool:
        try:
            with self.rt.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    # --- housekeeping ---------------------------------------------------------------------------

    def adopt_orphans(self) -> int:
        """Take over the processing lists of consumers whose heartbeat expired."""
        moved = 0
        redis = self.rt.redis
        for key in redis.scan_iter(match=f"{self.prefix}:intake:processing:*", count=100):
            owner = key.decode().rsplit(":", 1)[1]
            if owner != self.id:
                moved += int(self._adopt(keys=[key, self.processing, f"{self.prefix}:intake:alive:{owner}"]))
        if moved:
            log.warning("intake_adopted", messages=moved)
        return moved

    def prune(self) -> int:
        """Delete rejected messages past their retention; one consumer per PRUNE_EVERY does it."""
        if not self.rt.redis.set(f"{self.prefix}:intake:prune", self.id, nx=True, ex=PRUNE_EVERY):
            return 0
        before = utcnow() - timedelta(days=self.rt.settings.rejected_intake_days)
        with self.rt.engine.begin() as conn:
            pruned = store.prune_rejected_intakes(conn, before)
        if pruned:
            log.info("rejected_intakes_pruned", count=pruned)
        return pruned

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._adopted_at >= ADOPT_EVERY:
            self._adopted_at = now
            self.adopt_orphans()
            self.prune()

    def close(self) -> None:
        # A list left behind (a round that could not commit) is adopted at once by another consumer.
        with contextlib.suppress(Exception):
            self.rt.redis.delete(self.heartbeat)


def _error(exc: BaseException) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return redact(f"{type(exc).__name__}: {escape_controls(first_line[:200])}")


def _unwrap_quarantined(entry: bytes) -> tuple[str, bytes, str]:
    """worker/broker.py's record of a message no Celery queue could run: queue, raw bytes, reason."""
    try:
        data = json.loads(entry)
        return str(data["queue"]), base64.b64decode(data["raw"]), str(data["reason"])
    except Exception:  # anything else pushed onto the quarantine list is junk in its own right
        return "quarantine", entry, "not a quarantine record"


def run(rt: Runtime, stop: threading.Event) -> None:
    """The consumer loop, until `stop` is set. Never raises on bad input or a lost connection."""
    consumer = IntakeConsumer(rt)
    log.info("intake_started", consumer=consumer.id, batch=rt.settings.intake_batch)
    idle, backoff = IDLE_WAIT[0], 0.5
    try:
        while not stop.is_set():
            try:
                consumer.housekeeping()
                handled = consumer.step()
                backoff = 0.5
            except Exception as exc:  # Retry, Redis or the database away: keep the messages, wait
                log.warning("intake_round_failed", error=_error(exc), retry_in=backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if handled:
                idle = IDLE_WAIT[0]
            else:
                stop.wait(idle)
                idle = min(idle * 2, IDLE_WAIT[1])
    finally:
        consumer.close()
        log.info("intake_stopped", consumer=consumer.id)
