"""All SQL. Status changes are one guarded UPDATE (`WHERE id=? AND status=?`) plus one event
row, in the caller's transaction; Core statements, not the ORM, on every hot path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, ColumnElement, Connection, Row, Table, func, insert, select, update

from config.logging import scrub
from providers.base import RefundStatus
from worker.models import (
    BATCH_COUNTED_AS,
    BATCH_OPEN,
    BATCH_STATUSES,
    Money,
    Refund,
    TZDateTime,
    batch_table,
    event_table,
    refund_table,
    rejected_intake_table,
    utcnow,
)
from worker.states import POLLED, allowed

R = refund_table.c


class TransitionError(Exception):
    """Base for refused status changes. Nothing was written."""


class IllegalTransition(TransitionError):
    def __init__(self, refund_id: str, frm: RefundStatus, to: RefundStatus) -> None:
        super().__init__(f"refund {refund_id}: {frm} -> {to} is not an allowed transition")
        self.refund_id, self.frm, self.to = refund_id, frm, to


class LostRace(TransitionError):
    """The row is no longer what the caller believed: its status moved, or (with a claim) the claim
    was taken over. Whoever holds it now decides; the caller changes nothing."""

    def __init__(self, refund_id: str, frm: RefundStatus, to: RefundStatus, claim: int | None = None) -> None:
        under = "" if claim is None else f" under claim {claim}"
        super().__init__(f"refund {refund_id}: expected status {frm}{under} for -> {to}, but it changed meanwhile")
        self.refund_id, self.frm, self.to = refund_id, frm, to


def db_time(conn: Connection, seconds: float = 0.0) -> ColumnElement[Any]:
    """The database's clock, plus `seconds`. Leases, settle times and due times are written and
    judged on this one clock, never on a worker's (which may be skewed). SQLite's clock is the
    host's, read in SQL in the format SQLAlchemy stores datetimes in (microseconds)."""
    if conn.dialect.name == "postgresql":
        return func.now() + timedelta(seconds=seconds) if seconds else func.now()
    return func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{seconds:+.3f} seconds").op("||")("000")


def _on_db_clock(conn: Connection, values: Mapping[str, Any]) -> dict[str, Any]:
    """A timedelta given for a datetime column means "that long after the database's now"."""
    return {k: db_time(conn, v.total_seconds()) if isinstance(v, timedelta) else v for k, v in values.items()}


def _guards(refund_id: str, status: RefundStatus, claim: int | None, guard: Any) -> list[Any]:
    where = [R.id == refund_id, R.status == status.value]
    if claim is not None:
        where.append(R.claim == claim)
    if guard is not None:
        where.append(guard)
    return where


def _refund(row: Row[Any] | None) -> Refund | None:
    return None if row is None else Refund.model_validate(dict(row._mapping))


def get_refund(conn: Connection, refund_id: str) -> Refund | None:
    return _refund(conn.execute(select(refund_table).where(R.id == refund_id)).first())


def get_by_key(conn: Connection, idempotency_key: str) -> Refund | None:
    return _refund(conn.execute(select(refund_table).where(R.idempotency_key == idempotency_key)).first())


def get_by_exclusive_key(conn: Connection, account: str, exclusive_key: str) -> Refund | None:
    query = select(refund_table).where(R.account == account, R.exclusive_key == exclusive_key)
    return _refund(conn.execute(query).first())


def insert_refund(conn: Connection, values: Mapping[str, Any], *, reason: str = "accepted") -> None:
    if values["status"] == RefundStatus.AWAITING_APPROVAL.value:
        reason = f"{reason}; amount above the account's approval_threshold: awaiting approval"
    conn.execute(insert(refund_table).values(**values))
    conn.execute(
        insert(event_table).values(
            refund_id=values["id"],
            from_status=None,
            to_status=values["status"],
            reason=reason,
            created_at=utcnow(),
        )
    )


def insert_refunds(conn: Connection, rows: Sequence[Mapping[str, Any]], *, reason: str = "accepted") -> None:
    """Bulk insert (executemany) of refunds and their first events."""
    if not rows:
        return
    now = utcnow()
    conn.execute(insert(refund_table), list(rows))
    conn.execute(
        insert(event_table),
        [
            {
                "refund_id": r["id"],
                "from_status": None,
                "to_status": r["status"],
                "reason": reason,
                "created_at": now,
            }
            for r in rows
        ],
    )


