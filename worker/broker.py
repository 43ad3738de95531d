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
from functools import cache
from queue import Empty
from typing import Any

import structlog
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from worker.envelope import BadMessage, parse, safe_text

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

    return inspect.signature(celery_app.tasks[task].run)


def check(queue: str, raw: bytes) -> None:
    """Raise BadMessage unless a refundq worker can run this item from this queue."""
    message = parse(raw, max_bytes=INTERNAL_MAX_BYTES)
    allowed = _queue_tasks().get(queue, frozenset())
    if message.task not in allowed:
        raise BadMessage(f"task {safe_text(message.task)!r} does not run from queue {queue}", message.task)
    try:
        _signature(message.task).bind(*message.args, **message.kwargs)
    except TypeError as exc:
        raise BadMessage(f"arguments do not fit {message.task}: {exc}", message.task) from None


def quarantine_record(queue: str, raw: bytes, reason: str) -> str:
    return json.dumps({"queue": queue, "reason": reason, "raw": base64.b64encode(raw).decode("ascii")})


class Channel(kombu_redis.Channel):
    def _admit(self, queue: str, item: bytes) -> Any:
        """kombu's payload for an item that passes the gate; None after quarantining one that fails."""
        try:
            check(queue, item)
            return loads(bytes_to_str(item))
        except BadMessage as exc:
            reason = exc.reason
        except Exception as exc:  # the gate itself must not be what stops the worker
            reason = f"unreadable: {type(exc).__name__}"
        from config.settings import get_settings
        from worker.intake import quarantine_key

        with self.conn_or_acquire() as client:
            client.lpush(quarantine_key(get_settings().redis_prefix), quarantine_record(queue, item, reason))
        log.warning("message_quarantined", queue=queue, reason=reason, size=len(item))
        return None

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
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
