"""Pass 1 of a batch import: every row parsed and validated, duplicates inside the file and
keys already stored with another payload found, the valid rows spooled for pass 2."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, NamedTuple

from sqlalchemy import (
    Connection,
    String,
    any_,
    bindparam,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY

from providers import get_adapter
from providers.base import Adapter
from worker.batch.rows import BatchFileError, RowError, read_rows
from worker.models import refund_table
from worker.producer import COMPARED_FIELDS
from worker.runtime import Runtime
from worker.validation import RefundRequest, ValidationFailed, parse_request, validate

R = refund_table.c

LOOKUP_CHUNK = 2_000  # keys per "already in the database?" query
MAX_REPORTED = 1_000  # bad rows kept in memory for the report; all of them go to the rejects file

Progress = Callable[[str, int, int | None], None]  # (phase, rows done, total or None)


class BatchInvalid(ValueError):
    """Some rows are bad and skip_invalid was not asked for: nothing was stored."""

    def __init__(self, errors: list[RowError], bad_rows: int, rows: int) -> None:
        self.errors, self.bad_rows, self.rows = errors, bad_rows, rows
        shown = "\n".join(f"  {e}" for e in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{bad_rows} of {rows} rows are invalid; nothing was stored:\n{shown}{more}")


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class Validated:
    rows: int = 0
    bad: dict[int, list[RowError]] = field(default_factory=dict)  # row -> errors (bounded by MAX_REPORTED)
    bad_rows: set[int] = field(default_factory=set)
    existing: set[int] = field(default_factory=set)  # rows already stored with the same payload
    to_insert: int = 0

    def add(self, err: RowError) -> None:
        self.bad_rows.add(err.row)
        if sum(len(v) for v in self.bad.values()) < MAX_REPORTED:
            self.bad.setdefault(err.row, []).append(err)

    @property
    def errors(self) -> list[RowError]:
        return [e for row in sorted(self.bad) for e in self.bad[row]]


def _parse(data: Mapping[str, Any], n: int, rt: Runtime) -> RefundRequest | list[RowError]:
    key = data.get("idempotency_key")
    key = key if isinstance(key, str) else None
    try:
        request = parse_request(data)
    except ValidationFailed as exc:
        return [RowError(n, e.field, e.rule, key) for e in exc.errors]
    errors = validate(request, rt.accounts)
    if errors:
        return [RowError(n, e.field, e.rule, key) for e in errors]
    return request


_adapters: dict[str, Adapter] = {}


def _adapter(provider: str) -> Adapter:
    adapter = _adapters.get(provider)
    if adapter is None:
        adapter = _adapters[provider] = get_adapter(provider)
    return adapter


def _invoice(request: RefundRequest) -> str | None:
    return _adapter(request.provider).exclusive_key(request.spec("validation"))


def _one_of(conn: Connection, column: Any, values: list[str]) -> Any:
    """`column IN (values)`; on PostgreSQL as `= ANY(array)`, one parameter instead of thousands
    (the IN list made each 2,000-key lookup spend ~15 ms building and converting the query)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(String)))
    return column.in_(values)


def _check_db(conn: Connection, pending: list[tuple[int, RefundRequest, str | None]], result: Validated) -> None:
    """Keys that exist with another payload, and invoices another refund already holds."""
    keys = [r.idempotency_key for _, r, _ in pending]
    found = {
        row.idempotency_key: row
        for row in conn.execute(
            select(R.id, R.idempotency_key, R.batch_id, *(R[f] for f in COMPARED_FIELDS)).where(
                _one_of(conn, R.idempotency_key, keys)
            )
        )
    }
    invoices = {(r.account, inv) for _, r, inv in pending if inv}
    held: dict[tuple[str, str], str] = {}
    if invoices:
        rows = conn.execute(
            select(R.id, R.account, R.exclusive_key, R.idempotency_key).where(
                _one_of(conn, R.exclusive_key, [inv for _, inv in invoices])
            )
        )
        held = {
            (r.account, r.exclusive_key): r.idempotency_key for r in rows if (r.account, r.exclusive_key) in invoices
        }
    for n, request, inv in pending:
        row = found.get(request.idempotency_key)
        if row is not None:
            differing = [f for f in COMPARED_FIELDS if getattr(row, f) != getattr(request, f)]
            if differing:
                result.add(
                    RowError(
                        n,
                        "idempotency_key",
                        f"already names refund {row.id} with different {', '.join(differing)}",
                        request.idempotency_key,
                    )
                )
            else:
                result.existing.add(n)
            continue
        if inv and (request.account, inv) in held:
            result.add(
                RowError(
                    n,
                    "fields",
                    f"{inv} already has a refund (key {held[(request.account, inv)]}); "
                    "this provider allows one refund per invoice",
                    request.idempotency_key,
                )
            )


# What pass 1 hands to pass 2 for each valid row, through the spool file: the checked values, so
# the file is not read, parsed and validated a second time.
# (row, key, provider, account, amount, currency, destination, fields, exclusive key, deadline hours,
# paid amount, payment key)
class Spooled(NamedTuple):
    """A validated row, carried from pass 1 to pass 2 (fields named as producer.refund_row reads them)."""

    row: int
    idempotency_key: str
    provider: str
    account: str
    amount: Decimal
    currency: str
    destination: str
    fields: dict[str, Any]
    exclusive_key: str | None
    deadline_hours: float | None
    paid_amount: Decimal | None
    payment_key: str


