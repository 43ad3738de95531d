"""Operator actions with one rule (worker/actions.py, worker/operator.py, batch retry): a new send
for an old refund only when the provider's own answer proves nothing was paid. Against the sandbox
over HTTP: its ledger counts every record a provider created."""

from __future__ import annotations

import time
from typing import Any

import pytest

from providers.base import RefundStatus as S
from tests.conftest import make_runtime
from tests.test_intake import cobo
from worker import store
from worker.batch import enqueue_batch, get_batch, retry
from worker.engine import Engine


@pytest.fixture
def rt(sandbox: Any, sqlite_url: str) -> Any:
    return make_runtime(sqlite_url, sandbox.accounts_file)


def drive(rt: Any, refund_id: str, until: set[S], timeout: float = 15.0) -> Any:
    """Do what the dispatcher and workers would, in this thread, until the refund is in `until`."""
    engine = Engine(rt)
    deadline = time.monotonic() + timeout
    while True:
        with rt.engine.connect() as conn:
            refund = store.get_refund(conn, refund_id)
        assert refund is not None
        status = S(refund.status)
        if status in until:
            return refund
        assert time.monotonic() < deadline, f"{refund_id} stuck in {status}"
        if status in (S.QUEUED, S.UNKNOWN):
            engine.submit(refund_id)
        elif status in (S.PENDING, S.PROCESSING, S.ACTION_REQUIRED, S.PARTIALLY_COMPLETED):
            engine.poll_one(refund_id)
        time.sleep(0.2)


def drive_all_queued(rt: Any) -> None:
    with rt.engine.connect() as conn:
        queued = [r.id for r in store.list_refunds(conn, status="queued", limit=1000)]
    for refund_id in queued:
        drive(rt, refund_id, {S.COMPLETED, S.FAILED, S.REJECTED, S.NEEDS_ATTENTION})


def records(sandbox: Any) -> list[dict[str, Any]]:
    return sorted(sandbox.ledger()["refunds"], key=lambda e: e["refund_key"])


def test_batch_retry_never_pays_a_held_refund_twice(rt: Any, sandbox: Any) -> None:
    """Scenario 57: Cobo answers an undocumented status ("Frozen"): needs_attention, the provider
    holds the refund. Old code: `batch retry --status needs_attention` made a new refund with a new
    request_id, and the provider paid it a second time."""
    bid = enqueue_batch([cobo(f"held-{time.time_ns()}", "12.57")], rt=rt, publish=False).batch.id
    with rt.engine.connect() as conn:
        (held,) = store.list_refunds(conn, batch_id=bid)
    held = drive(rt, held.id, {S.NEEDS_ATTENTION})
    assert held.provider_status == "Frozen"
    before = records(sandbox)
    assert [(e["refund_key"], e["created"]) for e in before] == [(held.id, 1)]
    out = retry(bid, "needs_attention", rt=rt, publish=False)
    drive_all_queued(rt)  # whatever retry queued is sent, as the workers would
    after = records(sandbox)
    assert [(e["refund_key"], e["created"]) for e in after] == [(held.id, 1)], "the provider paid it twice"
    assert out.retried == 0 and out.batch is None
    assert len(out.skipped) == 1 and out.skipped[0].startswith(f"{held.id}: needs_attention")
    assert "status 'Frozen'" in out.skipped[0] and f"refundq refund resolve {held.id}" in out.skipped[0]


def test_batch_retry_cli_lists_the_refusal(rt: Any, sandbox: Any) -> None:
    from typer.testing import CliRunner

    from worker.cli import app
    from worker.runtime import set_runtime

    bid = enqueue_batch([cobo(f"cli-{time.time_ns()}", "12.57")], rt=rt, publish=False).batch.id
    with rt.engine.connect() as conn:
        (held,) = store.list_refunds(conn, batch_id=bid)
    drive(rt, held.id, {S.NEEDS_ATTENTION})
    set_runtime(rt)
    try:
        out = CliRunner().invoke(app, ["batch", "retry", bid, "--status", "needs_attention", "--by", "carol"])
    finally:
        set_runtime(None)
    assert out.exit_code == 0, out.output
    assert f"not retried: {held.id}: needs_attention" in out.output and "nothing to retry" in out.output
    assert len(records(sandbox)) == 1


