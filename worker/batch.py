"""Bulk refunds from a file (CSV or JSON lines): validate every row, store it all or nothing, publish.

    from worker.batch import enqueue_batch
    result = enqueue_batch("refunds.csv", name="recall 2026-11")

Two streaming passes over the file, so memory stays bounded whatever its size (1M rows: the
only per-row state is a 64-bit hash per key and per invoice, for duplicate detection):

1. validation: every row is parsed and validated (`parse_request` + `validate`), duplicate keys
   and invoices inside the file are found, and keys that already exist in the database with
   another payload are reported. Each bad row is reported with its row number, field and rule.
   By default nothing is stored when any row is bad; `skip_invalid` stores the valid ones and
   writes the rejects to a file. The database is read in blocks, one short connection each.
2. store, all or nothing: the rows are staged, `batch_chunk` at a time, in a TEMPORARY table of
   the import's own connection (invisible to everyone else, gone with the connection, even
   after a SIGKILL), then one write transaction inserts the batch row, every refund and every
   first event with `INSERT ... SELECT` and commits. Nothing of the batch is visible before that
   commit. A conflict found there (another producer stored a key or an invoice of this file
   meanwhile) refuses the whole file with `BatchConflict`, naming each row and key.
3. publish, only after the commit: the submit work as fan-out messages of `publish_chunk` ids
   (one message per row is too slow: ~1k/s). A crash before it is covered by next_action_at
   (set at the commit, database clock, + publish_grace): the dispatcher sends them then.

Re-submitting the same file (same SHA-256) returns the existing batch. A batch left half-stored
by a refundq from before atomic imports is completed (rows already stored are skipped).
Counters move with every transition (store.transition -> store.count_batch_move).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import pickle
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, NamedTuple

import structlog
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    any_,
    bindparam,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError

from providers import get_adapter
from providers.base import Adapter, RefundStatus
from worker import operator, store
from worker.db import begin_write
from worker.models import BATCH_STATUSES, Batch, Refund, batch_table, event_table, refund_table, utcnow
from worker.operator import retry_key  # noqa: F401  (re-exported: batch retry keys)
from worker.producer import COMPARED_FIELDS, refund_row
from worker.runtime import Runtime, get_runtime
from worker.validation import RefundRequest, ValidationFailed, parse_request, validate

log = structlog.get_logger("refundq.batch")
R = refund_table.c
B = batch_table.c
S = RefundStatus

REQUIRED_COLUMNS = ("idempotency_key", "provider", "account", "amount", "currency", "destination")
OPTIONAL_COLUMNS = ("fields", "deadline_hours")
FIELD_PREFIX = "fields."  # CSV: one column per provider field, e.g. `fields.order_id`
LOOKUP_CHUNK = 2_000  # keys per "already in the database?" query
MAX_REPORTED = 1_000  # bad rows kept in memory for the report; all of them go to the rejects file

Progress = Callable[[str, int, int | None], None]  # (phase, rows done, total or None)


class BatchFileError(ValueError):
    """The file as a whole cannot be read (encoding, columns, empty, not CSV/JSON lines)."""


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based data row (CSV: the header is not a row; JSON lines: the line number)
    field: str
    rule: str
    key: str | None = None

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.rule}"


class BatchInvalid(ValueError):
    """Some rows are bad and skip_invalid was not asked for: nothing was stored."""

    def __init__(self, errors: list[RowError], bad_rows: int, rows: int) -> None:
        self.errors, self.bad_rows, self.rows = errors, bad_rows, rows
        shown = "\n".join(f"  {e}" for e in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{bad_rows} of {rows} rows are invalid; nothing was stored:\n{shown}{more}")


class BatchConflict(BatchInvalid):
    """Rows that were valid when the file was validated conflict at the commit: another producer
    stored the same idempotency key, or a refund of the same invoice, meanwhile. The whole file
    was refused (nothing was stored); submitting it again validates it against what is there now."""


@dataclass
class BatchResult:
    batch: Batch
    created: bool  # False: this file was submitted before (the batch is returned as it is)
    rows: int = 0
    inserted: int = 0
    already_stored: int = 0  # rows whose key already existed with the same payload
    rejected: int = 0
    errors: list[RowError] = field(default_factory=list)
    rejects_file: Path | None = None
    published: int = 0  # refunds whose submit work was published (the rest: dispatcher, later)

    @property
    def message(self) -> str:
        if not self.created and not self.inserted:
            return f"batch {self.batch.id} already exists for this file ({self.batch.inserted} refunds)"
        parts = [f"batch {self.batch.id}: {self.inserted} refunds accepted"]
        if self.already_stored:
            parts.append(f"{self.already_stored} already stored")
        if self.rejected:
            parts.append(f"{self.rejected} rejected (see {self.rejects_file})")
        return ", ".join(parts)


# --- reading -------------------------------------------------------------------------------------


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    with path.open("rb") as f:
        head = f.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    return "jsonl" if head.startswith(b"{") else "csv"


def _text(path: Path) -> io.TextIOWrapper:
    # utf-8-sig: a BOM (Excel's CSV export) is skipped; any invalid byte raises UnicodeDecodeError.
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8-sig", errors="strict", newline="")


def _cell(value: str) -> Any:
    """A CSV provider-field cell: JSON numbers without a fraction, booleans and null become values."""
    text = value.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return value
    return parsed if isinstance(parsed, bool | int) or parsed is None else value


def _check_columns(header: Sequence[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise BatchFileError(f"missing column(s): {', '.join(missing)} (required: {', '.join(REQUIRED_COLUMNS)})")
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS and not c.startswith(FIELD_PREFIX)]
    if unknown:
        raise BatchFileError(
            f"unknown column(s): {', '.join(unknown)} (provider fields go in a `fields` JSON column "
            f"or in `{FIELD_PREFIX}<name>` columns)"
        )
    seen: set[str] = set()
    dupes = [c for c in header if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
    if dupes:
        raise BatchFileError(f"column(s) named twice: {', '.join(dupes)}")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with _text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        _check_columns(header)
        for n, cells in enumerate(reader, start=1):
            if not "".join(cells).strip():
                continue  # a blank line (every cell empty or whitespace)
            if len(cells) != len(header):
                yield n, RowError(n, "row", f"has {len(cells)} cells, the header has {len(header)}")
                continue
            data: dict[str, Any] = {}
            fields: dict[str, Any] = {}
            error: RowError | None = None
            for name, value in zip(header, cells, strict=True):
                if name.startswith(FIELD_PREFIX):
                    if value.strip():
                        fields[name.removeprefix(FIELD_PREFIX)] = _cell(value)
                elif name == "fields":
                    if value.strip():
                        try:
                            parsed = json.loads(value)
                        except ValueError:
                            error = RowError(n, "fields", "must be a JSON object")
                            break
                        if not isinstance(parsed, dict):
                            error = RowError(n, "fields", "must be a JSON object")
                            break
                        fields.update(parsed)
                elif name == "deadline_hours":
                    if value.strip():
                        data[name] = value.strip()
                else:
                    data[name] = value
            if error is not None:
                yield n, error
                continue
            data["fields"] = fields
            yield n, data


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with _text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, RowError(n, "row", f"is not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(data, dict):
                yield n, RowError(n, "row", "must be a JSON object")
                continue
            missing = [c for c in REQUIRED_COLUMNS if c not in data]
            if missing:
                # Per row in JSON lines (each line names its own keys), but said like a column.
                yield n, RowError(n, missing[0], "is required (missing column)")
                continue
            yield n, data


def read_rows(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """(row number, raw row or a row-level error), streamed. BatchFileError for file-level problems."""
    fmt = fmt or detect_format(path)
    rows = _csv_rows(path) if fmt == "csv" else _jsonl_rows(path)
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raise BatchFileError(
            f"{path.name} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} near byte offset "
            f"{exc.start} of a read block); save it as UTF-8 and submit again"
        ) from None
    except csv.Error as exc:
        raise BatchFileError(f"{path.name}: not a readable CSV file: {exc}") from None


# --- validation ----------------------------------------------------------------------------------


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class _Validated:
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


def _check_db(conn: Connection, pending: list[tuple[int, RefundRequest, str | None]], result: _Validated) -> None:
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
# (row, key, provider, account, amount, currency, destination, fields, exclusive key, deadline hours)
class _Spooled(NamedTuple):
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


def _spool_block(spool: IO[bytes], block: list[_Spooled]) -> None:
    pickle.dump(block, spool, protocol=pickle.HIGHEST_PROTOCOL)
    block.clear()


def _spooled(spool: IO[bytes]) -> Iterator[_Spooled]:
    spool.seek(0)
    while True:
        try:
            block: list[_Spooled] = pickle.load(spool)  # our own temporary file, written just before
        except EOFError:
            return
        yield from block


def _validate_file(path: Path, fmt: str, rt: Runtime, progress: Progress | None, spool: IO[bytes]) -> _Validated:
    """Pass 1. Each row that parses and validates is also written to `spool` (blocks of
    LOOKUP_CHUNK rows, so memory stays bounded); rows found bad later (duplicates, keys in the
    database) are skipped by pass 2 through result.bad_rows / result.existing."""
    result = _Validated()
    block: list[_Spooled] = []
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
            _Spooled(
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
            )
        )
        if len(pending) >= LOOKUP_CHUNK:
            lookup()
            _spool_block(spool, block)
        if progress and result.rows % 5_000 == 0:
            progress("validate", result.rows, None)
    if pending:
        lookup()
    if block:
        _spool_block(spool, block)
    if result.rows == 0:
        raise BatchFileError(f"{path.name} holds no refund rows")
    if dup_keys or dup_invoices:
        _report_duplicates(path, fmt, dup_keys, dup_invoices, result)
    result.to_insert = result.rows - len(result.bad_rows | result.existing)
    if progress:
        progress("validate", result.rows, result.rows)
    return result


def _report_duplicates(path: Path, fmt: str, keys: set[str], invoices: set[str], result: _Validated) -> None:
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


def _write_rejects(path: Path, fmt: str, bad_rows: set[int], errors: dict[int, list[RowError]], out: Path) -> None:
    """The rejected rows as JSON lines: row number, the reasons, and the row as read."""
    with out.open("w", encoding="utf-8") as f:
        for n, item in read_rows(path, fmt):
            if n not in bad_rows:
                continue
            reasons = [f"{e.field}: {e.rule}" for e in errors.get(n, [])] or ["invalid (see the report)"]
            row = item if isinstance(item, dict) else None
            f.write(json.dumps({"row": n, "errors": reasons, "data": row}, default=str) + "\n")


# --- storing -------------------------------------------------------------------------------------


def get_batch(conn: Connection, batch_id: str) -> Batch | None:
    row = conn.execute(select(batch_table).where(B.id == batch_id)).first()
    return None if row is None else Batch.model_validate(dict(row._mapping))


def _batch_by_hash(conn: Connection, source_hash: str) -> Batch | None:
    row = conn.execute(select(batch_table).where(B.source_hash == source_hash)).first()
    return None if row is None else Batch.model_validate(dict(row._mapping))


def _new_batch_values(name: str, source_hash: str, total: int, retry_of: str | None = None) -> dict[str, Any]:
    return {
        "id": "bt_" + uuid.uuid4().hex,
        "name": name[:200],
        "source_hash": source_hash,
        "total": total,
        "retry_of": retry_of,
        **{f"n_{s}": 0 for s in BATCH_STATUSES},
        "created_at": utcnow(),
        "finished_at": None,
    }


def _insert_chunk(conn: Connection, batch_id: str, values: list[dict[str, Any]], reason: str) -> None:
    if conn.dialect.name == "postgresql":
        store.copy_refunds(conn, values, reason=reason)  # COPY: several times faster than executemany
    else:
        store.insert_refunds(conn, values, reason=reason)
    conn.execute(update(batch_table).where(B.id == batch_id).values(n_queued=B.n_queued + len(values)))


def publish_submits(refund_ids: Sequence[str], chunk: int) -> int:
    """Publish the submit work as fan-out messages of `chunk` ids over one pipelined producer
    (`refundq.submit_many` re-publishes one `refundq.submit` per id on a worker). Returns how many
    ids were published; 0 when the broker is down (the rows stay due: the dispatcher sends them)."""
    if not refund_ids:
        return 0
    from worker.app import celery_app

    try:
        with celery_app.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for i in range(0, len(refund_ids), chunk):
                celery_app.send_task(
                    "refundq.submit_many",
                    args=[list(refund_ids[i : i + chunk])],
                    queue="refundq.submit",
                    producer=producer,
                )
    except Exception as exc:  # broker down: next_action_at makes the dispatcher deliver them
        log.warning("batch_publish_failed", error=f"{type(exc).__name__}: {exc}", refunds=len(refund_ids))
        return 0
    return len(refund_ids)


def fan_out(refund_ids: Sequence[str]) -> int:
    """Worker side of `refundq.submit_many`: one `refundq.submit` per id, pipelined."""
    from worker.app import celery_app

    with celery_app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for refund_id in refund_ids:
            celery_app.send_task("refundq.submit", args=[refund_id], queue="refundq.submit", producer=producer)
    return len(refund_ids)


def _spool(rows: Iterable[Mapping[str, Any]]) -> Path:
    """Rows given in Python go through a temporary JSON-lines file: one code path, one hash."""
    fd, name = tempfile.mkstemp(prefix="refundq-batch-", suffix=".jsonl")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), default=str, sort_keys=True) + "\n")
    return Path(name)


def enqueue_batch(
    source: str | Path | Iterable[Mapping[str, Any]],
    *,
    name: str | None = None,
    skip_invalid: bool = False,
    rejects: str | Path | None = None,
    rt: Runtime | None = None,
    progress: Progress | None = None,
    publish: bool = True,
) -> BatchResult:
    """Validate a whole file of refunds, store it as one batch, publish its submit work.

    All or nothing: the batch and every refund of it are committed together, then published.
    Raises BatchFileError (unreadable file), BatchInvalid (bad rows and not skip_invalid) or
    BatchConflict (a row another producer took between validation and the commit); nothing is
    stored then. `rejects` (skip_invalid): where the rejected rows go (JSON lines;
    default: beside the file, `<file>.rejects.jsonl`)."""
    rt = rt or get_runtime()
    spooled = not isinstance(source, str | Path)
    path = _spool(source) if not isinstance(source, str | Path) else Path(source)
    try:
        if not path.is_file():
            raise BatchFileError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise BatchFileError(f"{path.name} is empty")
        fmt = detect_format(path)
        source_hash = file_hash(path)
        with rt.engine.connect() as conn:
            existing = _batch_by_hash(conn, source_hash)
        if existing is not None and existing.inserted >= existing.total:
            return BatchResult(existing, created=False)
        # The spool carries the validated rows from pass 1 to pass 2; on disk (memory stays
        # bounded whatever the file's size), already unlinked: gone when closed, even on a crash.
        with tempfile.TemporaryFile(prefix="refundq-batch-spool-") as spool:
            checked = _validate_file(path, fmt, rt, progress, spool)
            if checked.bad_rows and not skip_invalid:
                raise BatchInvalid(checked.errors, len(checked.bad_rows), checked.rows)
            rejects_path: Path | None = None
            if checked.bad_rows:
                rejects_path = Path(rejects) if rejects else path.with_name(path.name + ".rejects.jsonl")
                _write_rejects(path, fmt, checked.bad_rows, checked.bad, rejects_path)
            result = _store(spool, rt, checked, existing, name or path.name, source_hash, progress, publish)
        result.rejected, result.errors, result.rejects_file = len(checked.bad_rows), checked.errors, rejects_path
        log.info(
            "batch_accepted",
            batch_id=result.batch.id,
            rows=checked.rows,
            inserted=result.inserted,
            rejected=result.rejected,
            already_stored=result.already_stored,
        )
        return result
    finally:
        if spooled:
            path.unlink(missing_ok=True)


def _refund_ids(n: int) -> list[str]:
    """n ids as producer.new_refund_id makes them ("rf_" + a uuid4), from one urandom call."""
    raw = os.urandom(16 * n)
    return ["rf_" + uuid.UUID(bytes=raw[i : i + 16], version=4).hex for i in range(0, 16 * n, 16)]


def _chunk_values(items: list[_Spooled], rt: Runtime, batch_id: str) -> list[dict[str, Any]]:
    """producer.refund_row for each row (plus its row number, for error reports), with one clock
    reading and one urandom call per chunk. exclusive_key(spec) reads the fields, never the
    refund id, so pass 1's value holds."""
    now = utcnow()
    return [
        {
            **refund_row(
                refund_id, item, exclusive_key=item.exclusive_key, settings=rt.settings, now=now, batch_id=batch_id
            ),
            STAGE_ROW: item.row,
        }
        for refund_id, item in zip(_refund_ids(len(items)), items, strict=True)
    ]


