"""A producer process of tests/test_ceiling.py's race (spawned: it must not import tests.conftest,
which claims a Redis database of its own on import)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from config.accounts import load_accounts
from config.settings import Settings
from worker import ceiling
from worker.producer import persist
from worker.runtime import Runtime
from worker.validation import ValidationFailed


def produce(
    db_url: str, redis_url: str, accounts_file: str, requests: list[dict[str, Any]], go: float, out: Any
) -> None:
    """At `go`, persist each request; put [("accepted", key) | ("refused", error text), ...] on `out`."""
    settings = Settings(database_url=db_url, redis_url=redis_url, accounts_file=Path(accounts_file))  # type: ignore[call-arg]
    rt = Runtime(settings=settings, accounts=load_accounts(Path(accounts_file)))
    admit = ceiling.admit

    def late_commit(conn: Any, claims: Any) -> Any:
        refused = admit(conn, claims)
        time.sleep(0.05)  # the commit comes late: a check that did not hold the lock would let others in
        return refused

    ceiling.admit = late_commit  # type: ignore[assignment]
    while time.time() < go:
        time.sleep(0.001)
    results: list[tuple[str, str]] = []
    for request in requests:
        try:
            persist(request, rt)
            results.append(("accepted", request["idempotency_key"]))
        except ValidationFailed as exc:
            results.append(("refused", str(exc)))
    out.put(results)
