"""kombu's Redis transport with a gate: no bytes on a refundq queue can stop a worker.

Celery trusts the broker: an envelope that is not JSON, a JSON list, a body that is not base64 or
a protocol-2 body that is an object raise inside kombu or Celery's consumer, which stops the worker
(and restores the message, so it stops again on restart). Every item a worker pops is checked here
first (worker/envelope.py, the task name against the queue it came from, the arguments against the
task's signature); one that fails is pushed, with its queue and the reason, onto the quarantine
list, which the intake consumer (worker/intake.py) records as a rejected message. Celery sees only
messages it can run.

`_brpop_read` is kombu 5.7's own, with the gate added; tests/test_broker.py pins its source so an
upgrade of kombu is reviewed rather than silently unguarded.
"""

from __future__ import annotations

import base64
import inspect
import json
import uuid
from collections.abc import Sequence
from functools import cache
from queue import Empty
from typing import Any

import structlog
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import ResponseError

from worker.envelope import BadMessage, parse

log = structlog.get_logger("refundq.broker")

# refundq's own messages carry ids only; a bulk fan-out of 500 ids is ~30 KiB.
INTERNAL_MAX_BYTES = 1024 * 1024


@cache
def _queue_tasks() -> dict[str, frozenset[str]]:
    from worker.app import ROUTES

    tasks: dict[str, set[str]] = {}
    for task, queue in ROUTES.items():
        tasks.setdefault(queue, set()).add(task)
    return {queue: frozenset(names) for queue, names in tasks.items()}


@cache
def _signature(task: str) -> inspect.Signature:
    from worker.app import celery_app

    celery_app.loader.import_default_modules()  # the app's `include`: a no-op in a started worker
    return inspect.signature(celery_app.tasks[task].run)


def check(queue: str, raw: bytes) -> dict[str, Any]:
    """The decoded envelope (kombu's payload) of an item a refundq worker can run from this queue,
    else BadMessage. Decoded once: this runs for every submit and poll."""
    message = parse(raw, max_bytes=INTERNAL_MAX_BYTES)
    allowed = _queue_tasks().get(queue, frozenset())
    if message.task not in allowed:
        raise BadMessage(f"task {message.task!r} does not run from queue {queue}", message.task)
    try:
        _signature(message.task).bind(*message.args, **message.kwargs)
    except TypeError as exc:
        raise BadMessage(f"arguments do not fit {message.task}: {exc}", message.task) from None
    return message.envelope


def quarantine_key(prefix: str) -> str:
    return f"{prefix}:quarantine"


def set_aside_wrong_types(client: Any, keys: Sequence[str], prefix: str) -> list[str]:
    """Rename queue keys that are not lists (a producer's SET or HSET on a queue name): Redis
    refuses a pop from them with WRONGTYPE, for every queue of that pop. Kept, not deleted."""
    moved = []
    for key in keys:
        kind = client.type(key)
        if kind not in (b"list", b"none", "list", "none"):
            target = f"{quarantine_key(prefix)}:wrongtype:{key}:{uuid.uuid4().hex[:8]}"
            if client.renamenx(key, target):
                moved.append(target)
                log.error("queue_key_set_aside", key=key, type=bytes_to_str(kind), renamed_to=target)
    return moved


def quarantine_record(queue: str, raw: bytes, reason: str) -> str:
    return json.dumps({"queue": queue, "reason": reason, "raw": base64.b64encode(raw).decode("ascii")})


class Channel(kombu_redis.Channel):
    def _admit(self, queue: str, item: bytes) -> Any:
        """kombu's payload for an item that passes the gate; None after quarantining one that fails."""
        try:
            return check(queue, item)
        except BadMessage as exc:
            reason = exc.reason
        except Exception as exc:  # the gate itself must not be what stops the worker
            reason = f"unreadable: {type(exc).__name__}"
        from config.settings import get_settings

        with self.conn_or_acquire() as client:
            client.lpush(quarantine_key(get_settings().redis_prefix), quarantine_record(queue, item, reason))
        log.warning("message_quarantined", queue=queue, reason=reason, size=len(item))
        return None

    def _set_aside(self, queues: Sequence[str] | None = None) -> None:
        from config.settings import get_settings

        keys = [self._q_for_pri(q, pri) for q in queues or self.active_queues for pri in self.priority_steps]
        with self.conn_or_acquire() as client:
            set_aside_wrong_types(client, keys, get_settings().redis_prefix)

    def _size(self, queue: str) -> int:
        # Declaring a queue at start measures it: a key of another type would stop the worker there.
        try:
            return int(super()._size(queue))
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            self._set_aside([queue])
            return int(super()._size(queue))

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except ResponseError as exc:
                if "WRONGTYPE" not in str(exc):
                    raise
                self._set_aside()
                raise Empty() from None
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                payload = self._admit(dest, item)
                if payload is not None:
                    self.connection._deliver(payload, dest)
                return True
            else:
                raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()


class Transport(kombu_redis.Transport):
    Channel = Channel