def test_absent_needs_attention_resolved_failed_then_retried_once(sandbox: Any, sqlite_url: str) -> None:
    """Scenario 54 with max_attempts 1: the only create was refused with 429 (nothing created),
    then "gave up": needs_attention that the provider does not hold. A fresh lookup proves it
    absent, so resolve --as failed is allowed, and then exactly one new send, under the old
    request_id (Cobo would refuse a second payment of it)."""
    from worker.operator import ActionRefused, resolve
    from worker.operator import retry as retry_one

    rt = make_runtime(sqlite_url, sandbox.accounts_file, max_attempts=1)
    from worker.producer import persist

    old, _ = persist(cobo(f"absent-{time.time_ns()}", "12.54"), rt)
    old = drive(rt, old.id, {S.NEEDS_ATTENTION})
    assert old.attempts == 1
    assert records(sandbox) == []
    with pytest.raises(ActionRefused, match=r"needs_attention — .* resolve it first"):
        retry_one(rt, old.id, by="alice")
    done = resolve(rt, old.id, S.FAILED, by="alice", note="ticket 42: Cobo shows nothing")
    assert "no such refund" in done.reason
    with rt.engine.connect() as conn:
        resolved = store.get_refund(conn, old.id)
        reasons = [e["reason"] or "" for e in store.events(conn, old.id)]
    assert resolved is not None and resolved.status == "failed"
    assert resolved.detail["resolution"] == {
        "as": "failed",
        "by": "alice",
        "note": "ticket 42: Cobo shows nothing",
        "forced": False,
        "seen": "absent",
    }
    assert any(r.startswith("operator-resolved as failed by alice: ticket 42") for r in reasons)
    assert any(r.startswith("retry by alice refused") for r in reasons)  # the refused action is an event too
    new = retry_one(rt, old.id, by="alice", note="customer asked again", publish=False)
    with pytest.raises(ActionRefused, match="already retried"):
        retry_one(rt, old.id, by="alice")
    rt.settings.max_attempts = 8
    final = drive(rt, new.refund_id, {S.COMPLETED, S.FAILED, S.REJECTED, S.NEEDS_ATTENTION})
    assert final.status == "completed" and final.retry_of == old.id
    (entry,) = records(sandbox)
    assert (entry["refund_key"], entry["created"], entry["create_calls"]) == (old.id, 1, 1)
    with rt.engine.connect() as conn:
        old_reasons = [e["reason"] or "" for e in store.events(conn, old.id)]
    assert any(r.startswith(f"retried as {new.refund_id} by alice") for r in old_reasons)


def test_cobo_retry_after_provider_failed_gets_a_request_id_of_its_own(rt: Any, sandbox: Any) -> None:
    """Scenario 51: Cobo reports Failed and keeps that record under the request_id. The rule allows
    a retry; sent under the old id, Cobo would refuse it as a duplicate forever, so it is sent under
    its own: two records, each created once (the sandbox fails the retry too: same cents)."""
    bid = enqueue_batch([cobo(f"failed-{time.time_ns()}", "12.51")], rt=rt, publish=False).batch.id
    with rt.engine.connect() as conn:
        (old,) = store.list_refunds(conn, batch_id=bid)
    old = drive(rt, old.id, {S.FAILED})
    out = retry(bid, "failed", rt=rt, publish=False)
    assert out.retried == 1 and out.skipped == [] and out.batch is not None and out.batch.total == 1
    with rt.engine.connect() as conn:
        (new,) = store.list_refunds(conn, batch_id=out.batch.id)
    assert "request_id_of" not in new.detail and new.retry_of == old.id
    final = drive(rt, new.id, {S.COMPLETED, S.FAILED, S.REJECTED, S.NEEDS_ATTENTION})
    keys = sorted((e["refund_key"], e["created"], e["create_calls"]) for e in records(sandbox))
    assert keys == sorted([(old.id, 1, 1), (new.id, 1, 1)])
    assert final.status == "failed" and final.provider_refund_id != old.provider_refund_id
    with rt.engine.connect() as conn:
        assert get_batch(conn, out.batch.id).finished_at is not None  # type: ignore[union-attr]


def test_resolve_failed_is_refused_while_the_provider_holds_it(rt: Any, sandbox: Any) -> None:
    """A refund the provider holds (here: accepted, then handed to an operator, as a deadline
    would) cannot be resolved failed; completed once the provider reports it completed."""
    from worker.operator import ActionRefused, resolve
    from worker.operator import retry as retry_one
    from worker.producer import persist

    refund, _ = persist(cobo(f"hold-{time.time_ns()}", "12.00"), rt)
    refund = drive(rt, refund.id, {S.PENDING, S.PROCESSING, S.COMPLETED})
    with rt.engine.begin() as conn:
        store.transition(conn, refund.id, S(refund.status), S.NEEDS_ATTENTION, reason="deadline passed (test)")
    held = r"the provider holds it as R\w+, status (pending|processing|completed) .* — it may be paid"
    with pytest.raises(ActionRefused, match=held):
        resolve(rt, refund.id, S.FAILED, by="erin", note="looks stuck")
    with pytest.raises(ActionRefused, match="--force is refused with --as failed"):
        resolve(rt, refund.id, S.FAILED, by="erin", note="looks stuck", force=True)
    time.sleep(1.0)  # the sandbox completes it after two steps
    done = resolve(rt, refund.id, S.COMPLETED, by="erin", note="paid on chain")
    assert done.view is not None and done.view.status is S.COMPLETED
    with rt.engine.connect() as conn:
        resolved = store.get_refund(conn, refund.id)
    assert resolved is not None and resolved.status == "completed" and resolved.provider_status == "Completed"
    assert resolved.detail["resolution"]["forced"] is False
    with pytest.raises(ActionRefused, match="completed — the provider paid it"):
        retry_one(rt, refund.id, by="erin")
    assert [e["created"] for e in records(sandbox)] == [1]