# The staging table: refund's columns without its constraints or indexes, plus the file's row
# number. TEMPORARY: private to the import's connection and dropped with it, so a crashed or
# refused import leaves nothing behind and parallel imports never see each other's rows.
STAGE_ROW = "batch_row"
STAGE = Table(
    "refund_stage",
    MetaData(),
    *(Column(c.name, c.type) for c in refund_table.columns),
    Column(STAGE_ROW, Integer),
    prefixes=["TEMPORARY"],
)


def _stage_chunk(conn: Connection, values: list[dict[str, Any]]) -> None:
    if conn.dialect.name == "postgresql":
        store.copy_rows(conn, STAGE, values)  # COPY: several times faster than executemany
    else:
        conn.execute(insert(STAGE), values)


def _commit_stage(
    conn: Connection, batch: dict[str, Any] | Batch, columns: list[str], staged: int, reason: str, publish_grace: float
) -> None:
    """In the caller's write transaction: the batch row (new, or a legacy half batch's counter),
    then every staged refund and its first event. `next_action_at` is set here, on the database
    clock: publish_grace counts from the commit, not from when the chunk was built (a large
    import takes longer than the grace). `columns`: those refund_row set; the others keep their
    defaults (claim's is the server's)."""
    if isinstance(batch, Batch):
        conn.execute(update(batch_table).where(B.id == batch.id).values(n_queued=B.n_queued + staged))
    else:
        conn.execute(insert(batch_table).values(**{**batch, "total": staged, "n_queued": staged}))
    if not staged:
        return
    due = store.db_time(conn, publish_grace)
    values = [due.label(c) if c == "next_action_at" else STAGE.c[c] for c in columns]
    conn.execute(insert(refund_table).from_select(columns, select(*values)))
    E = event_table.c
    first_event = select(
        STAGE.c.id,
        literal(None, E.from_status.type),
        STAGE.c.status,
        literal(reason, E.reason.type),
        literal(utcnow(), E.created_at.type),
    )
    conn.execute(
        insert(event_table).from_select(["refund_id", "from_status", "to_status", "reason", "created_at"], first_event)
    )


