"""SQLModel tables. The database is the source of truth; Redis only carries work."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Index,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from worker import clock


def utcnow() -> datetime:
    return clock.now()


class Money(TypeDecorator[Decimal]):
    """NUMERIC on PostgreSQL; exact decimal text on SQLite, whose NUMERIC would round through float."""

    impl = Numeric(38, 18)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(64))
        return dialect.type_descriptor(Numeric(38, 18, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money must be Decimal, got {type(value).__name__}")
        return format(value, "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else strip_zeros(Decimal(str(value)))


def strip_zeros(amount: Decimal) -> Decimal:
    """12.5000 -> 12.5 and 10.00 -> 10, exactly (normalize() would round to 28 digits)."""
    text = format(amount, "f")
    return Decimal(text.rstrip("0").rstrip(".") if "." in text else text)


class TZDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: refundq stores UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Refund(SQLModel, table=True):
    __tablename__ = "refund"
    __table_args__ = (
        UniqueConstraint("account", "exclusive_key", name="uq_refund_account_exclusive_key"),
        Index("ix_refund_due", "status", "next_action_at"),
        Index("ix_refund_payment", "account", "payment_key"),
    )

    id: str = Field(primary_key=True, max_length=40)
    idempotency_key: str = Field(max_length=200, unique=True)
    provider: str = Field(max_length=32)
    account: str = Field(max_length=100, index=True)
    amount: Decimal = Field(sa_column=Column(Money(), nullable=False))
    currency: str = Field(max_length=32)
    destination: str = Field(max_length=200)
    fields: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # At most one live refund per account and key (one refund per invoice); NULL for most.
    exclusive_key: str | None = Field(default=None, max_length=200)
    batch_id: str | None = Field(default=None, max_length=40, index=True)
    retry_of: str | None = Field(default=None, max_length=40, index=True)  # the refund this one retries
    # The original payment this refund returns money from (Adapter.payment_key; worker/ceiling.py),
    # what the producer said was paid for it, and the refund this one completes (`refund follow-up`).
    payment_key: str | None = Field(default=None, max_length=200)
    paid_amount: Decimal | None = Field(default=None, sa_column=Column(Money(), nullable=True))
    follow_up_of: str | None = Field(default=None, max_length=40, index=True)
    # What the provider reports it paid out for this refund, and its fee (a PartiallyCompleted
    # refund paid less than `amount`); None until it says.
    settled_amount: Decimal | None = Field(default=None, sa_column=Column(Money(), nullable=True))
    fee: Decimal | None = Field(default=None, sa_column=Column(Money(), nullable=True))
    status: str = Field(max_length=24)
    provider_status: str | None = Field(default=None, max_length=64)
    provider_refund_id: str | None = Field(default=None, max_length=200)
    attempts: int = 0  # sends (a lookup-then-resend counts; a nonce re-sign does not)
    # Fencing token: bumped by every claim for a send. Every write made under a claim is guarded by
    # it, so a worker whose claim was taken over (lease expired) can change nothing.
    claim: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Before this (database clock), a lookup's "absent" is not believed: the provider may still
    # execute a create it received before the last ambiguous send ended.
    settle_until: datetime | None = Field(default=None, sa_column=Column(TZDateTime(), nullable=True))
    polls: int = 0  # polls since the last status change (drives the backoff)
    next_action_at: datetime | None = Field(default=None, sa_column=Column(TZDateTime(), nullable=True))
    deadline: datetime = Field(sa_column=Column(TZDateTime(), nullable=False))
    # Own deadline of partially_completed / action_required, which wait longer or shorter.
    status_deadline: datetime | None = Field(default=None, sa_column=Column(TZDateTime(), nullable=True))
    last_error: str | None = Field(default=None, max_length=2000)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(TZDateTime(), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(TZDateTime(), nullable=False))


class RefundEvent(SQLModel, table=True):
    """Append-only: one row per status change and per notable fact (drift, lookup result)."""

    __tablename__ = "refund_event"

    id: int | None = Field(default=None, primary_key=True)
    refund_id: str = Field(foreign_key="refund.id", index=True, max_length=40)
    from_status: str | None = Field(default=None, max_length=24)
    to_status: str = Field(max_length=24)
    reason: str | None = Field(default=None, max_length=2000)
    provider_status: str | None = Field(default=None, max_length=64)
    response: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(TZDateTime(), nullable=False))


class RejectedIntake(SQLModel, table=True):
    """A message refundq could not turn into a refund: kept (escaped, scrubbed, cut), never dropped.

    `message_id` is the intake consumer's delivery number: a message redelivered after a crash
    finds its row already there, so each message leaves exactly one."""

    __tablename__ = "rejected_intake"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str | None = Field(default=None, max_length=64, unique=True)
    queue: str | None = Field(default=None, max_length=200)
    producer: str | None = Field(default=None, max_length=100)
    idempotency_key: str | None = Field(default=None, max_length=200, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    raw: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(TZDateTime(), nullable=False, index=True))


class Payment(SQLModel, table=True):
    """An original payment refunds return money from: the lock row of its ceiling. `refundable` is
    what the customer paid, from the provider where it reports it (`source` "provider", `read_at`),
    else from the producer's `paid_amount`; None until one of them said."""

    __tablename__ = "payment"

    account: str = Field(primary_key=True, max_length=100)
    key: str = Field(primary_key=True, max_length=200)
    currency: str = Field(max_length=32)
    refundable: Decimal | None = Field(default=None, sa_column=Column(Money(), nullable=True))
    source: str | None = Field(default=None, max_length=16)
    read_at: datetime | None = Field(default=None, sa_column=Column(TZDateTime(), nullable=True))
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(TZDateTime(), nullable=False))


