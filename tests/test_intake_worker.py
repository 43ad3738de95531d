"""Hostile producers against a real worker process on Redis and PostgreSQL: no bytes on any refundq
queue stop it, every intake message leaves exactly one row, and junk never delays good refunds."""

from __future__ import annotations

import copy
import itertools
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests import messages
from tests.conftest import make_runtime
from tests.test_pipeline import FINAL, clean
from worker import store
from worker.demo import demo_requests
from worker.intake import intake_sources

pytestmark = pytest.mark.integration


def valid_requests() -> dict[str, dict[str, Any]]:
    """One valid request per provider, without sandbox scenario markers."""
    out = {r["provider"]: r for r in demo_requests(4)}
    out["coinvoyage"]["fields"]["payorder_id"] = "fuzz-po"
    out["coinvoyage"]["amount"] = "12.00"
    return out


def unique(request: dict[str, Any], n: int) -> dict[str, Any]:
    """A fresh idempotency key and invoice, so each message can make at most one row."""
    request = copy.deepcopy(request)
    key = request.get("idempotency_key")
    request["idempotency_key"] = f"fz{n}-{key}" if isinstance(key, str) else key
    fields = request.get("fields")
    if isinstance(fields, dict):
        for name in ("order_id", "payorder_id", "uuid"):
            if isinstance(fields.get(name), str):
                fields[name] = f"fz{n}-{fields[name]}"
    return request


def table_counts(rt: Any) -> tuple[int, int]:
    with rt.engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM refund")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM rejected_intake")).scalar_one(),
        )