def _conflicts(conn: Connection) -> list[RowError]:
    """After a refused commit: which staged rows collide with a refund stored meanwhile (the same
    key, or the same invoice of the same account), by row number, first MAX_REPORTED."""
    by_key = conn.execute(
        select(STAGE.c[STAGE_ROW], STAGE.c.idempotency_key, R.id)
        .join(refund_table, R.idempotency_key == STAGE.c.idempotency_key)
        .order_by(STAGE.c[STAGE_ROW])
        .limit(MAX_REPORTED)
    ).all()
    by_invoice = conn.execute(
        select(STAGE.c[STAGE_ROW], STAGE.c.idempotency_key, STAGE.c.exclusive_key, R.idempotency_key.label("holder"))
        .join(refund_table, (R.account == STAGE.c.account) & (R.exclusive_key == STAGE.c.exclusive_key))
        .order_by(STAGE.c[STAGE_ROW])
        .limit(MAX_REPORTED)
    ).all()
    errors = {
        r[0]: RowError(
            r[0],
            "idempotency_key",
            f"{r.idempotency_key} was stored by another producer during this import (refund {r.id})",
            r.idempotency_key,
        )
        for r in by_key
    }
    for r in by_invoice:
        errors.setdefault(
            r[0],
            RowError(
                r[0],
                "fields",
                f"{r.exclusive_key} was given a refund (key {r.holder}) by another producer during this import; "
                f"this provider allows one refund per invoice (row key {r.idempotency_key})",
                r.idempotency_key,
            ),
        )
    return [errors[n] for n in sorted(errors)]


