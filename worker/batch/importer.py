"""Pass 2 and 3 of a batch import: store it all or nothing (staging table, one commit), then publish."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from worker import ceiling, store
from worker.batch.rows import BatchFileError, RowError, detect_format, file_hash
from worker.batch.validate import (
    MAX_REPORTED,
    BatchInvalid,
    Progress,
    Spooled,
    Validated,
    spooled,
    validate_file,
    write_rejects,
)
from worker.db import begin_write
from worker.models import BATCH_STATUSES, Batch, batch_table, event_table, refund_table, utcnow
from worker.producer import refund_row
from worker.runtime import Runtime, get_runtime

log = structlog.get_logger("refundq.batch")
R = refund_table.c
B = batch_table.c


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


def get_batch(conn: Connection, batch_id: str) -> Batch | None:
    row = conn.execute(select(batch_table).where(B.id == batch_id)).first()
    return None if row is None else Batch.model_validate(dict(row._mapping))


def _batch_by_hash(conn: Connection, source_hash: str) -> Batch | None:
    row = conn.execute(select(batch_table).where(B.source_hash == source_hash)).first()
    return None if row is None else Batch.model_validate(dict(row._mapping))


def new_batch_values(name: str, source_hash: str, total: int, retry_of: str | None = None) -> dict[str, Any]:
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


def insert_chunk(conn: Connection, batch_id: str, values: list[dict[str, Any]], reason: str) -> None:
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
            checked = validate_file(path, fmt, rt, progress, spool)
            if checked.bad_rows and not skip_invalid:
                raise BatchInvalid(checked.errors, len(checked.bad_rows), checked.rows)
            rejects_path: Path | None = None
            if checked.bad_rows:
                rejects_path = Path(rejects) if rejects else path.with_name(path.name + ".rejects.jsonl")
                write_rejects(path, fmt, checked.bad_rows, checked.bad, rejects_path)
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


def _chunk_values(items: list[Spooled], rt: Runtime, batch_id: str) -> list[dict[str, Any]]:
    """producer.refund_row for each row (plus its row number, for error reports), with one clock
    reading and one urandom call per chunk. exclusive_key(spec) reads the fields, never the
    refund id, so pass 1's value holds."""
    now = utcnow()
    return [
        {
            **refund_row(
                refund_id,
                item,
                exclusive_key=item.exclusive_key,
                payment_key=item.payment_key,
                settings=rt.settings,
                now=now,
                batch_id=batch_id,
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


def _over_ceiling(conn: Connection) -> list[RowError]:
    """In the commit's transaction: the staged refunds against their payments' ceilings
    (worker/ceiling.py), in the file's row order, under the payments' locks. The rows refused,
    first MAX_REPORTED; none: the payments' stated amounts are stored with the batch."""
    row = STAGE.c[STAGE_ROW]

    def claims() -> Iterator[ceiling.Claim]:
        query = select(row, STAGE.c.account, STAGE.c.provider, STAGE.c.payment_key, STAGE.c.currency).add_columns(
            STAGE.c.amount, STAGE.c.paid_amount
        )
        for r in conn.execute(query.order_by(row)):
            yield ceiling.Claim(r[0], r.account, r.provider, r.payment_key, r.currency, r.amount, r.paid_amount)

    # The payments first seen in this file, created in one statement as their first row says (a
    # window, not a join on the unindexed staging table: that is quadratic on SQLite).
    nth = func.row_number().over(partition_by=(STAGE.c.account, STAGE.c.payment_key), order_by=row).label("nth")
    numbered = select(
        STAGE.c.account,
        STAGE.c.payment_key.label("key"),
        STAGE.c.currency,
        STAGE.c.paid_amount.label("refundable"),
        nth,
    ).subquery()
    firsts = select(numbered.c.account, numbered.c.key, numbered.c.currency, numbered.c.refundable)
    created = ceiling.create_from(conn, firsts.where(numbered.c.nth == 1))
    named = conn.execute(select(STAGE.c.account, STAGE.c.payment_key).distinct()).all()
    ledgers = ceiling.lock_existing(conn, [(a, k) for a, k in named if (a, k) not in created])
    ledgers.update(created)
    refused = ceiling.judge(claims(), ledgers)[:MAX_REPORTED]
    if not refused:
        ceiling.record(conn, ledgers)
        return []
    keys = dict(conn.execute(select(row, STAGE.c.idempotency_key).where(row.in_([n for n, _ in refused]))).all())
    return [RowError(n, e.field, e.rule, keys.get(n)) for n, e in refused]


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
    checked: Validated,
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
    target = existing if existing is not None else new_batch_values(name, source_hash, checked.to_insert)
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
        chunk: list[Spooled] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refundq-batch-writer") as writer:
            in_flight: Future[None] | None = None
            for item in spooled(spool):
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
                over = _over_ceiling(conn) if staged else []
                if over:  # leaving the block rolls it all back
                    raise BatchConflict(over, len(over), checked.rows)
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