def wait_counts(rt: Any, stack: Any, expected: int, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        stack.assert_alive()
        counts = table_counts(rt)
        if sum(counts) >= expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def no_tracebacks(stack: Any) -> None:
    for log in stack.children.log_dir.glob("*.log"):
        content = log.read_text(errors="replace")
        assert "Traceback" not in content and "Unrecoverable" not in content, f"{log.name}:\n{content[-3000:]}"


@pytest.fixture
def stack(stack_factory: Any, pg_url: str, sandbox: Any) -> Any:
    clean(pg_url)
    rt = make_runtime(pg_url, sandbox.accounts_file)
    queues = [*intake_sources(), "refundq.submit", "refundq.poll", "refundq.poll\x06\x163"]
    rt.redis.delete(*queues, *rt.redis.scan_iter("*:wrongtype:*"))
    made = stack_factory(pg_url)
    made.start_worker()
    made.start_dispatcher()
    made.rt = rt
    return made


def test_no_message_stops_the_worker(stack: Any) -> None:
    """The four shapes that stopped every worker, on the intake queue and on the submit and poll
    queues, and tasks that must not run from intake: the worker lives, records each one, and a
    good refund sent after them reaches its final status."""
    rt = stack.rt
    # Not even lists: a pop from a key of another type fails for every queue of that pop.
    rt.redis.set("refundq.poll\x06\x163", "a producer's SET")
    rt.redis.hset(intake_sources()[1], "a", "producer's HSET")
    killers = list(messages.KILLERS.values())
    wrong_task = [messages.v2("refundq.reconcile", [None], {}), messages.v2("refundq.submit", ["rf_x"], {})]
    for raw in [*killers, *wrong_task]:
        rt.redis.lpush("refundq.intake", raw)
    for queue in ("refundq.submit", "refundq.poll"):
        for raw in [*killers, messages.v2("refundq.intake", [{}], {}), messages.v2("refundq.submit", [1, 2], {})]:
            rt.redis.lpush(queue, raw)
    good = unique(valid_requests()["cobo"], 0)
    rt.redis.lpush("refundq.intake", messages.intake(good))
    expected_rejects = len(killers) + len(wrong_task) + 2 * (len(killers) + 2)
    assert wait_counts(rt, stack, 1 + expected_rejects, 60) == (1, expected_rejects)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with rt.engine.connect() as conn:
            refund = store.get_by_key(conn, good["idempotency_key"])
        if refund is not None and refund.status in FINAL:
            break
        time.sleep(0.5)
    assert refund is not None and refund.status == "completed"
    with rt.engine.connect() as conn:
        queues = dict(conn.execute(text("SELECT queue, count(*) FROM rejected_intake GROUP BY queue")).all())
    assert queues == {"refundq.intake": 6, "refundq.submit": 6, "refundq.poll": 6}
    set_aside = sorted(
        k.decode().split(":wrongtype:")[1].rsplit(":", 1)[0] for k in rt.redis.scan_iter("*:wrongtype:*")
    )
    assert set_aside == sorted(["refundq.poll\x06\x163", intake_sources()[1]])
    stack.assert_alive()
    no_tracebacks(stack)


# --- fuzz ----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["idempotency_key", "provider", "account", "amount", "currency", "destination", "fields", "deadline_hours"]
requests = st.builds(
    lambda provider, changes, drop: (provider, changes, drop),
    st.sampled_from(["cobo", "coincorner", "coinvoyage", "cryptomus"]),
    st.one_of(st.just({}), st.dictionaries(st.sampled_from([*FIELDS, "extra"]), json_values, max_size=2)),
    st.one_of(st.just(None), st.sampled_from(FIELDS)),
)
# (kind, payload): how the message is built is decided when it is pushed, with its number.
shapes = st.one_of(
    st.tuples(st.just("request-v2"), requests),
    st.tuples(st.just("request-v1"), requests),
    st.tuples(st.just("request-nokwargs"), requests),
    st.tuples(st.just("args"), st.tuples(st.lists(json_values, max_size=3), json_values)),
    st.tuples(st.just("task"), st.text(max_size=30)),
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.tuples(st.just("envelope-json"), json_values),
    st.tuples(st.just("body-bytes"), st.binary(max_size=200)),
    st.tuples(st.just("killer"), st.sampled_from(sorted(messages.KILLERS))),
)


def build(kind: str, payload: Any, n: int, base: dict[str, dict[str, Any]]) -> bytes:
    if kind.startswith("request"):
        provider, changes, drop = payload
        request = {**base[provider], **changes}
        if drop:
            request.pop(drop, None)
        request = unique(request, n)
        if kind == "request-v1":
            return messages.v1("refundq.intake", [request], {})
        return messages.v2("refundq.intake", [request], None if kind == "request-nokwargs" else {})
    if kind == "args":
        args, kwargs = payload
        return messages.v2("refundq.intake", args, kwargs)
    if kind == "task":
        return messages.v2(payload, [{}], {})
    if kind == "bytes":
        return bytes(payload)
    if kind == "envelope-json":
        return json.dumps(payload).encode()
    if kind == "body-bytes":
        return messages.envelope(bytes(payload), {"task": "refundq.intake"})
    return messages.KILLERS[payload]


def test_fuzzed_intake_messages_each_leave_one_row(stack: Any) -> None:
    """>= 1,000 generated messages (valid, invalid, malformed envelopes, the known killers) through a
    real worker on PostgreSQL: it stays up, refund rows + rejected rows == messages sent, and its log
    holds no traceback."""
    rt = stack.rt
    base = valid_requests()
    numbers = itertools.count()
    sent: list[bytes] = []

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(shapes, min_size=20, max_size=25))
    def push(batch: list[tuple[str, Any]]) -> None:
        raws = [build(kind, payload, next(numbers), base) for kind, payload in batch]
        rt.redis.lpush("refundq.intake", *raws)
        sent.extend(raws)

    push()
    assert len(sent) >= 1000
    refunds, rejected = wait_counts(rt, stack, len(sent), 120)
    assert refunds + rejected == len(sent), (refunds, rejected, len(sent))
    assert refunds > 50 and rejected > 500  # the generator reaches both outcomes
    assert rt.redis.llen("refundq.intake") == 0
    stack.assert_alive()
    no_tracebacks(stack)


def test_a_worker_that_must_stop_exits_non_zero(stack_factory: Any, pg_url: str, sandbox: Any) -> None:
    """Celery logs "Unrecoverable error" and exits 0, so a supervisor set to restart on failure
    leaves the worker down. A key of Celery's own, clobbered by a producer, is such an error."""
    rt = make_runtime(pg_url, sandbox.accounts_file)
    binding = "_kombu.binding.refundq.submit"
    saved = rt.redis.smembers(binding)
    rt.redis.delete(binding)
    rt.redis.set(binding, "a producer's SET")
    try:
        stack = stack_factory(pg_url)
        stack.start_worker()
        proc = stack.children.procs["w1"]
        assert proc.wait(timeout=60) == 1
        assert "Unrecoverable error" in (stack.children.log_dir / "w1.log").read_text(errors="replace")
    finally:
        rt.redis.delete(binding)
        if saved:
            rt.redis.sadd(binding, *saved)