def _store(
    spool: IO[bytes],
    rt: Runtime,
    checked: _Validated,
    existing: Batch | None,
    name: str,
    source_hash: str,
    progress: Progress | None,
    publish: bool,
) -> BatchResult:
    settings = rt.settings
    skip = checked.bad_rows | checked.existing
    # A new batch row, inserted at the commit; or a legacy half batch (stored before atomic
    # imports), whose counters the commit raises.
    target = existing if existing is not None else _new_batch_values(name, source_hash, checked.to_insert)
    batch_id = target.id if isinstance(target, Batch) else target["id"]
    staged = 0
    columns: list[str] = []
    reason = f"accepted in batch {batch_id}"
    # One connection for the whole import: the staging table lives in its session. It is never
    # returned to the pool (invalidated below), so no pooled session keeps a staging table.
    conn = rt.engine.connect()
    try:
        STAGE.create(conn)
        conn.commit()

        def stage(values: list[dict[str, Any]]) -> None:
            nonlocal staged
            if not columns:
                columns.extend(c for c in values[0] if c != STAGE_ROW)
            # Its own transaction, begun through SQLAlchemy (COPY goes around it on PostgreSQL), so
            # the staged rows outlive a refused commit for _conflicts. SQLite: deferred; writes to
            # a TEMP table take no lock on the main database.
            with conn.begin():
                _stage_chunk(conn, values)
            staged += len(values)
            if progress:
                progress("insert", staged, checked.to_insert)

        # One writer thread: chunk k is staged (the database works, the GIL is free) while chunk
        # k+1 is read from the spool and built. Only the writer uses `conn` until it is done.
        chunk: list[_Spooled] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refundq-batch-writer") as writer:
            in_flight: Future[None] | None = None
            for item in _spooled(spool):
                if item[0] in skip:
                    continue
                chunk.append(item)
                if len(chunk) >= settings.batch_chunk:
                    built = _chunk_values(chunk, rt, batch_id)
                    if in_flight is not None:
                        in_flight.result()
                    in_flight, chunk = writer.submit(stage, built), []
            if in_flight is not None:
                in_flight.result()
        if chunk:
            stage(_chunk_values(chunk, rt, batch_id))
        try:
            with begin_write(conn):  # the one write transaction: all of it, or nothing
                _commit_stage(conn, target, columns, staged, reason, settings.publish_grace)
        except IntegrityError:
            if existing is None:
                other = _batch_by_hash(conn, source_hash)
                if other is not None:  # the same file, imported by another run meanwhile
                    conn.rollback()
                    return BatchResult(other, created=False, rows=checked.rows)
            errors = _conflicts(conn)
            conn.rollback()
            if not errors:
                raise
            raise BatchConflict(errors, len(errors), checked.rows) from None
        result = BatchResult(target if isinstance(target, Batch) else Batch.model_validate(target), existing is None)
        result.rows, result.already_stored, result.inserted = checked.rows, len(checked.existing), staged
        if publish:
            result.published = _publish_staged(conn, settings.batch_publish_chunk, progress, staged)
        stored = get_batch(conn, batch_id)
        assert stored is not None
        result.batch = stored
        return result
    finally:
        conn.invalidate()  # the session, and its staging table, end here
        conn.close()


