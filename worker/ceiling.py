"""The money ceiling: refunds of one original payment never add up to more than the customer paid.

Each refund names its payment (`Adapter.payment_key`: a Cobo or CoinCorner order, a CoinVoyage
pay-order, a Cryptomus invoice). The payment's row (table `payment`) holds what was paid
(`refundable`) and is the lock every admission takes. In one transaction, under that lock, the
refunds of the payment that may have moved money (every status but failed, rejected and
cancelled; a partially completed one counts what the provider reports it paid) plus the new ones
must fit, in the payment's currency; otherwise the new one is refused with the numbers. The lock is
SELECT ... FOR UPDATE on PostgreSQL; SQLite's write transactions are serial already (BEGIN
IMMEDIATE, worker/db.py).

Where `refundable` comes from:
- the producer's `paid_amount`, the first time refundq sees the payment. Cobo and CoinVoyage
  require it (their APIs report no paid amount in the refund's unit); a later refund that states
  a different one is refused, so a producer cannot raise a ceiling by saying so;
- the provider, for CoinCorner (GetOrder `InvoiceAmount`) and Cryptomus (payment/info `amount`):
  read once before the first send of a refund of the payment, stored with the time it was read
  (it replaces what a producer said), and checked under the lock (`admit_reading`). A refund above
  it is rejected without being sent. Cryptomus refunds the whole invoice (PaymentRule.WHOLE): the
  amount must equal it.

The ceiling is checked as soon as refundable is known: at enqueue when it is, else before sending.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Connection, Select, and_, bindparam, case, literal, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from providers import get_adapter
from providers.base import FieldError, PaymentReading, PaymentRule, RefundStatus, decimal_places
from worker.actions import NOT_PAID
from worker.models import TZDateTime, payment_table, refund_table, utcnow

P = payment_table.c
R = refund_table.c

NOT_COUNTED = NOT_PAID  # a refund that proved it paid nothing (or was never sent) does not count
CHUNK = 500  # payments per statement: far below every driver's parameter limit
CANONICAL = "canonical_key"  # in a provider reading's detail: the key the provider knows it by

Key = tuple[str, str]  # (account, payment key)


@dataclass(frozen=True)
class Claim:
    """A refund asking to be admitted; `row` says which (a batch's row number, else 0)."""

    row: int
    account: str
    provider: str
    key: str
    currency: str
    amount: Decimal
    paid_amount: Decimal | None = None


@dataclass
class Ledger:
    """A payment as its lock holder sees it: what was paid and what its refunds already take."""

    currency: str
    refundable: Decimal | None
    source: str | None
    read_at: datetime | None
    committed: Decimal = Decimal(0)
    count: int = 0
    stated: bool = False  # refundable was set from a claim's paid_amount just now (to be stored)

    @property
    def origin(self) -> str:
        if self.source == "provider" and self.read_at is not None:
            return f"read from the provider at {self.read_at.isoformat(timespec='seconds')}"
        return "stated by the producer"


def claim_of(values: Mapping[str, Any], row: int = 0) -> Claim:
    """The claim of a new refund row (producer.refund_row's dict)."""
    return Claim(
        row,
        values["account"],
        values["provider"],
        values["payment_key"],
        values["currency"],
        values["amount"],
        values.get("paid_amount"),
    )


def counted(status: str, amount: Decimal, settled_amount: Decimal | None) -> Decimal:
    """What one refund takes from its payment's ceiling."""
    if status in NOT_COUNTED:
        return Decimal(0)
    if status == RefundStatus.PARTIALLY_COMPLETED.value and settled_amount is not None:
        return settled_amount
    return amount


def _money(amount: Decimal) -> str:
    """12.5 -> "12.50", 0.000123 -> "0.000123": cents at least (the database strips zeros)."""
    return format(amount, ".2f") if decimal_places(amount) <= 2 else format(amount, "f")


def ceiling_error(rule: PaymentRule, key: str, ledger: Ledger, amount: Decimal) -> FieldError | None:
    """Pure: may `amount` be refunded from this payment now? The reason names every number."""
    assert ledger.refundable is not None
    paid, currency = ledger.refundable, ledger.currency
    if rule is PaymentRule.WHOLE and amount != paid:
        return FieldError(
            "amount",
            f"must equal the {_money(paid)} {currency} paid for {key} ({ledger.origin}): "
            "the provider refunds the whole payment, whatever amount is asked",
        )
    total = ledger.committed + amount
    if total > paid:
        return FieldError(
            "amount",
            f"ceiling: refunds of {key} would total {_money(total)} {currency}, above the {_money(paid)} paid "
            f"({ledger.origin}; {_money(ledger.committed)} already taken by {ledger.count} refund(s))",
        )
    return None


def judge(claims: Iterable[Claim], ledgers: Mapping[Key, Ledger]) -> list[tuple[int, FieldError]]:
    """Pure: each claim in order against its payment's ledger; an admitted claim adds to it.
    Returns the refused ones as (row, error)."""
    refused: list[tuple[int, FieldError]] = []
    for claim in claims:
        ledger = ledgers[(claim.account, claim.key)]
        error = _judge_one(claim, ledger)
        if error is not None:
            refused.append((claim.row, error))
        elif ledger.refundable is not None:
            ledger.committed += claim.amount
            ledger.count += 1
    return refused


def _judge_one(claim: Claim, ledger: Ledger) -> FieldError | None:
    adapter = get_adapter(claim.provider)
    if claim.currency != ledger.currency:
        return FieldError("currency", f"payment {claim.key} is in {ledger.currency}; its refunds must be too")
    if claim.paid_amount is not None and ledger.refundable is not None and claim.paid_amount != ledger.refundable:
        return FieldError(
            "paid_amount",
            f"{_money(claim.paid_amount)} differs from the {_money(ledger.refundable)} {ledger.currency} "
            f"recorded for payment {claim.key} ({ledger.origin})",
        )
    if ledger.refundable is None:
        if claim.paid_amount is None:
            if adapter.reads_payment:
                return None  # read from the provider and checked before the first send
            return FieldError(
                "paid_amount",
                f"is required: refundq has no record of what was paid for {claim.key}, "
                f"and {claim.provider} does not report it",
            )
        ledger.refundable, ledger.source, ledger.stated = claim.paid_amount, "producer", True
    return ceiling_error(adapter.payment_rule, claim.key, ledger, claim.amount)


# --- the database side ---------------------------------------------------------------------------


def _by_account(keys: Sequence[Key]) -> Iterator[tuple[str, list[str]]]:
    """Sorted keys as (account, up to CHUNK payment keys) runs, in the same order."""
    run: list[str] = []
    current: str | None = None
    for account, key in keys:
        if run and (account != current or len(run) >= CHUNK):
            assert current is not None
            yield current, run
            run = []
        current = account
        run.append(key)
    if run:
        assert current is not None
        yield current, run


def _insert_missing(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> set[Key]:
    """One executemany (compiled once, sent as multi-row INSERTs); the keys it created."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    if not rows:
        return set()
    insert = dialect.insert(payment_table).on_conflict_do_nothing().returning(P.account, P.key)
    return {(r.account, r.key) for r in conn.execute(insert, list(rows))}


# What a payment is created with when refundq first sees it: the first refund's currency and the
# paid_amount it states (None: not stated).
First = tuple[str, Decimal | None]


def first_seen(claims: Iterable[Claim]) -> dict[Key, First]:
    first: dict[Key, First] = {}
    for claim in claims:
        first.setdefault((claim.account, claim.key), (claim.currency, claim.paid_amount))
    return first


def lock(conn: Connection, first: Mapping[Key, First], exclude: str | None = None) -> dict[Key, Ledger]:
    """Create the payments not seen before (as `first` says), lock them all in one order (no
    deadlock between two admissions), and read what their refunds take."""
    keys = sorted(first)
    now = utcnow()
    created = _insert_missing(
        conn,
        [
            {
                "account": a,
                "key": k,
                "currency": first[(a, k)][0],
                "refundable": first[(a, k)][1],
                "source": None if first[(a, k)][1] is None else "producer",
                "read_at": None,
                "detail": {},
                "created_at": now,
            }
            for a, k in keys
        ],
    )
    # Created just now (and so locked by this transaction): nothing can have taken from them yet.
    ledgers = {k: Ledger(first[k][0], first[k][1], None if first[k][1] is None else "producer", None) for k in created}
    ledgers.update(lock_existing(conn, [k for k in keys if k not in created], exclude))
    return ledgers


def create_from(conn: Connection, source: Select[Any]) -> dict[Key, Ledger]:
    """Create, in one statement, the payments a query names that do not exist yet; their ledgers.
    `source`: one row per payment with columns account, key, currency, refundable (what the first
    refund of it states, or NULL). For thousands of payments at once (a batch's staging table)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    given = source.subquery()
    stated = case((given.c.refundable.is_(None), None), else_=literal("producer"))
    rows = select(
        given.c.account,
        given.c.key,
        given.c.currency,
        given.c.refundable,
        stated,
        literal(None, TZDateTime()),
        literal({}, JSON()),
        literal(utcnow(), TZDateTime()),
    ).where(true())  # SQLite: without a WHERE, its parser reads ON CONFLICT as a join's ON
    columns = ["account", "key", "currency", "refundable", "source", "read_at", "detail", "created_at"]
    insert = (
        dialect.insert(payment_table)
        .from_select(columns, rows)
        .on_conflict_do_nothing()
        .returning(P.account, P.key, P.currency, P.refundable, P.source)
    )
    return {(r.account, r.key): Ledger(r.currency, r.refundable, r.source, None) for r in conn.execute(insert)}


def lock_existing(conn: Connection, keys: Sequence[Key], exclude: str | None = None) -> dict[Key, Ledger]:
    """Lock payments that exist, sorted (no deadlock between two admissions), and read what their
    refunds take (but refund `exclude`)."""
    ledgers: dict[Key, Ledger] = {}
    for account, chunk in _by_account(sorted(keys)):
        # One account and IN on the key: both databases use the (account, key) indexes (SQLite
        # scans the whole table for a row-value IN).
        query = (
            select(P.account, P.key, P.currency, P.refundable, P.source, P.read_at)
            .where(P.account == account, P.key.in_(chunk))
            .order_by(P.account, P.key)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        for p in conn.execute(query):
            ledgers[(p.account, p.key)] = Ledger(p.currency, p.refundable, p.source, p.read_at)
        refunds = select(R.account, R.payment_key, R.status, R.amount, R.settled_amount).where(
            R.account == account, R.payment_key.in_(chunk), R.status.not_in(NOT_COUNTED)
        )
        if exclude is not None:
            refunds = refunds.where(R.id != exclude)
        for r in conn.execute(refunds):
            ledger = ledgers[(r.account, r.payment_key)]
            ledger.committed += counted(r.status, r.amount, r.settled_amount)
            ledger.count += 1
    return ledgers


def record(conn: Connection, ledgers: Mapping[Key, Ledger]) -> None:
    """Store what producers stated just now for payments known without it (never over a value
    already recorded). New payments were created with it (`lock`)."""
    stated = [
        {"a": account, "k": key, "r": ledger.refundable} for (account, key), ledger in ledgers.items() if ledger.stated
    ]
    if stated:
        conn.execute(
            update(payment_table)
            .where(P.account == bindparam("a"), P.key == bindparam("k"), P.refundable.is_(None))
            .values(refundable=bindparam("r"), source="producer"),
            stated,
        )


def admit(conn: Connection, claims: Sequence[Claim]) -> list[tuple[int, FieldError]]:
    """In the caller's write transaction, before the refunds are inserted: lock their payments and
    judge them in order. Returns the refused ones as (claim.row, error); the caller inserts the
    others, or rolls it all back (a producer's refused request stores nothing)."""
    ledgers = lock(conn, first_seen(claims))
    refused = judge(claims, ledgers)
    record(conn, ledgers)
    return refused


def admit_reading(conn: Connection, refund_id: str, reading: PaymentReading) -> FieldError | None:
    """Before the first send of a refund whose provider reports the payment: store the reading (it
    replaces what a producer said; the refund's key becomes the provider's canonical one, e.g. a
    Cryptomus order_id becomes the invoice uuid) and judge the refund against it, under the lock,
    counting every other refund of the payment. In the caller's write transaction; a refusal
    changes nothing of the refund (the caller rejects it)."""
    account, key = conn.execute(select(R.account).where(R.id == refund_id)).scalar_one(), reading.key
    # Every other refund of the payment; this one is judged. Read after the lock: a twin delivery
    # of the same submit may have moved it to the canonical key just before.
    ledger = lock(conn, {(account, key): (reading.currency, None)}, exclude=refund_id)[(account, key)]
    refund = conn.execute(select(refund_table).where(R.id == refund_id)).one()
    old_key = refund.payment_key
    now = utcnow()
    values: dict[str, Any] = {
        "currency": reading.currency,
        "refundable": reading.amount,
        "source": "provider",
        "read_at": now,
        "detail": {**reading.detail, CANONICAL: key},
    }
    aliases = [k for k in (key, old_key) if k is not None]
    if old_key not in (None, key):
        _insert_missing(conn, [{"account": account, "key": old_key, **values, "created_at": now}])
    conn.execute(update(payment_table).where(P.account == account, P.key.in_(aliases)).values(**values))
    ledger.currency, ledger.refundable, ledger.source, ledger.read_at = (
        reading.currency,
        reading.amount,
        "provider",
        now,
    )
    if refund.currency.upper() != reading.currency.upper():
        return FieldError("currency", f"payment {key} is in {reading.currency}; this refund is in {refund.currency}")
    if old_key != key:
        moved = {"payment_key": key}
        if refund.exclusive_key is not None and refund.exclusive_key == old_key:
            # One live refund per invoice, by its canonical key: another refund may have named the
            # same invoice the other way (uuid / order_id). The payment's lock makes this check hold.
            holder = holder_of(conn, account, key, refund_id)
            if holder is not None:
                return FieldError(
                    "fields", f"{key} already has refund {holder}; the provider allows one refund per invoice"
                )
            moved["exclusive_key"] = key
        conn.execute(update(refund_table).where(R.id == refund_id).values(**moved))
    return ceiling_error(get_adapter(refund.provider).payment_rule, key, ledger, refund.amount)


def stored_reading(conn: Connection, account: str, key: str) -> PaymentReading | None:
    """The provider's reading of this payment, if refundq read it before (under any of its keys)."""
    row = conn.execute(
        select(P.currency, P.refundable, P.detail).where(
            P.account == account, P.key == key, P.source == "provider", P.refundable.is_not(None)
        )
    ).first()
    if row is None:
        return None
    detail = dict(row.detail)
    return PaymentReading(str(detail.pop(CANONICAL, key)), row.refundable, row.currency, detail)


def holder_of(conn: Connection, account: str, exclusive_key: str, refund_id: str) -> str | None:
    """Another live refund holding this one-per-invoice key, if any."""
    row = conn.execute(
        select(R.id).where(and_(R.account == account, R.exclusive_key == exclusive_key, R.id != refund_id))
    ).first()
    return None if row is None else str(row.id)