def spool_block(spool: IO[bytes], block: list[Spooled]) -> None:
    pickle.dump(block, spool, protocol=pickle.HIGHEST_PROTOCOL)
    block.clear()


def spooled(spool: IO[bytes]) -> Iterator[Spooled]:
    spool.seek(0)
    while True:
        try:
            block: list[Spooled] = pickle.load(spool)  # our own temporary file, written just before
        except EOFError:
            return
        yield from block


def validate_file(path: Path, fmt: str, rt: Runtime, progress: Progress | None, spool: IO[bytes]) -> Validated:
    """Pass 1. Each row that parses and validates is also written to `spool` (blocks of
    LOOKUP_CHUNK rows, so memory stays bounded); rows found bad later (duplicates, keys in the
    database) are skipped by pass 2 through result.bad_rows / result.existing."""
    result = Validated()
    block: list[Spooled] = []
    seen_keys: set[int] = set()
    seen_invoices: set[int] = set()
    dup_keys: set[str] = set()
    dup_invoices: set[str] = set()
    pending: list[tuple[int, RefundRequest, str | None]] = []

    def lookup() -> None:
        # One short connection per block, none held while the file is parsed: on SQLite a long
        # read would pin the WAL, and before deferred reads it blocked every worker's write.
        with rt.engine.connect() as conn:
            _check_db(conn, pending, result)
        pending.clear()

    for n, item in read_rows(path, fmt):
        result.rows += 1
        if isinstance(item, RowError):
            result.add(item)
            continue
        parsed = _parse(item, n, rt)
        if isinstance(parsed, list):
            for err in parsed:
                result.add(err)
            continue
        h = _h(parsed.idempotency_key)
        if h in seen_keys:
            dup_keys.add(parsed.idempotency_key)
        seen_keys.add(h)
        inv = _invoice(parsed)
        if inv:
            hi = _h(f"{parsed.account}\x00{inv}")
            if hi in seen_invoices:
                dup_invoices.add(f"{parsed.account}\x00{inv}")
            seen_invoices.add(hi)
        pending.append((n, parsed, inv))
        block.append(
            Spooled(
                n,
                parsed.idempotency_key,
                parsed.provider,
                parsed.account,
                parsed.amount,
                parsed.currency,
                parsed.destination,
                parsed.fields,
                inv,
                parsed.deadline_hours,
                parsed.paid_amount,
                _adapter(parsed.provider).payment_key(parsed.spec("validation")),
            )
        )
        if len(pending) >= LOOKUP_CHUNK:
            lookup()
            spool_block(spool, block)
        if progress and result.rows % 5_000 == 0:
            progress("validate", result.rows, None)
    if pending:
        lookup()
    if block:
        spool_block(spool, block)
    if result.rows == 0:
        raise BatchFileError(f"{path.name} holds no refund rows")
    if dup_keys or dup_invoices:
        _report_duplicates(path, fmt, dup_keys, dup_invoices, result)
    result.to_insert = result.rows - len(result.bad_rows | result.existing)
    if progress:
        progress("validate", result.rows, result.rows)
    return result


def _report_duplicates(path: Path, fmt: str, keys: set[str], invoices: set[str], result: Validated) -> None:
    """A second, cheap pass for the few keys the hash set flagged: every row after the first
    with the same key (or the same invoice) is bad. A hash collision reports nothing."""
    first_key: dict[str, int] = {}
    first_invoice: dict[str, int] = {}
    for n, item in read_rows(path, fmt):
        if isinstance(item, RowError):
            continue
        key = item.get("idempotency_key")
        if isinstance(key, str) and key in keys:
            if key in first_key:
                result.add(RowError(n, "idempotency_key", f"duplicate of row {first_key[key]}", key))
                result.existing.discard(n)
            else:
                first_key[key] = n
        if invoices and n not in result.bad_rows:
            try:
                request = parse_request(item)
            except ValidationFailed:
                continue
            inv = _invoice(request)
            marker = f"{request.account}\x00{inv}"
            if inv and marker in invoices:
                if marker in first_invoice:
                    result.add(
                        RowError(
                            n,
                            "fields",
                            f"refunds invoice {inv} again (row {first_invoice[marker]} already does); "
                            "this provider allows one refund per invoice",
                            request.idempotency_key,
                        )
                    )
                else:
                    first_invoice[marker] = n


def write_rejects(path: Path, fmt: str, bad_rows: set[int], errors: dict[int, list[RowError]], out: Path) -> None:
    """The rejected rows as JSON lines: row number, the reasons, and the row as read."""
    with out.open("w", encoding="utf-8") as f:
        for n, item in read_rows(path, fmt):
            if n not in bad_rows:
                continue
            reasons = [f"{e.field}: {e.rule}" for e in errors.get(n, [])] or ["invalid (see the report)"]
            row = item if isinstance(item, dict) else None
            f.write(json.dumps({"row": n, "errors": reasons, "data": row}, default=str) + "\n")