def _publish_staged(conn: Connection, chunk: int, progress: Progress | None, total: int) -> int:
    """After the commit: the submit work of every staged refund, read back from the staging
    table in blocks (memory stays bounded). Stops at the first failed block: the broker is down,
    and the rows' next_action_at makes the dispatcher deliver them."""
    published = 0
    rows = conn.execute(select(STAGE.c.id).execution_options(yield_per=10_000))
    for block in rows.partitions():
        sent = publish_submits([r.id for r in block], chunk)
        if not sent:
            break
        published += sent
        if progress:
            progress("publish", published, total)
    rows.close()
    conn.rollback()  # end the read transaction
    return published


# --- retry and cancel ----------------------------------------------------------------------------


RETRYABLE = frozenset({S.FAILED, S.REJECTED, S.NEEDS_ATTENTION, S.CANCELLED})
RETRY_CHUNK = 500  # old refunds judged and retried per transaction


@dataclass
class RetryResult:
    batch: Batch | None  # the new batch holding the new attempts (None: nothing to retry)
    retried: int
    skipped: list[str]  # "refund id: why"


def _retry_page(
    conn: Connection, batch_id: str, statuses: Sequence[S], after: tuple[Any, str] | None, limit: int
) -> list[Refund]:
    """The next `limit` refunds of the batch in `statuses` not retried yet, in (created_at, id) order."""
    retried_ids = select(R.retry_of).where(R.retry_of.is_not(None))
    query = select(refund_table).where(
        R.batch_id == batch_id, R.status.in_([s.value for s in statuses]), R.id.not_in(retried_ids)
    )
    if after is not None:
        query = query.where(or_(R.created_at > after[0], and_(R.created_at == after[0], R.id > after[1])))
    rows = conn.execute(query.order_by(R.created_at, R.id).limit(limit))
    return [Refund.model_validate(dict(r._mapping)) for r in rows]