def copy_refunds(conn: Connection, rows: Sequence[Mapping[str, Any]], *, reason: str = "accepted") -> None:
    """PostgreSQL only: what insert_refunds does (the refunds and their first events) with COPY
    through the raw psycopg connection, inside the caller's transaction: several times faster
    than executemany for thousands of rows."""
    if not rows:
        return
    copy_rows(conn, refund_table, rows)
    now = utcnow()
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    events = "COPY refund_event (refund_id, from_status, to_status, reason, created_at) FROM STDIN"
    with dbapi.cursor() as cur, cur.copy(events) as copy:
        for r in rows:
            copy.write_row((r["id"], None, r["status"], reason, now))


def copy_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """PostgreSQL only: COPY `rows` into `table` through the raw psycopg connection, inside the
    caller's transaction. Every row must have the keys of the first. The column types' rules
    hold here too: money must be Decimal (sent exactly, never through float), datetimes aware;
    JSON columns go through the engine's serializer."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        raise ValueError("copy_rows needs PostgreSQL; use an executemany insert")
    dumps = conn.dialect._json_serializer or json.dumps
    empty = dumps({})

    def money(value: Any) -> Any:
        if not isinstance(value, Decimal):
            raise TypeError(f"money must be Decimal, got {type(value).__name__}")
        return value

    def stamp(value: Any) -> Any:
        if value.tzinfo is None:
            raise ValueError("naive datetime: refundq stores UTC only")
        return value

    def document(value: Any) -> Any:
        return empty if type(value) is dict and not value else dumps(value)

    def converter(column: Any) -> Callable[[Any], Any] | None:
        if isinstance(column.type, Money):
            return money
        if isinstance(column.type, TZDateTime):
            return stamp
        if isinstance(column.type, JSON):
            return document
        return None

    columns = list(rows[0])
    get = itemgetter(*columns)
    converters = [(i, f) for i, f in enumerate(converter(table.c[c]) for c in columns) if f is not None]
    names = ", ".join(f'"{c}"' for c in columns)
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    with dbapi.cursor() as cur, cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for r in rows:
            row = list(get(r)) if len(columns) > 1 else [get(r)]
            for i, f in converters:
                if row[i] is not None:
                    row[i] = f(row[i])
            copy.write_row(row)


def transition(
    conn: Connection,
    refund_id: str,
    frm: RefundStatus,
    to: RefundStatus,
    *,
    reason: str | None = None,
    provider_status: str | None = None,
    response: Any = None,
    values: Mapping[str, Any] | None = None,
    claim: int | None = None,
    guard: Any = None,
) -> int:
    """Move one refund frm -> to, or raise and change nothing. With `claim`, only while that claim
    holds the row; `guard` is one more condition. Returns the row's claim after the move."""
    if not allowed(frm, to):
        raise IllegalTransition(refund_id, frm, to)
    now = utcnow()
    changes: dict[str, Any] = {"status": to.value, "updated_at": now, **_on_db_clock(conn, values or {})}
    if to in FREES_EXCLUSIVE_KEY:
        changes["exclusive_key"] = None  # nothing was paid: the invoice is free for a corrected refund
    if provider_status is not None:
        changes["provider_status"] = provider_status
    moved = conn.execute(
        update(refund_table)
        .where(*_guards(refund_id, frm, claim, guard))
        .values(**changes)
        .returning(R.batch_id, R.claim)
    ).all()
    if len(moved) != 1:
        raise LostRace(refund_id, frm, to, claim)
    if moved[0].batch_id is not None:
        count_batch_move(conn, moved[0].batch_id, frm.value, to.value, now)
    conn.execute(
        insert(event_table).values(
            refund_id=refund_id,
            from_status=frm.value,
            to_status=to.value,
            reason=None if reason is None else reason[:2000],
            provider_status=provider_status,
            response=None if response is None else scrub(response),
            created_at=now,
        )
    )
    return int(moved[0].claim)


def count_batch_move(conn: Connection, batch_id: str, frm: str, to: str, now: datetime) -> None:
    """One refund of the batch moved frm -> to: the counters follow in the caller's transaction
    (atomic increments, so concurrent transitions never lose a count); stamp finished_at when
    every refund of the batch is inserted and terminal."""
    frm, to = BATCH_COUNTED_AS.get(frm, frm), BATCH_COUNTED_AS.get(to, to)
    if frm == to:
        return  # e.g. queued <-> awaiting_approval: one counter, nothing moves
    B = batch_table.c
    conn.execute(
        update(batch_table).where(B.id == batch_id).values({f"n_{frm}": B[f"n_{frm}"] - 1, f"n_{to}": B[f"n_{to}"] + 1})
    )
    finish_if_done(conn, batch_id, now)


