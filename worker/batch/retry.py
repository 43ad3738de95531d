"""Batch retry (the one rule of worker/actions.py, page by page) and batch cancel."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import (
    Connection,
    and_,
    insert,
    or_,
    select,
    update,
)

from providers.base import RefundStatus
from worker import ceiling, operator, store
from worker.batch.importer import get_batch, insert_chunk, new_batch_values, publish_submits
from worker.models import Batch, Refund, batch_table, refund_table, utcnow
from worker.operator import retry_key  # noqa: F401  (re-exported by worker.batch)
from worker.runtime import Runtime, get_runtime
from worker.validation import ValidationFailed

log = structlog.get_logger("refundq.batch")
R = refund_table.c
B = batch_table.c
S = RefundStatus


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
                values = new_batch_values(
                    f"{batch.name} (retry {statuses_text})", f"retry:{batch_id}:{uuid.uuid4().hex}", 1, batch_id
                )
                retry_batch_id = values["id"]
                conn.execute(insert(batch_table).values(**values))
            # The ceiling, in page order: a retry counts once its old attempt proved nothing paid.
            over = dict(ceiling.admit(conn, [ceiling.claim_of(v, i) for i, (_, v, _) in enumerate(planned)]))
            accepted: list[dict[str, Any]] = []
            for i, (refund, v, why) in enumerate(planned):
                if i in over:
                    skipped.append(f"{refund.id}: the retry is refused: {over[i]}")
                    continue
                text = f"in batch {retry_batch_id} by {by}: {why}"
                if not operator.hand_over(conn, refund, v["id"], text):
                    skipped.append(f"{refund.id}: its status changed meanwhile")
                    continue
                v["batch_id"] = retry_batch_id
                accepted.append(v)
            if accepted:
                insert_chunk(conn, retry_batch_id, accepted, f"retry of an earlier attempt (batch {batch_id}) by {by}")
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