def retry(
    batch_id: str,
    status: str | Sequence[str] = "failed",
    *,
    rt: Runtime | None = None,
    publish: bool = True,
    by: str = "an operator",
    chunk: int = RETRY_CHUNK,
) -> RetryResult:
    """New attempts, in a new batch linked to this one (Batch.retry_of), for the batch's refunds in
    `status` that were not retried yet and that the rule of worker/actions.py allows (the others
    are in `skipped` with the reason); each new refund links to its old one (Refund.retry_of) and
    carries its first attempt's request id (worker/operator.py). Pages of `chunk` refunds, each
    judged and retried in one transaction. Running it twice retries nothing twice."""
    rt = rt or get_runtime()
    statuses = [S(status)] if isinstance(status, str) else [S(s) for s in status]
    bad = [s.value for s in statuses if s not in RETRYABLE]
    if bad:
        raise ValueError(f"cannot retry refunds that are {', '.join(bad)} (retryable: failed, rejected, ...)")
    with rt.engine.connect() as conn:
        batch = get_batch(conn, batch_id)
    if batch is None:
        raise LookupError(f"no batch {batch_id}")
    skipped: list[str] = []
    retry_batch_id: str | None = None
    retried = 0
    after: tuple[Any, str] | None = None
    while True:
        with rt.engine.begin() as conn:
            page = _retry_page(conn, batch_id, statuses, after, chunk)
            if not page:
                break
            after = (page[-1].created_at, page[-1].id)
            late = store.late_answers_for(conn, [r.id for r in page])
            planned: list[tuple[Refund, dict[str, Any], str]] = []
            for refund in page:
                verdict = operator.judge_retry(refund, late.get(refund.id, []), None)
                if not verdict.allowed:
                    skipped.append(verdict.reason)
                    continue
                try:
                    planned.append((refund, operator.retry_values(refund, rt), verdict.reason))
                except ValidationFailed as exc:
                    skipped.append(f"{refund.id}: {exc}")
            if not planned:
                continue
            if retry_batch_id is None:
                statuses_text = "+".join(s.value for s in statuses)
                # total starts at 1: a guard that keeps finished_at unset until the last page is in.
                values = _new_batch_values(
                    f"{batch.name} (retry {statuses_text})", f"retry:{batch_id}:{uuid.uuid4().hex}", 1, batch_id
                )
                retry_batch_id = values["id"]
                conn.execute(insert(batch_table).values(**values))
            accepted: list[dict[str, Any]] = []
            for refund, v, why in planned:
                text = f"in batch {retry_batch_id} by {by}: {why}"
                if not operator.hand_over(conn, refund, v["id"], text):
                    skipped.append(f"{refund.id}: its status changed meanwhile")
                    continue
                v["batch_id"] = retry_batch_id
                accepted.append(v)
            if accepted:
                _insert_chunk(conn, retry_batch_id, accepted, f"retry of an earlier attempt (batch {batch_id}) by {by}")
                conn.execute(update(batch_table).where(B.id == retry_batch_id).values(total=B.total + len(accepted)))
        retried += len(accepted)
        if publish:
            publish_submits([v["id"] for v in accepted], rt.settings.batch_publish_chunk)
    if retry_batch_id is None:
        return RetryResult(None, 0, skipped)
    with rt.engine.begin() as conn:
        conn.execute(update(batch_table).where(B.id == retry_batch_id).values(total=B.total - 1))
        store.finish_if_done(conn, retry_batch_id, utcnow())
        new_batch = get_batch(conn, retry_batch_id)
    log.info("batch_retry", batch_id=batch_id, retry_batch_id=retry_batch_id, retried=retried, skipped=len(skipped))
    return RetryResult(new_batch, retried, skipped)


