"""Thin Celery tasks: load the runtime, call the core, let the core record the outcome.

`refundq.intake` is the public door (b) for producers in any language: send a Celery message
named `refundq.intake` to queue `refundq.intake` with one JSON argument, the refund request.
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.app import celery_app
from worker.engine import Engine
from worker.engine import intake as intake_refund
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


@celery_app.task(name="refundq.intake")
def intake(payload: dict[str, Any]) -> str:
    return intake_refund(payload, get_runtime())


@celery_app.task(name="refundq.dispatch")
def dispatch() -> dict[str, int]:
    """For deployments that prefer `celery beat` over `refundq dispatcher`; claims are safe either way."""
    return _engine().dispatch_once()
