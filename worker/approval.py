"""A person's decision on a refund held in `awaiting_approval` (above its account's
approval_threshold, config/account_policy.py): approve (-> queued, due now, submit published) or
deny (-> cancelled, never sent). Each is one guarded transition whose event names who and why;
the decision is also kept in `detail.approval`, which the send-time gate (Engine.submit) reads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog

from providers.base import RefundStatus as S
from worker import store
from worker.models import Refund, utcnow
from worker.runtime import Runtime
from worker.text import CONTROL

log = structlog.get_logger("refundq.approval")

MAX_NAME_CHARS = 100
MAX_NOTE_CHARS = 500
APPROVED = "approved"
DENIED = "denied"


class ApprovalError(ValueError):
    """Nothing was changed; the message is one line saying why."""


def is_approved(refund: Refund) -> bool:
    approval = refund.detail.get("approval")
    return isinstance(approval, dict) and approval.get("decision") == APPROVED


def _text(name: str, value: str | None, limit: int, *, required: bool) -> str | None:
    value = (value or "").strip()
    if not value:
        if required:
            raise ApprovalError(f"{name}: is required")
        return None
    if len(value) > limit:
        raise ApprovalError(f"{name}: must be at most {limit} characters")
    if CONTROL.search(value):
        raise ApprovalError(f"{name}: must not contain control characters")
    return value


def _held(rt: Runtime, refund_id: str, action: str) -> Refund:
    with rt.engine.connect() as conn:
        refund = store.get_refund(conn, refund_id)
    if refund is None:
        raise ApprovalError(f"no refund {refund_id!r}")
    if refund.status != S.AWAITING_APPROVAL.value:
        raise ApprovalError(f"refund {refund_id} is {refund.status}, not awaiting_approval: nothing to {action}")
    return refund


def _decide(rt: Runtime, refund: Refund, to: S, record: dict[str, Any], reason: str, values: dict[str, Any]) -> Refund:
    try:
        with rt.engine.begin() as conn:
            store.transition(
                conn,
                refund.id,
                S.AWAITING_APPROVAL,
                to,
                reason=reason,
                response={"approval": record},
                values={**values, "detail": {**refund.detail, "approval": record}},
            )
            moved = store.get_refund(conn, refund.id)
    except store.LostRace:
        raise ApprovalError(f"refund {refund.id} changed meanwhile; look again (refundq refund show)") from None
    assert moved is not None
    log.info("refund_" + record["decision"], refund_id=refund.id, by=record["by"])
    return moved


def approve(rt: Runtime, refund_id: str, *, by: str, note: str | None = None, publish: bool = True) -> Refund:
    """awaiting_approval -> queued, due now; then publish the submit (if that is lost, the
    dispatcher sends it: the row is due). The deadline starts again from now: time spent waiting
    for a person is not time the provider had."""
    who = _text("by", by, MAX_NAME_CHARS, required=True)
    why = _text("note", note, MAX_NOTE_CHARS, required=False)
    refund = _held(rt, refund_id, "approve")
    record = {"decision": APPROVED, "by": who, "note": why, "at": utcnow().isoformat()}
    span = refund.deadline - refund.created_at
    moved = _decide(
        rt,
        refund,
        S.QUEUED,
        record,
        f"approved by {who}" + (f": {why}" if why else ""),
        {"next_action_at": timedelta(0), "deadline": span},
    )
    if publish:
        from worker.producer import publish_submit

        publish_submit(refund.id, rt)
    return moved


def deny(rt: Runtime, refund_id: str, *, by: str, note: str) -> Refund:
    """awaiting_approval -> cancelled (never sent); its invoice is free for a corrected refund."""
    who = _text("by", by, MAX_NAME_CHARS, required=True)
    why = _text("note", note, MAX_NOTE_CHARS, required=True)
    refund = _held(rt, refund_id, "deny")
    record = {"decision": DENIED, "by": who, "note": why, "at": utcnow().isoformat()}
    return _decide(rt, refund, S.CANCELLED, record, f"denied by {who}: {why}", {"next_action_at": None})