def cancel(batch_id: str, *, rt: Runtime | None = None, chunk: int = 500) -> int:
    """Cancel the batch's refunds not yet submitted (queued -> cancelled, guarded: a refund a
    worker claims meanwhile is left alone). Returns how many were cancelled."""
    rt = rt or get_runtime()
    with rt.engine.connect() as conn:
        if get_batch(conn, batch_id) is None:
            raise LookupError(f"no batch {batch_id}")
        ids = [r.id for r in conn.execute(select(R.id).where(R.batch_id == batch_id, R.status == S.QUEUED.value))]
    cancelled = 0
    for i in range(0, len(ids), chunk):
        with rt.engine.begin() as conn:
            for refund_id in ids[i : i + chunk]:
                try:
                    store.transition(
                        conn,
                        refund_id,
                        S.QUEUED,
                        S.CANCELLED,
                        reason=f"batch {batch_id} cancelled by an operator",
                        values={"next_action_at": None},
                    )
                    cancelled += 1
                except store.LostRace:
                    continue
    log.info("batch_cancelled", batch_id=batch_id, cancelled=cancelled)
    return cancelled


# --- reading back --------------------------------------------------------------------------------


EXPORT_COLUMNS = (
    "id",
    "idempotency_key",
    "provider",
    "account",
    "amount",
    "currency",
    "destination",
    "status",
    "provider_status",
    "provider_refund_id",
    "reason",
    "retry_of",
    "attempts",
    "created_at",
    "updated_at",
)


