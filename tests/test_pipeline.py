"""End to end on the real broker: a real Celery worker process and dispatcher, the sandbox over
loopback HTTP, PostgreSQL and SQLite. Every refund reaches a final status and the sandbox
ledger shows each created exactly once, timeouts-after-commit included."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import TEST_REDIS_URL, make_runtime
from worker import store
from worker.db import get_engine
from worker.demo import own_payment
from worker.producer import enqueue_refund

pytestmark = pytest.mark.integration

FINAL = {"completed", "failed", "rejected", "needs_attention", "cancelled"}
# scenario cents -> the final status refundq must reach (sandbox/core.py Scenario)
COBO_EXPECTED = {
    0: "completed",
    51: "failed",
    52: "needs_attention",  # PartiallyCompleted, then its (short, in tests) deadline passes
    54: "completed",  # 429 first, then accepted
    55: "completed",  # 500 first: unknown -> lookup finds nothing -> resend
    56: "completed",  # timeout after commit: unknown -> lookup adopts, no resend
    58: "rejected",
}
FAST_STACK = {"partial_deadline_hours": 0.001}


def cobo(i: int, code: int, run: str) -> dict[str, Any]:
    return own_payment(
        {
            "idempotency_key": f"{run}-{i}",
            "provider": "cobo",
            "account": "cobo-sandbox",
            "amount": str(Decimal(10 + i % 90) + Decimal(code) / 100),
            "currency": "ETH_USDT",
            "destination": "0x" + f"{i:040x}",
            "fields": {},
        }
    )


def clean(url: str) -> None:
    if url.startswith("postgresql"):
        with get_engine(url).begin() as conn:
            conn.execute(text("TRUNCATE refund_event, rejected_intake, refund, payment CASCADE"))


def wait_final(rt: Any, ids: list[str], timeout: float, stack: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stack.assert_alive()
        with rt.engine.connect() as conn:
            refunds = {i: store.get_refund(conn, i) for i in ids}
        if all(r is not None and r.status in FINAL for r in refunds.values()) or time.monotonic() > deadline:
            return refunds
        time.sleep(0.5)


@pytest.mark.parametrize(("database", "n"), [("postgresql", 200), ("sqlite", 42)])
def test_cobo_refunds_reach_final_status_created_exactly_once(
    database: str, n: int, stack_factory: Any, sandbox: Any, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url" if database == "postgresql" else "sqlite_url")
    clean(url)
    stack = stack_factory(url, **FAST_STACK)
    stack.start_worker()
    stack.start_dispatcher()
    rt = make_runtime(url, sandbox.accounts_file)
    run = f"e2e-{database}-{time.time_ns()}"
    codes = list(COBO_EXPECTED)
    requests = [cobo(i, codes[i % len(codes)], run) for i in range(n)]
    ids = [enqueue_refund(r, rt).refund.id for r in requests]

    refunds = wait_final(rt, ids, timeout=90, stack=stack)

    not_final = {i: r.status for i, r in refunds.items() if r.status not in FINAL}
    assert not not_final, f"not final after 90 s: {Counter(not_final.values())}"
    for i, refund_id in enumerate(ids):
        expected = COBO_EXPECTED[codes[i % len(codes)]]
        assert refunds[refund_id].status == expected, (codes[i % len(codes)], refunds[refund_id])
    ledger = {e["refund_key"]: e for e in sandbox.ledger()["refunds"] if e["provider"] == "cobo"}
    created = [i for i in ids if refunds[i].status != "rejected"]
    assert set(ledger) == set(created)  # request_id = refundq's id
    assert all(e["created"] == 1 for e in ledger.values()), [e for e in ledger.values() if e["created"] != 1]
    # The timeout-after-commit refunds were adopted by lookup, never sent twice.
    hung = [i for k, i in enumerate(ids) if codes[k % len(codes)] == 56]
    with rt.engine.connect() as conn:
        for refund_id in hung:
            reasons = [e["reason"] or "" for e in store.events(conn, refund_id)]
            assert any("outcome unknown" in r for r in reasons), reasons
            assert any("lookup found the refund" in r for r in reasons), reasons


PLAIN_CELERY_PRODUCER = """
import json, sys
from celery import Celery
app = Celery(broker=sys.argv[1])
for payload in json.loads(sys.argv[2]):
    app.send_task("refundq.intake", args=[payload], queue="refundq.intake")
assert "worker" not in sys.modules and "providers" not in sys.modules
"""


def test_intake_from_a_plain_celery_client(stack_factory: Any, sandbox: Any, pg_url: str) -> None:
    """Door (b): a backend with nothing but celery sends refundq.intake; valid ones are persisted,
    submitted and reach a final status; an invalid one is recorded, not dropped; repeats are one."""
    clean(pg_url)
    stack = stack_factory(pg_url)
    stack.start_worker()
    stack.start_dispatcher()
    run = f"intake-{time.time_ns()}"
    good = [cobo(i, 0, run) for i in range(3)]
    bad = {**cobo(99, 0, run), "amount": "-1.00"}
    payloads = [*good, good[0], bad]  # good[0] twice: one refund
    subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_CELERY_PRODUCER, TEST_REDIS_URL, json.dumps(payloads)],
        check=True,
        timeout=30,
        cwd="/",
    )
    rt = make_runtime(pg_url, sandbox.accounts_file)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stack.assert_alive()
        with rt.engine.connect() as conn:
            found = [store.get_by_key(conn, p["idempotency_key"]) for p in good]
            rejected = store.rejected_intakes(conn, bad["idempotency_key"])
        if all(f is not None and f.status in FINAL for f in found) and rejected:
            break
        time.sleep(0.5)
    assert [f.status if f else None for f in found] == ["completed"] * 3
    assert len(rejected) == 1 and "amount: must be greater than zero" in rejected[0]["reasons"]
    with rt.engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM refund")).scalar_one()
    assert count == 3
    ledger = sandbox.ledger()["refunds"]
    assert sorted(e["created"] for e in ledger) == [1, 1, 1]