def finish_if_done(conn: Connection, batch_id: str, now: datetime) -> None:
    """Stamp finished_at once every refund of the batch is inserted (`total`) and terminal."""
    B = batch_table.c
    open_sum = sum((B[f"n_{s}"] for s in BATCH_OPEN[1:]), B[f"n_{BATCH_OPEN[0]}"])
    done_sum = sum((B[f"n_{s}"] for s in BATCH_STATUSES[8:]), B[f"n_{BATCH_STATUSES[7]}"])
    conn.execute(
        update(batch_table)
        .where(B.id == batch_id, B.finished_at.is_(None), open_sum == 0, done_sum == B.total)
        .values(finished_at=now)
    )


def touch(
    conn: Connection,
    refund_id: str,
    status: RefundStatus,
    values: Mapping[str, Any],
    *,
    claim: int | None = None,
) -> bool:
    """Update non-status columns, guarded by the status (and claim) we believe it has. False if it moved."""
    result = conn.execute(
        update(refund_table)
        .where(*_guards(refund_id, status, claim, None))
        .values(updated_at=utcnow(), **_on_db_clock(conn, values))
    )
    return result.rowcount == 1


def add_event(conn: Connection, refund_id: str, status: RefundStatus, reason: str, response: Any = None) -> None:
    """A fact that is not a status change (drift found, lookup outcome): from == to."""
    conn.execute(
        insert(event_table).values(
            refund_id=refund_id,
            from_status=status.value,
            to_status=status.value,
            reason=reason[:2000],
            response=None if response is None else scrub(response),
            created_at=utcnow(),
        )
    )


def add_late_answer(conn: Connection, refund_id: str, reason: str, record: Mapping[str, Any]) -> None:
    """What a provider told a worker whose claim was already gone. It changes nothing on the row
    (someone else holds it), but it is kept: the next lookup and reconciliation read it."""
    status = conn.execute(select(R.status).where(R.id == refund_id)).scalar_one()
    add_event(conn, refund_id, RefundStatus(status), f"{LATE_ANSWER}: {reason}", {LATE_ANSWER: dict(record)})


def late_answers(conn: Connection, refund_id: str) -> list[dict[str, Any]]:
    E = event_table.c
    query = select(E.response).where(E.refund_id == refund_id, E.reason.like(f"{LATE_ANSWER}:%")).order_by(E.id)
    return [r.response[LATE_ANSWER] for r in conn.execute(query) if r.response and LATE_ANSWER in r.response]


