"""Door (a): the in-process producer API. Door (b), the `refundq.intake` Celery task, calls
`persist` too, so both doors validate, deduplicate and store exactly alike.

    from worker.producer import enqueue_refund
    result = enqueue_refund({"idempotency_key": "order-575-refund", "provider": "cryptomus", ...})
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from config.account_policy import needs_approval
from config.logging import redact
from config.settings import Settings
from providers import get_adapter
from providers.base import RefundStatus
from worker import ceiling, store
from worker.models import Refund, utcnow
from worker.runtime import Runtime, get_runtime
from worker.validation import RefundRequest, ValidationFailed, check

log = structlog.get_logger("refundq.producer")

# Compared to decide "same request again" vs "conflicting reuse of a key".
COMPARED_FIELDS = ("provider", "account", "amount", "currency", "destination", "fields")


class IdempotencyConflict(ValueError):
    def __init__(self, key: str, refund_id: str, differing: list[str]) -> None:
        self.key, self.refund_id, self.differing = key, refund_id, differing
        super().__init__(
            redact(f"idempotency key {key!r} already names refund {refund_id} with different {', '.join(differing)}")
        )


@dataclass(frozen=True)
class EnqueueResult:
    refund: Refund
    created: bool  # False: the key already named this refund (a safe repeat)
    published: bool  # False: stored and accepted; the dispatcher will deliver it

    @property
    def message(self) -> str:
        if not self.created:
            return f"refund {self.refund.id} already exists for this key ({self.refund.status})"
        if self.refund.status == RefundStatus.AWAITING_APPROVAL:
            return f"refund {self.refund.id} accepted, awaiting approval (amount above the account's threshold)"
        if not self.published:
            return f"refund {self.refund.id} accepted, queued for delivery"
        return f"refund {self.refund.id} accepted"


def new_refund_id() -> str:
    return "rf_" + uuid.uuid4().hex


def differing_fields(existing: Refund, request: RefundRequest) -> list[str]:
    return [f for f in COMPARED_FIELDS if getattr(existing, f) != getattr(request, f)]


def refund_values(request: RefundRequest, rt: Runtime, *, batch_id: str | None = None) -> dict[str, Any]:
    refund_id = new_refund_id()
    account = rt.accounts.get(request.account)
    adapter, spec = get_adapter(request.provider), request.spec(refund_id)
    return refund_row(
        refund_id,
        request,
        exclusive_key=adapter.exclusive_key(spec),
        payment_key=adapter.payment_key(spec),
        settings=rt.settings,
        now=utcnow(),
        batch_id=batch_id,
        awaiting_approval=account is not None and needs_approval(account, request.amount, request.currency),
    )


def refund_row(
    refund_id: str,
    request: RowSource,
    *,
    exclusive_key: str | None,
    payment_key: str,
    settings: Settings,
    now: datetime,
    batch_id: str | None = None,
    awaiting_approval: bool = False,
) -> dict[str, Any]:
    """The one definition of a new refund row (producers and batch imports alike)."""
    hours = request.deadline_hours or settings.deadline_hours
    # Approval (config/account_policy.py): held, not due, until a person approves it. Rows built
    # without it (batch imports) are stored queued and held by the send-time gate instead.
    status, due = (
        (RefundStatus.AWAITING_APPROVAL, None)
        if awaiting_approval
        else (RefundStatus.QUEUED, now + timedelta(seconds=settings.publish_grace))
    )
    return {
        "id": refund_id,
        "idempotency_key": request.idempotency_key,
        "provider": request.provider,
        "account": request.account,
        "amount": request.amount,
        "currency": request.currency,
        "destination": request.destination,
        "fields": dict(request.fields),
        "exclusive_key": exclusive_key,
        "payment_key": payment_key,
        "paid_amount": request.paid_amount,
        "batch_id": batch_id,
        "status": status.value,
        "attempts": 0,
        "polls": 0,
        # If the publish after commit is lost, the dispatcher sends the work after this grace.
        "next_action_at": due,
        "deadline": now + timedelta(hours=hours),
        "detail": {},
        "created_at": now,
        "updated_at": now,
    }


class RowSource(Protocol):
    """What refund_row reads: a RefundRequest, or a batch's spooled, already validated row."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def paid_amount(self) -> Decimal | None: ...
    @property
    def currency(self) -> str: ...
    @property
    def destination(self) -> str: ...
    @property
    def fields(self) -> Mapping[str, Any]: ...
    @property
    def deadline_hours(self) -> float | None: ...


def _existing(conn: Connection, request: RefundRequest) -> Refund | None:
    existing = store.get_by_key(conn, request.idempotency_key)
    if existing is not None:
        differing = differing_fields(existing, request)
        if differing:
            raise IdempotencyConflict(request.idempotency_key, existing.id, differing)
    return existing


def _insert(conn: Connection, request: RefundRequest, rt: Runtime) -> Refund:
    values = refund_values(request, rt)
    if values["exclusive_key"]:
        other = store.get_by_exclusive_key(conn, request.account, values["exclusive_key"])
        if other is not None:
            from providers.base import FieldError

            raise ValidationFailed(
                [
                    FieldError(
                        "fields",
                        f"{values['exclusive_key']} already has refund {other.id} ({other.status}); "
                        "this provider allows one refund per invoice",
                    )
                ]
            )
    refused = ceiling.admit(conn, [ceiling.claim_of(values)])
    if refused:
        raise ValidationFailed([error for _, error in refused])
    store.insert_refund(conn, values)
    return Refund.model_validate(values)


def persist(data: RefundRequest | Mapping[str, Any], rt: Runtime) -> tuple[Refund, bool]:
    """Validate and store, or return the refund this key already names. (refund, created)."""
    request = check(data, rt.accounts)
    for attempt in range(2):
        try:
            with rt.engine.begin() as conn:
                existing = _existing(conn, request)
                if existing is not None:
                    return existing, False
                return _insert(conn, request, rt), True
        except IntegrityError:
            # A concurrent producer inserted the same key (or invoice) first: re-read it.
            if attempt:
                raise
    raise AssertionError("unreachable")


def publish_submit(refund_id: str, rt: Runtime) -> bool:
    """Send the submit work. False when the broker is unreachable: the row stays due."""
    from worker.app import celery_app

    try:
        celery_app.send_task(
            "refundq.submit",
            args=[refund_id],
            queue="refundq.submit",
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        )
        return True
    except Exception as exc:  # broker down: the dispatcher delivers it later
        log.warning("publish_failed", refund_id=refund_id, error=f"{type(exc).__name__}: {exc}")
        return False


def enqueue_refund(data: RefundRequest | Mapping[str, Any], rt: Runtime | None = None) -> EnqueueResult:
    """Validate, store (row + event, one transaction), commit, then publish the submit task.

    Raises ValidationFailed (names each field and rule) or IdempotencyConflict; stores nothing then.
    """
    rt = rt or get_runtime()
    refund, created = persist(data, rt)
    # Held for approval: nothing to send until `refundq refund approve` publishes it.
    due = created and refund.status == RefundStatus.QUEUED
    published = publish_submit(refund.id, rt) if due else False
    log.info(
        "refund_enqueued" if created else "refund_exists",
        refund_id=refund.id,
        provider=refund.provider,
        account=refund.account,
        published=published,
    )
    return EnqueueResult(refund, created, published)
