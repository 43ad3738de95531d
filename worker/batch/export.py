"""Reading a batch back: rows for export (formula-leading cells neutralised) and a summary."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import (
    Connection,
    select,
)

from providers.base import RefundStatus
from worker.batch.importer import get_batch
from worker.models import Refund, refund_table
from worker.runtime import Runtime, get_runtime

R = refund_table.c
S = RefundStatus


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