def export_rows(conn: Connection, batch_id: str) -> Iterator[dict[str, Any]]:
    """One dict per refund of the batch, streamed (final status, provider ids, reason)."""
    query = select(refund_table).where(R.batch_id == batch_id).order_by(R.created_at, R.id)
    for row in conn.execution_options(yield_per=2_000).execute(query):
        r = Refund.model_validate(dict(row._mapping))
        yield {
            "id": r.id,
            "idempotency_key": r.idempotency_key,
            "provider": r.provider,
            "account": r.account,
            "amount": format(r.amount, "f"),
            "currency": r.currency,
            "destination": r.destination,
            "status": r.status,
            "provider_status": r.provider_status or "",
            "provider_refund_id": r.provider_refund_id or "",
            "reason": r.last_error or "",
            "retry_of": r.retry_of or "",
            "attempts": r.attempts,
            "created_at": r.created_at.isoformat(),
            "updated_at": r.updated_at.isoformat(),
        }


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...), +cmd|...),
# and provider text (`reason`) or a producer's key can start so. OWASP's advice: a leading quote.
# refundq's numbers are never negative, so no real value is changed by it.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def export(batch_id: str, out: io.TextIOBase | Any, fmt: str = "csv", *, rt: Runtime | None = None) -> int:
    rt = rt or get_runtime()
    n = 0
    with rt.engine.connect() as conn:
        if get_batch(conn, batch_id) is None:
            raise LookupError(f"no batch {batch_id}")
        if fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=list(EXPORT_COLUMNS))
            writer.writeheader()
            for row in export_rows(conn, batch_id):
                writer.writerow({k: neutralise_cell(v) for k, v in row.items()})
                n += 1
        elif fmt == "json":
            for row in export_rows(conn, batch_id):
                out.write(json.dumps(row) + "\n")
                n += 1
        else:
            raise ValueError(f"unknown format {fmt!r} (csv or json)")
    return n


def summary(conn: Connection, batch_id: str, limit: int = 5) -> dict[str, Any]:
    """For `refundq batch show`: counts per provider and status, the slowest and the failed refunds."""
    from sqlalchemy import func

    per_provider: dict[str, dict[str, int]] = {}
    for provider, status, n in conn.execute(
        select(R.provider, R.status, func.count()).where(R.batch_id == batch_id).group_by(R.provider, R.status)
    ):
        per_provider.setdefault(provider, {})[status] = n
    if conn.dialect.name == "sqlite":
        duration: Any = func.julianday(R.updated_at) - func.julianday(R.created_at)
    else:
        duration = R.updated_at - R.created_at
    terminal = [S.COMPLETED.value, S.FAILED.value, S.REJECTED.value, S.NEEDS_ATTENTION.value, S.CANCELLED.value]
    slow_rows = conn.execute(
        select(refund_table)
        .where(R.batch_id == batch_id, R.status.in_(terminal))
        .order_by(duration.desc())
        .limit(limit)
    )
    open_rows = conn.execute(
        select(refund_table)
        .where(R.batch_id == batch_id, R.status.not_in(terminal))
        .order_by(R.created_at)
        .limit(limit)
    )
    failed_rows = conn.execute(
        select(refund_table)
        .where(R.batch_id == batch_id, R.status.in_([S.FAILED.value, S.REJECTED.value, S.NEEDS_ATTENTION.value]))
        .order_by(R.updated_at.desc())
        .limit(limit * 2)
    )

    def refunds(rows: Iterable[Any]) -> list[Refund]:
        return [Refund.model_validate(dict(r._mapping)) for r in rows]

    return {
        "per_provider": per_provider,
        "slowest": refunds(slow_rows),
        "oldest_open": refunds(open_rows),
        "failed": refunds(failed_rows),
    }
