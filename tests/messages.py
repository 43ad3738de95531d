"""Raw Redis list items as a Celery producer (or a broken one) writes them, for intake tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

from worker.envelope import build as v2
from worker.envelope import wrap as envelope

__all__ = ["KILLERS", "envelope", "intake", "v1", "v2"]


def v1(task: str, args: Any, kwargs: Any = None, *, eta: str | None = None) -> bytes:
    body = {"task": task, "id": str(uuid.uuid4()), "args": args, "kwargs": kwargs, "eta": eta}
    return envelope(json.dumps(body).encode())


def intake(request: Any, **kwargs: Any) -> bytes:
    return v2("refundq.intake", [request], kwargs)


# The four shapes that stopped every worker for good (issue #10, finding 1).
KILLERS: dict[str, bytes] = {
    "body is an object": envelope(json.dumps({"args": [], "kwargs": {}}).encode(), {"task": "refundq.intake"}),
    "envelope not JSON": b"{this is not json",
    "envelope is a list": b'["refundq.intake", {"amount": "1"}]',
    "body not base64": envelope("%%% not base64 %%%", {"task": "refundq.intake"}),
}