refund_table = Refund.__table__  # type: ignore[attr-defined]
event_table = RefundEvent.__table__  # type: ignore[attr-defined]
rejected_intake_table = RejectedIntake.__table__  # type: ignore[attr-defined]
payment_table = Payment.__table__  # type: ignore[attr-defined]


BATCH_STATUSES = (
    "queued",
    "submitting",
    "unknown",
    "pending",
    "processing",
    "action_required",
    "partially_completed",
    "completed",
    "failed",
    "rejected",
    "needs_attention",
    "cancelled",
)
BATCH_OPEN = BATCH_STATUSES[:7]  # non-terminal
# Statuses a batch counts under another one's counter. awaiting_approval is "not sent yet" like
# queued: batch imports count every row they insert as queued, so holding one for approval (and
# approving it) leaves the counters exact without a column of its own.
BATCH_COUNTED_AS = {"awaiting_approval": "queued"}


class Batch(SQLModel, table=True):
    """A bulk submission. `n_<status>` counters move in the same transaction as each refund's
    transition (store.transition), so they are always exact; no Celery chords."""

    __tablename__ = "batch"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    source_hash: str = Field(max_length=100, unique=True)  # sha256 of the file: re-submitting is idempotent
    total: int = 0  # refunds this batch will hold once fully inserted
    retry_of: str | None = Field(default=None, max_length=40, index=True)  # the batch this one retries
    n_queued: int = 0
    n_submitting: int = 0
    n_unknown: int = 0
    n_pending: int = 0
    n_processing: int = 0
    n_action_required: int = 0
    n_partially_completed: int = 0
    n_completed: int = 0
    n_failed: int = 0
    n_rejected: int = 0
    n_needs_attention: int = 0
    n_cancelled: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(TZDateTime(), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(TZDateTime(), nullable=True))

    @property
    def counts(self) -> dict[str, int]:
        return {s: int(getattr(self, f"n_{s}")) for s in BATCH_STATUSES}

    @property
    def inserted(self) -> int:
        return sum(self.counts.values())

    @property
    def open(self) -> int:
        return sum(int(getattr(self, f"n_{s}")) for s in BATCH_OPEN)


batch_table = Batch.__table__  # type: ignore[attr-defined]
