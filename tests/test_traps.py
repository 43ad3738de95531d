"""Each Celery + Redis trap on its own (CELERY-PITFALLS.md), against real worker processes, the
real broker (this run's own Redis database), PostgreSQL and the sandbox over loopback HTTP.

Waits are generous and bounded: the machine has 2 cores and other work on it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import text

from tests.conftest import TEST_REDIS_URL, make_runtime
from worker import store
from worker.chaos import chaos_requests
from worker.db import get_engine
from worker.engine import Engine, publish
from worker.models import utcnow
from worker.producer import enqueue_refund

pytestmark = pytest.mark.integration

FINAL = {"completed", "failed", "rejected", "needs_attention", "cancelled"}
# A send lease of seconds, so a killed worker's refund is due again quickly. check_invariants:
# lease > task_time_limit > task_soft_time_limit > connect + read timeouts, and
# lease > throttle_giveback + lane_wait + nonce wait (0.5) + connect + read + lease_margin.
QUICK_STOP = {"worker_soft_shutdown_timeout": 2.0}  # teardown: idle workers stop in seconds
SHORT_LEASE = {
    **QUICK_STOP,
    "http_connect_timeout": 1,
    "http_read_timeout": 1,
    "throttle_giveback": 0.5,
    "lane_wait": 0.5,
    "lease_margin": 1.0,
    "task_soft_time_limit": 3,
    "task_time_limit": 4,
    "lease_seconds": 5,
}


def normal(n: int, run: str, providers: tuple[str, ...] = ("cobo",)) -> list[dict[str, Any]]:
    """n refunds with no fault scenario, for the given providers only."""
    out = [r for i, r in enumerate(chaos_requests(44 * n, run)) if (i // 4) % 11 < 5 and r["provider"] in providers]
    return out[:n]


def clean(url: str) -> None:
    with get_engine(url).begin() as conn:
        conn.execute(text("TRUNCATE refund_event, rejected_intake, refund, payment CASCADE"))


def statuses(rt: Any, ids: list[str]) -> dict[str, str]:
    with rt.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status FROM refund")).all()
    wanted = set(ids)
    return {r.id: r.status for r in rows if r.id in wanted}


def wait_for(what: str, predicate: Any, timeout: float, stack: Any | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if stack is not None:
            stack.assert_alive()
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f}s"
        time.sleep(0.3)


def all_final(rt: Any, ids: list[str]) -> bool:
    found = statuses(rt, ids)
    return len(found) == len(ids) and all(s in FINAL for s in found.values())


def reasons(rt: Any, refund_id: str) -> list[str]:
    with rt.engine.connect() as conn:
        return [e["reason"] or "" for e in store.events(conn, refund_id)]


def assert_each_sent_once(sandbox: Any) -> list[dict[str, Any]]:
    ledger = sandbox.ledger()["refunds"]
    twice = [e for e in ledger if e["created"] != 1 or e["create_calls"] != 1]
    assert not twice, twice
    return list(ledger)


def test_kill_between_answer_and_commit_adopts_by_lookup(stack_factory: Any, sandbox: Any, pg_url: str) -> None:
    """A worker dies after the provider accepted (os._exit right after the answer): the row stays
    `submitting`; after the lease the dispatcher moves it to `unknown`, a healthy worker looks it
    up, finds it and adopts it. The provider sees one create call per refund."""
    clean(pg_url)
    stack = stack_factory(pg_url, **SHORT_LEASE)
    rt = make_runtime(pg_url, sandbox.accounts_file, **SHORT_LEASE)
    killer = stack.children.refundq(
        "killer",
        ["worker", "-c", "4", "-n", f"killer-{os.getpid()}@%h", "--loglevel", "WARNING"],
        {**stack.env, "REFUNDQ_CHAOS_KILL_AFTER_SEND": "1"},
    )
    ids = [enqueue_refund(r, rt).refund.id for r in chaos_requests(4, f"kill-{time.time_ns()}")]
    wait_for("the killer worker dies after its first answer", lambda: killer.poll() is not None, 60)
    assert killer.returncode == 1
    stack.children.procs.pop("killer")
    accepted = {e["provider"] for e in sandbox.ledger()["refunds"]}
    assert accepted, "the provider accepted nothing before the kill"
    provider_of = {r: store_provider(rt, r) for r in ids}
    adopted = [r for r in ids if provider_of[r] in accepted]
    assert set(statuses(rt, adopted).values()) == {"submitting"}  # the answer was never recorded

    stack.start_worker("w1")
    stack.start_dispatcher()
    wait_for("all final", lambda: all_final(rt, ids), 90, stack)

    assert set(statuses(rt, ids).values()) == {"completed"}
    assert len(assert_each_sent_once(sandbox)) == 4
    for refund_id in adopted:
        why = reasons(rt, refund_id)
        assert any("send lease expired" in r for r in why), why
        assert any("lookup found the refund at the provider" in r for r in why), why
        assert sum("claimed for send" in r for r in why) == 1, why


def store_provider(rt: Any, refund_id: str) -> str:
    with rt.engine.connect() as conn:
        refund = store.get_refund(conn, refund_id)
    assert refund is not None
    return refund.provider


def test_redis_flushed_mid_run_every_refund_final(stack_factory: Any, sandbox: Any, pg_url: str) -> None:
    """FLUSHDB while refunds are queued, in flight and being polled: the DB is the truth, the
    dispatcher sends the work again; all final, none created or sent twice."""
    clean(pg_url)
    sandbox.configure(step_seconds=1.0)
    fast = {**SHORT_LEASE, "partial_deadline_hours": 0.001}  # a partial refund goes to an operator in 3.6 s
    stack = stack_factory(pg_url, **fast)
    stack.start_worker("w1")
    stack.start_dispatcher()
    rt = make_runtime(pg_url, sandbox.accounts_file, **fast)
    ids = [enqueue_refund(r, rt).refund.id for r in chaos_requests(44, f"flush-{time.time_ns()}")]
    wait_for(
        "some refunds past queued",
        lambda: sum(s != "queued" for s in statuses(rt, ids).values()) >= 4,
        60,
        stack,
    )
    redis = Redis.from_url(TEST_REDIS_URL)
    open_at_flush = sum(s not in FINAL for s in statuses(rt, ids).values())
    redis.flushdb()
    redis.set("refundq-test-owner", str(os.getpid()), ex=3600)  # keep this run's claim on the database
    assert open_at_flush > 0, "everything was final before the flush: the test proved nothing"

    wait_for("all final after the flush", lambda: all_final(rt, ids), 100, stack)
    assert_each_sent_once(sandbox)


def test_duplicate_submit_messages_send_once(stack_factory: Any, sandbox: Any, pg_url: str) -> None:
    """Re-publish refundq.submit for refunds in flight and for finished ones: one create call each."""
    clean(pg_url)
    stack = stack_factory(pg_url, **QUICK_STOP)
    stack.start_worker("w1")
    stack.start_dispatcher()
    rt = make_runtime(pg_url, sandbox.accounts_file)
    ids = [enqueue_refund(r, rt).refund.id for r in chaos_requests(8, f"dup-{time.time_ns()}")]
    for _ in range(3):  # while they are queued / in flight
        publish(ids, [])
    wait_for("all final", lambda: all_final(rt, ids), 90, stack)
    for _ in range(3):  # after they finished
        publish(ids, [])
    redis = Redis.from_url(TEST_REDIS_URL)
    wait_for("the duplicates consumed", lambda: redis.llen("refundq.submit") == 0, 30, stack)
    time.sleep(1.0)  # the last ones taken off the list finish their (no-op) run
    assert set(statuses(rt, ids).values()) <= FINAL
    assert len(assert_each_sent_once(sandbox)) == 8, {i: (statuses(rt, ids)[i], reasons(rt, i)) for i in ids}
    for refund_id in ids:
        why = reasons(rt, refund_id)
        assert sum("claimed for send" in r for r in why) == 1, why


def _messages(redis: Redis) -> list[dict[str, Any]]:
    """Every Celery message in the broker: waiting in the queue lists, or delivered and unacked."""
    raw: list[Any] = []
    for queue in ("refundq.submit", "refundq.poll"):
        raw += redis.lrange(queue, 0, -1)
    raw += list(redis.hgetall("unacked").values())
    out = []
    for item in raw:
        payload = json.loads(item)
        message = payload[0] if isinstance(payload, list) else payload  # unacked: [message, exchange, key]
        out.append(message)
    return out


def test_polling_schedule_lives_in_the_database(stack_factory: Any, sandbox: Any, pg_url: str) -> None:
    """No message carries an ETA or countdown (they would be redelivered past the visibility
    timeout); the next poll is `next_action_at` in the refund row, and the dispatcher publishes
    poll work only when it is due."""
    clean(pg_url)
    sandbox.configure(step_seconds=4.0)  # pending, then processing: polled for ~8 s
    stack = stack_factory(pg_url, poll_initial=1.0, poll_max=1.0, **QUICK_STOP)
    stack.start_worker("w1")
    stack.start_dispatcher()
    rt = make_runtime(pg_url, sandbox.accounts_file)
    requests = normal(4, f"eta-{time.time_ns()}")
    ids = [enqueue_refund(r, rt).refund.id for r in requests]
    wait_for("accepted", lambda: set(statuses(rt, ids).values()) <= {"pending", "processing"}, 60, stack)

    redis = Redis.from_url(TEST_REDIS_URL)
    seen: list[dict[str, Any]] = []
    end = time.monotonic() + 3.0
    while time.monotonic() < end:  # while the worker polls them
        seen += _messages(redis)
        time.sleep(0.05)
    stack.children.stop("w1")  # now poll work piles up in the list, due by the DB schedule only
    time.sleep(3.0)
    seen += _messages(redis)
    polls = [m for m in seen if m["headers"].get("task") == "refundq.poll"]
    assert polls, "no poll message observed"
    for m in seen:
        assert m["headers"].get("eta") is None and m["headers"].get("countdown") is None, m["headers"]
    with rt.engine.connect() as conn:
        rows = [store.get_refund(conn, i) for i in ids]
    now = utcnow()
    for refund in rows:
        assert refund is not None and refund.status in ("pending", "processing")
        assert refund.polls >= 1 and refund.next_action_at is not None
        assert refund.next_action_at < now + timedelta(seconds=rt.settings.lease_seconds + 5)


def test_two_dispatchers_poll_each_due_refund_once(stack_factory: Any, sandbox: Any, pg_url: str) -> None:
    """Two dispatchers that are BOTH leaders (different lease keys: the lease bypassed) claim the same
    due rows: each due refund is polled exactly once (sandbox status reads per refund)."""
    clean(pg_url)
    sandbox.configure(step_seconds=600.0)  # stays Pending
    # After one poll the next is >= 100 s away; no reconciliation round (it reads statuses too).
    slow_polls = {"poll_initial": 200.0, "poll_max": 200.0, "reconcile_interval": 0}
    rt = make_runtime(pg_url, sandbox.accounts_file, **slow_polls)
    requests = normal(8, f"two-{time.time_ns()}")
    ids = []
    engine = Engine(rt)
    for r in requests:
        refund_id = enqueue_refund(r, rt).refund.id  # nothing consumes the submit yet
        assert engine.submit(refund_id) == "pending"
        ids.append(refund_id)
    with rt.engine.begin() as conn:  # all due now
        conn.execute(text("UPDATE refund SET next_action_at = :now"), {"now": utcnow()})
    Redis.from_url(TEST_REDIS_URL).delete("refundq.submit")  # the (no-op) submits of the enqueue

    stack = stack_factory(pg_url, **slow_polls, **QUICK_STOP)
    stack.start_worker("w1")
    stack.start_dispatcher("d1")
    stack.children.refundq("d2", ["dispatcher"], {**stack.env, "REFUNDQ_REDIS_PREFIX": f"other-{os.getpid()}"})

    def reads() -> dict[str, int]:
        counters = sandbox.ledger()["counters"]
        return {i: counters.get(f"cobo:status_reads:{i}", 0) for i in ids}

    wait_for("every refund polled", lambda: all(n >= 1 for n in reads().values()), 60, stack)
    time.sleep(3.0)  # six more ticks of each dispatcher
    counts = reads()
    assert all(n == 1 for n in counts.values()), counts
    with rt.engine.connect() as conn:
        polls = [r.polls for r in (store.get_refund(conn, i) for i in ids) if r is not None]
    assert polls == [1] * len(ids)


def test_leader_lease_one_holder() -> None:
    from worker.dispatcher import LeaderLease

    redis = Redis.from_url(TEST_REDIS_URL)
    key = f"lease-test-{os.getpid()}"
    a, b = LeaderLease(redis, key, 2000), LeaderLease(redis, key, 2000)
    try:
        assert a.hold() and not b.hold() and a.hold()
        a.release()
        assert b.hold() and not a.hold()
    finally:
        redis.delete(key)


def test_sigterm_hands_work_back_within_seconds(stack_factory: Any, sandbox: Any, pg_url: str) -> None:
    """SIGTERM a worker while sends are in flight (each provider call takes 1.5 s): it finishes them
    (soft shutdown) and gives the rest back to Redis; a second worker, with no dispatcher running,
    accepts every refund within seconds — not after the visibility timeout or the lease."""
    clean(pg_url)
    sandbox.configure(latency_seconds=1.5)
    stack = stack_factory(pg_url, http_read_timeout=4.0, worker_soft_shutdown_timeout=6.0, publish_grace=600.0)
    stack.start_worker("w1", concurrency=2)
    rt = make_runtime(pg_url, sandbox.accounts_file)
    requests = normal(12, f"term-{time.time_ns()}", ("cobo", "coinvoyage"))
    ids = [enqueue_refund(r, rt).refund.id for r in requests]
    wait_for("sends in flight", lambda: "submitting" in statuses(rt, ids).values(), 60, stack)

    w1 = stack.children.procs["w1"]
    started = time.monotonic()
    os.kill(w1.pid, signal.SIGTERM)
    w1.wait(timeout=30)
    stopped_in = time.monotonic() - started
    stack.children.procs.pop("w1")
    assert stopped_in < 20, f"the worker took {stopped_in:.1f}s to stop"
    left = statuses(rt, ids)
    assert "submitting" not in left.values(), left  # nothing stranded mid-send

    stack.start_worker("w2", concurrency=8)
    accepted = {"pending", "processing", "completed"}
    wait_for("every refund accepted by w2", lambda: set(statuses(rt, ids).values()) <= accepted, 60, stack)
    assert_each_sent_once(sandbox)
