"""Reconciliation (worker/reconcile.py) and the integrity check on every poll (engine.integrity_problems):
drift injected in the sandbox behind refundq's back is found and surfaced in needs_attention with
both versions; reconciliation only reads (the ledger's create calls do not move)."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from providers.base import RefundStatus, StatusResult
from tests.batchrows import row
from tests.conftest import make_runtime
from worker import store
from worker.db import get_engine
from worker.engine import integrity_problems
from worker.models import Refund, utcnow
from worker.producer import enqueue_refund
from worker.reconcile import parse_since

FINAL = {"completed", "failed", "rejected", "needs_attention", "cancelled"}


def refund(**changes: Any) -> Refund:
    now = utcnow()
    base: dict[str, Any] = {
        "id": "rf_1",
        "idempotency_key": "k",
        "provider": "cobo",
        "account": "cobo-sandbox",
        "amount": Decimal("12.5"),
        "currency": "ETH_USDT",
        "destination": "0x" + "ab" * 20,
        "status": "pending",
        "provider_refund_id": "R1",
        "deadline": now,
        "created_at": now,
        "updated_at": now,
    }
    return Refund.model_validate({**base, **changes})


def test_integrity_compares_only_what_the_provider_reports() -> None:
    ok = StatusResult(RefundStatus.PENDING, "Pending", "R1", detail={"amount": "12.50", "currency": "ETH_USDT"})
    assert integrity_problems(refund(), ok) == []
    assert integrity_problems(refund(), StatusResult(RefundStatus.PENDING, "Pending")) == []  # reports nothing
    upper = StatusResult(RefundStatus.PENDING, "x", detail={"destination": "0x" + "AB" * 20})
    assert integrity_problems(refund(), upper) == []  # EVM addresses: case is a checksum, not a difference
    bad = StatusResult(
        RefundStatus.COMPLETED,
        "Completed",
        "R2",
        detail={"amount": "1.00", "destination": "0x" + "cd" * 20, "currency": "TRON_USDT"},
    )
    problems = integrity_problems(refund(), bad)
    assert [p.split(":")[0] for p in problems] == ["amount", "destination", "currency", "provider refund id"]
    assert "requested 12.5, provider reports 1.00" in problems[0]
    garbage = StatusResult(RefundStatus.PENDING, "x", detail={"amount": "twelve"})
    assert integrity_problems(refund(), garbage)


def test_parse_since() -> None:
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("12h") == timedelta(hours=12)
    assert parse_since("30m") == timedelta(minutes=30)
    assert parse_since("2") == timedelta(days=2)
    with pytest.raises(ValueError, match="expected"):
        parse_since("soon")


# --- end to end ---------------------------------------------------------------------------------


def drift(sandbox: Any, provider: str, key: str, **changes: str) -> None:
    r = httpx.post(f"{sandbox.base_url}/_sandbox/drift/{provider}/{key}", json=changes, timeout=5)
    r.raise_for_status()


def ledger_key(r: Refund) -> str:
    # Cobo / CoinVoyage name the refund by refundq's id; CoinCorner and Cryptomus by the order id.
    return r.id if r.provider in ("cobo", "coinvoyage") else str(r.fields["order_id"])


def wait_for(rt: Any, ids: list[str], done: Any, stack: Any, timeout: float) -> dict[str, Refund]:
    deadline = time.monotonic() + timeout
    while True:
        stack.assert_alive()
        with rt.engine.connect() as conn:
            refunds = {i: store.get_refund(conn, i) for i in ids}
        if all(r is not None and done(r) for r in refunds.values()) or time.monotonic() > deadline:
            return {i: r for i, r in refunds.items() if r is not None}
        time.sleep(0.3)


def created_calls(sandbox: Any) -> int:
    return sum(e["create_calls"] for e in sandbox.ledger()["refunds"])


@pytest.fixture
def pg(pg_url: str) -> str:
    with get_engine(pg_url).begin() as conn:
        conn.execute(text("TRUNCATE refund_event, rejected_intake, refund, batch, payment CASCADE"))
    return pg_url


@pytest.mark.integration
def test_reconcile_finds_drift_and_flags_it_with_both_versions(stack_factory: Any, sandbox: Any, pg: str) -> None:
    stack = stack_factory(pg, reconcile_interval=0)
    stack.start_worker()
    stack.start_dispatcher()
    rt = make_runtime(pg, sandbox.accounts_file, reconcile_interval=0)
    run = f"rec-{time.time_ns()}"
    ids = [enqueue_refund(row(i, run, code=0), rt).refund.id for i in range(4)]  # one per provider
    refunds = wait_for(rt, ids, lambda r: r.status in FINAL, stack, 60)
    assert [r.status for r in refunds.values()] == ["completed"] * 4, [r.status for r in refunds.values()]
    by = {r.provider: r for r in refunds.values()}

    drift(sandbox, "cobo", ledger_key(by["cobo"]), amount="1.00")  # amount changed behind our back
    drift(sandbox, "coinvoyage", ledger_key(by["coinvoyage"]), status="FAILED")  # status changed
    drift(sandbox, "cryptomus", ledger_key(by["cryptomus"]), status="refund_fail")
    before = created_calls(sandbox)

    from worker.cli import app
    from worker.runtime import set_runtime

    set_runtime(rt)
    try:
        out = CliRunner().invoke(app, ["reconcile", "--since", "1d"])
    finally:
        set_runtime(None)
    assert out.exit_code == 1, out.output  # 1: drift found
    assert "checked 4: 1 agree, 3 drifted" in out.output, out.output
    assert created_calls(sandbox) == before  # reads only: nothing was sent

    with rt.engine.connect() as conn:
        after = {r.provider: store.get_refund(conn, r.id) for r in by.values()}
        events = {p: store.events(conn, r.id) for p, r in by.items()}
    assert after["coincorner"] is not None and after["coincorner"].status == "completed"
    for provider in ("cobo", "coinvoyage", "cryptomus"):
        r = after[provider]
        assert r is not None and r.status == "needs_attention", (provider, r)
        flagged = [e for e in events[provider] if e["to_status"] == "needs_attention"]
        assert len(flagged) == 1 and flagged[0]["from_status"] == "completed"
        assert any("reconcile: drift" in (e["reason"] or "") for e in events[provider])
        both = r.detail["drift"]
        assert both["ours"]["status"] == "completed" and both["ours"]["amount"] == format(by[provider].amount, "f")
        assert flagged[0]["response"]["drift"] == both
    cobo = after["cobo"]
    assert cobo is not None
    assert cobo.detail["drift"]["provider"]["amount"] == "1.00"
    assert (
        f"requested {format(by['cobo'].amount, 'f')}, provider reports 1.00"
        in (next(e for e in events["cobo"] if e["to_status"] == "needs_attention")["reason"])
    )
    assert after["coinvoyage"] is not None and after["coinvoyage"].detail["drift"]["provider"]["status"] == "failed"
    assert (
        "status: ours completed, provider reports failed (FAILED)" in (after["coinvoyage"].detail["drift"]["problems"])
    )

    from worker.reconcile import reconcile

    again = reconcile(rt, timedelta(days=1))  # idempotent: flagged ones are not flagged twice
    assert again.counts == {"ok": 1}


@pytest.mark.integration
def test_integrity_on_poll_and_scheduled_reconciliation(stack_factory: Any, sandbox: Any, pg: str) -> None:
    """An open refund whose amount drifts is caught by the poll itself; a finished one whose status
    drifts is caught by the reconciliation the dispatcher schedules (reconcile_interval=2 s)."""
    rt = make_runtime(pg, sandbox.accounts_file, reconcile_interval=2)
    rt.redis.delete(f"{rt.settings.redis_prefix}:reconcile:scheduled")  # earlier dispatchers' schedule
    stack = stack_factory(pg, reconcile_interval=2)
    stack.start_worker()
    stack.start_dispatcher()
    run = f"poll-{time.time_ns()}"
    slow_request = {**row(0, run, code=0), "amount": "21.53", "paid_amount": "21.53"}
    slow = enqueue_refund(slow_request, rt).refund  # cobo, 53: slow lifecycle
    done = enqueue_refund(row(2, run, code=0), rt).refund  # coinvoyage, normal
    wait_for(rt, [slow.id], lambda r: r.status in ("pending", "processing"), stack, 30)
    drift(sandbox, "cobo", slow.id, amount="99.00")
    wait_for(rt, [done.id], lambda r: r.status in FINAL, stack, 60)
    drift(sandbox, "coinvoyage", done.id, status="FAILED")

    refunds = wait_for(rt, [slow.id, done.id], lambda r: r.status == "needs_attention", stack, 60)
    assert refunds[slow.id].status == "needs_attention", refunds[slow.id]
    assert refunds[done.id].status == "needs_attention", refunds[done.id]
    integrity = refunds[slow.id].detail["integrity"]
    assert integrity["ours"]["amount"] == "21.53" and integrity["provider"]["amount"] == "99.00"
    with rt.engine.connect() as conn:
        reasons = [e["reason"] or "" for e in store.events(conn, slow.id)]
    assert any(r.startswith("integrity: amount: requested 21.53, provider reports 99.00") for r in reasons), reasons
    assert refunds[done.id].detail["drift"]["provider"]["raw_status"] == "FAILED"


def test_duplicates_from_late_answers_and_from_the_provider_are_drift() -> None:
    """A superseded claim was told another provider id (a late answer), or the provider lists the
    refund twice: reconciliation flags it, naming every id."""
    from worker.reconcile import duplicates

    found = StatusResult(RefundStatus.COMPLETED, "Completed", "R1")
    assert duplicates(refund(), found, []) == []
    assert duplicates(refund(), found, [{"outcome": "answer", "provider_refund_id": "R1"}]) == []
    late = duplicates(refund(), found, [{"outcome": "answer", "provider_refund_id": "R9"}])
    assert late and "R1" in late[0] and "R9" in late[0]
    listed = duplicates(refund(), StatusResult(RefundStatus.COMPLETED, "Completed", "R1", others=("R2",)), [])
    assert listed and "R2" in listed[0]


def test_reconcile_flags_a_refund_whose_superseded_claim_got_another_id(sandbox: Any, sqlite_url: str) -> None:
    from worker.engine import Engine
    from worker.producer import persist
    from worker.reconcile import Reconciler

    rt = make_runtime(sqlite_url, sandbox.accounts_file)
    created, _ = persist(row(0, f"late-dup-{time.time_ns()}", code=0), rt)  # i = 0: cobo
    engine = Engine(rt)
    assert engine.submit(created.id) == "pending"
    with rt.engine.begin() as conn:
        store.add_late_answer(
            conn, created.id, "claim 1 was taken over", {"outcome": "answer", "provider_refund_id": "X"}
        )
    finding = Reconciler(rt).check(created.id)
    assert finding.outcome == "drift" and any("duplicate" in p for p in finding.problems), finding
    with rt.engine.connect() as conn:
        stored = store.get_refund(conn, created.id)
    assert stored is not None and stored.status == "needs_attention"