def test_resolve_completed_with_force_is_recorded_as_an_override(rt: Any, sandbox: Any) -> None:
    from worker.operator import ActionRefused, resolve
    from worker.producer import persist

    refund, _ = persist(cobo(f"frozen-{time.time_ns()}", "12.57"), rt)
    drive(rt, refund.id, {S.NEEDS_ATTENTION})
    with pytest.raises(ActionRefused, match="no proof that nothing was paid"):
        resolve(rt, refund.id, S.FAILED, by="bob", note="?")
    with pytest.raises(ActionRefused, match="--force records an override"):
        resolve(rt, refund.id, S.COMPLETED, by="bob", note="seen on chain")
    resolve(rt, refund.id, S.COMPLETED, by="bob", note="seen on chain", force=True)
    with rt.engine.connect() as conn:
        resolved = store.get_refund(conn, refund.id)
        reasons = [e["reason"] or "" for e in store.events(conn, refund.id)]
    assert resolved is not None and resolved.status == "completed" and resolved.detail["resolution"]["forced"]
    assert any(r.startswith("operator-resolved as completed (override) by bob: seen on chain") for r in reasons)


def test_cancel_only_before_any_send_then_retry_sends_once(rt: Any, sandbox: Any) -> None:
    from worker.operator import ActionRefused, cancel
    from worker.operator import retry as retry_one
    from worker.producer import persist

    unsent, _ = persist(cobo(f"unsent-{time.time_ns()}", "12.00"), rt)
    cancel(rt, unsent.id, by="fay", note="customer withdrew")
    with pytest.raises(ActionRefused, match="only a queued refund never sent"):
        cancel(rt, unsent.id, by="fay")
    new = retry_one(rt, unsent.id, by="fay", note="customer came back", publish=False)
    drive(rt, new.refund_id, {S.PENDING, S.PROCESSING, S.COMPLETED})
    assert [(e["refund_key"], e["created"]) for e in records(sandbox)] == [(unsent.id, 1)]

    claimed, _ = persist(cobo(f"claimed-{time.time_ns()}", "12.00"), rt)
    with rt.engine.begin() as conn:  # a send claim that ended "not sent": queued again, claim 1
        store.transition(conn, claimed.id, S.QUEUED, S.SUBMITTING, values={"claim": 1})
        store.transition(conn, claimed.id, S.SUBMITTING, S.QUEUED, reason="not sent")
    with pytest.raises(ActionRefused, match="after 1 send claim"):
        cancel(rt, claimed.id, by="fay")
    with pytest.raises(ValueError, match="--by: must not be empty"):
        cancel(rt, claimed.id, by=" ")


def test_batch_retry_pages_and_applies_the_rule_per_refund(sqlite_url: str, tmp_path: Any) -> None:
    """No provider call: statuses walked in the database. Pages of 2: every allowed refund is
    retried once, in one new batch whose total and counters are exact; refused ones are listed."""
    from sandbox.accounts import write_sandbox_accounts

    rt = make_runtime(sqlite_url, write_sandbox_accounts(tmp_path / "acc", "http://127.0.0.1:9"))
    items = [cobo(f"pg-{i}-{time.time_ns()}", "12.00") for i in range(7)]
    bid = enqueue_batch(items, rt=rt, publish=False).batch.id
    with rt.engine.connect() as conn:
        refunds = store.list_refunds(conn, batch_id=bid)
    with rt.engine.begin() as conn:
        for r in refunds[:5]:
            store.transition(conn, r.id, S.QUEUED, S.SUBMITTING)
            store.transition(conn, r.id, S.SUBMITTING, S.FAILED)
        for r in refunds[5:]:
            store.transition(conn, r.id, S.QUEUED, S.SUBMITTING)
            store.transition(conn, r.id, S.SUBMITTING, S.NEEDS_ATTENTION, provider_status="Frozen")
        # a superseded claim of refunds[0] was told "accepted" under another record
        store.add_late_answer(
            conn, refunds[0].id, "claim 1 was taken over", {"outcome": "answer", "raw_status": "Pending"}
        )
    out = retry(bid, ["failed", "needs_attention"], rt=rt, publish=False, by="gus", chunk=2)
    assert out.retried == 4 and out.batch is not None
    assert out.batch.total == 4 and out.batch.counts["queued"] == 4 and out.batch.finished_at is None
    assert sorted(s.split(":")[0] for s in out.skipped) == sorted([refunds[0].id, *(r.id for r in refunds[5:])])
    assert "superseded send was answered 'Pending'" in next(s for s in out.skipped if s.startswith(refunds[0].id))
    again = retry(bid, ["failed", "needs_attention"], rt=rt, publish=False, by="gus", chunk=2)
    assert again.retried == 0 and again.batch is None