def late_answers_for(conn: Connection, refund_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """late_answers of many refunds in one query (batch retry judges a page at a time)."""
    E = event_table.c
    out: dict[str, list[dict[str, Any]]] = {}
    if not refund_ids:
        return out
    query = (
        select(E.refund_id, E.response)
        .where(E.refund_id.in_(list(refund_ids)), E.reason.like(f"{LATE_ANSWER}:%"))
        .order_by(E.id)
    )
    for r in conn.execute(query):
        if r.response and LATE_ANSWER in r.response:
            out.setdefault(r.refund_id, []).append(r.response[LATE_ANSWER])
    return out


def retried_as(conn: Connection, refund_id: str) -> str | None:
    """The id of the refund that retries this one, if any."""
    return conn.execute(select(R.id).where(R.retry_of == refund_id).limit(1)).scalar()


def follow_ups(conn: Connection, refund_id: str) -> list[tuple[str, Decimal]]:
    """(status, amount) of every follow-up of this refund (`refund follow-up`)."""
    rows = conn.execute(select(R.status, R.amount).where(R.follow_up_of == refund_id).order_by(R.created_at))
    return [(r.status, r.amount) for r in rows]


def hand_over(conn: Connection, old: Refund) -> bool:
    """A retry takes over from `old`: the old row gives up its invoice (one refund per invoice)
    to the new one, guarded by the version that was judged (status and updated_at), so a row that
    changed meanwhile, or that a concurrent retry took, is left alone (False)."""
    moved = conn.execute(
        update(refund_table)
        .where(R.id == old.id, R.status == old.status, R.updated_at == old.updated_at)
        .values(exclusive_key=None, updated_at=utcnow())
    )
    return moved.rowcount == 1


def is_settled(conn: Connection, refund_id: str) -> bool:
    """Has the settle time after the refund's last ambiguous send passed (database clock)?"""
    return bool(conn.execute(select(settled(conn)).where(R.id == refund_id)).scalar())


DUE_STATUSES = (RefundStatus.QUEUED, RefundStatus.UNKNOWN, *POLLED)
LATE_ANSWER = "late answer"
FREES_EXCLUSIVE_KEY = frozenset({RefundStatus.REJECTED, RefundStatus.CANCELLED})


def _lockable(conn: Connection, query: Any) -> Any:
    """On PostgreSQL skip rows another dispatcher holds; on SQLite writers are serialized anyway."""
    return query.with_for_update(skip_locked=True) if conn.dialect.name == "postgresql" else query


def claim_due(conn: Connection, lease_seconds: float, limit: int) -> list[Row[Any]]:
    """Claim due rows (not submitting ones: see expired_claims) by pushing next_action_at
    forward (the dispatcher's lease), all on the database clock."""
    now = db_time(conn)
    due = (
        select(R.id)
        .where(R.status.in_([s.value for s in DUE_STATUSES]), R.next_action_at <= now)
        .order_by(R.next_action_at)
        .limit(limit)
    )
    ids = [r.id for r in conn.execute(_lockable(conn, due))]
    if not ids:
        return []
    result = conn.execute(
        update(refund_table)
        .where(R.id.in_(ids), R.next_action_at <= now)
        .values(next_action_at=db_time(conn, lease_seconds))
        .returning(R.id, R.status, R.provider, R.account)
    )
    return list(result)


def expired_claims(conn: Connection, limit: int) -> list[Row[Any]]:
    """Submitting rows whose send lease ran out (database clock): (id, claim, account)."""
    query = (
        select(R.id, R.claim, R.account)
        .where(R.status == RefundStatus.SUBMITTING.value, lease_expired(conn))
        .order_by(R.next_action_at)
        .limit(limit)
    )
    return list(conn.execute(_lockable(conn, query)))


def lease_expired(conn: Connection) -> Any:
    """Guard for taking over a claim: its lease has run out on the database clock. Evaluated by the
    UPDATE itself, so a renewal committed a moment earlier wins."""
    return R.next_action_at <= db_time(conn)


def settled(conn: Connection) -> Any:
    """Guard for a resend after a lookup said "absent": the settle time has passed."""
    return (R.settle_until.is_(None)) | (R.settle_until <= db_time(conn))


def list_refunds(
    conn: Connection, *, status: str | None = None, batch_id: str | None = None, limit: int = 100
) -> list[Refund]:
    query = select(refund_table).order_by(R.created_at.desc()).limit(limit)
    if status:
        query = query.where(R.status == status)
    if batch_id:
        query = query.where(R.batch_id == batch_id)
    return [r for r in (_refund(row) for row in conn.execute(query)) if r is not None]


def count_by_status(conn: Connection, ids: Iterable[str] | None = None) -> dict[str, int]:
    query = select(R.status, func.count()).group_by(R.status)
    if ids is not None:
        query = query.where(R.id.in_(list(ids)))
    return {status: n for status, n in conn.execute(query)}


def events(conn: Connection, refund_id: str) -> list[dict[str, Any]]:
    query = select(event_table).where(event_table.c.refund_id == refund_id).order_by(event_table.c.id)
    return [dict(r._mapping) for r in conn.execute(query)]


def record_rejected_intakes(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """One INSERT for many rejected messages; a row whose message_id is already there (the same
    message delivered again after a crash) is skipped, so each message is recorded once."""
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(rejected_intake_table).on_conflict_do_nothing(index_elements=["message_id"])
    conn.execute(stmt, [dict(r) for r in rows])


def prune_rejected_intakes(conn: Connection, before: datetime) -> int:
    result = conn.execute(rejected_intake_table.delete().where(rejected_intake_table.c.created_at < before))
    return int(result.rowcount or 0)


def rejected_intakes(conn: Connection, key: str) -> list[dict[str, Any]]:
    query = select(rejected_intake_table).where(rejected_intake_table.c.idempotency_key == key)
    return [dict(r._mapping) for r in conn.execute(query)]
