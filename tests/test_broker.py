"""The gate in front of Celery's consumer (worker/broker.py): what may run from which queue."""

from __future__ import annotations

import hashlib
import inspect

import pytest
from kombu.transport import redis as kombu_redis

from tests import messages
from worker.broker import check
from worker.envelope import BadMessage


def test_kombu_brpop_read_is_the_one_the_gate_copies() -> None:
    """worker/broker.py's `_brpop_read` is kombu 5.7's plus the gate. A kombu upgrade that changes
    kombu's must be reviewed (and the copy updated), not silently left unguarded or stale."""
    source = inspect.getsource(kombu_redis.Channel._brpop_read)
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "c42518699709f2df90f55a048fe6346612ae5527e5c4a6819f2c0920dc62088f"
    ), "kombu's Channel._brpop_read changed: port the change into worker/broker.py, then update this hash"


@pytest.mark.parametrize(
    ("queue", "raw"),
    [
        ("refundq.submit", messages.v2("refundq.submit", ["rf_1"], {})),
        ("refundq.submit", messages.v2("refundq.submit_many", [["rf_1", "rf_2"]], {})),
        ("refundq.poll", messages.v2("refundq.poll", [["rf_1"]], {})),
        ("refundq.poll", messages.v2("refundq.reconcile", [], {})),
        ("refundq.poll", messages.v2("refundq.dispatch", [], {})),
    ],
)
def test_refundqs_own_messages_pass(queue: str, raw: bytes) -> None:
    check(queue, raw)


@pytest.mark.parametrize(
    ("queue", "raw", "reason"),
    [
        ("refundq.submit", messages.v2("refundq.poll", [["rf_1"]], {}), "does not run from queue refundq.submit"),
        ("refundq.poll", messages.v2("refundq.intake", [{}], {}), "does not run from queue refundq.poll"),
        ("refundq.submit", messages.v2("refundq.submit", [], {}), "arguments do not fit"),
        ("refundq.submit", messages.v2("refundq.submit", ["a", "b"], {}), "arguments do not fit"),
        ("refundq.submit", messages.v2("refundq.submit", ["a"], {"x": 1}), "arguments do not fit"),
        ("refundq.submit", messages.KILLERS["body is an object"], "protocol 2 body"),
        ("refundq.submit", b"x" * (1024 * 1024 + 1), "limit"),
        ("celery", messages.v2("refundq.submit", ["rf_1"], {}), "does not run from queue celery"),
    ],
)
def test_everything_else_is_refused_with_a_reason(queue: str, raw: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        check(queue, raw)
