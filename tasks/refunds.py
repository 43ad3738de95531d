"""Thin Celery tasks: load the runtime, call the core, let the core record the outcome.

Door (b), a `refundq.intake` message on queue `refundq.intake`, is not a task here: refundq reads
that queue itself (worker/intake.py), so no producer's bytes reach Celery's parser.
"""

from __future__ import annotations

import structlog

from worker.app import celery_app
from worker.engine import Engine
from worker.runtime import get_runtime

log = structlog.get_logger("refundq.tasks")


def _engine() -> Engine:
    return Engine(get_runtime())


@celery_app.task(name="refundq.submit")
def submit(refund_id: str) -> str:
    return _engine().submit(refund_id)


@celery_app.task(name="refundq.poll")
def poll(refund_ids: list[str]) -> dict[str, str]:
    return _engine().poll(refund_ids)


@celery_app.task(name="refundq.dispatch")
def dispatch() -> dict[str, int]:
    """For deployments that prefer `celery beat` over `refundq dispatcher`; claims are safe either way."""
    return _engine().dispatch_once()


@celery_app.task(name="refundq.submit_many")
def submit_many(refund_ids: list[str]) -> int:
    """Bulk batches publish one message per chunk of ids; this fans them out as `refundq.submit`."""
    from worker.batch import fan_out

    return fan_out(refund_ids)


@celery_app.task(name="refundq.reconcile")
def reconcile(refund_ids: list[str] | None = None) -> dict[str, int]:
    """With ids: compare those refunds with their providers (status reads only). Without (for
    `celery beat` deployments): schedule a round, at most once per reconcile_interval."""
    from worker.reconcile import Reconciler, maybe_schedule

    rt = get_runtime()
    if refund_ids is None:
        return {"scheduled": maybe_schedule(rt) or 0}
    return dict(Reconciler(rt).run(refund_ids).counts)
