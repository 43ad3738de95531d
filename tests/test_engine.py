"""Engine rules that need no worker process: against the sandbox over HTTP and a real database."""

from __future__ import annotations

from typing import Any

import pytest

from providers.base import RefundStatus as S
from tests.conftest import make_runtime
from worker import store
from worker.demo import own_payment
from worker.engine import Engine
from worker.producer import persist


@pytest.fixture
def rt(sandbox: Any, sqlite_url: str) -> Any:
    return make_runtime(sqlite_url, sandbox.accounts_file)


def cobo(key: str) -> dict[str, Any]:
    return own_payment(
        {
            "idempotency_key": key,
            "provider": "cobo",
            "account": "cobo-sandbox",
            "amount": "12.00",
            "currency": "ETH_USDT",
            "destination": "0x" + "ab" * 20,
        }
    )


def test_a_claim_taken_over_is_never_sent(rt: Any, sandbox: Any) -> None:
    """The dispatcher moved a slow submit to unknown (lease expired): the old task must not send."""
    refund, _ = persist(cobo("slow"), rt)
    with rt.engine.begin() as conn:
        store.transition(conn, refund.id, S.QUEUED, S.SUBMITTING)
        store.transition(conn, refund.id, S.SUBMITTING, S.UNKNOWN, reason="lease expired")
    stale = refund.model_copy(update={"status": S.SUBMITTING.value})
    assert Engine(rt)._send(stale) == "claim_lost"
    assert sandbox.ledger()["refunds"] == []


def test_submit_then_poll_to_completed(rt: Any, sandbox: Any) -> None:
    refund, _ = persist(cobo("direct"), rt)
    engine = Engine(rt)
    assert engine.submit(refund.id) == "pending"
    assert engine.submit(refund.id) == "skipped"  # a duplicate delivery does nothing
    import time

    deadline = time.monotonic() + 10
    status = "pending"
    while status != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
        status = engine.poll_one(refund.id)
    assert status == "completed"
    assert [e["created"] for e in sandbox.ledger()["refunds"]] == [1]


def coinvoyage(key: str) -> dict[str, Any]:
    return own_payment(
        {
            "idempotency_key": key,
            "provider": "coinvoyage",
            "account": "coinvoyage-sandbox",
            "amount": "12.00",
            "currency": "USD",
            "destination": "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV",
            "fields": {"payorder_id": f"po-{key}", "chain_id": 30000000000001},
        }
    )


def test_coinvoyage_lookup_pages_past_newer_orders(rt: Any, sandbox: Any) -> None:
    """CoinVoyage has no idempotency key: a lookup that stopped at the newest 100 pay-orders would
    call an older refund absent and pay it twice (found by the chaos run)."""
    from providers import get_adapter
    from worker.engine import spec_of

    engine = Engine(rt)
    first, _ = persist(coinvoyage("first"), rt)
    assert engine.submit(first.id) == "pending"
    for i in range(120):  # newer orders push ours to the second page
        newer, _ = persist(coinvoyage(f"newer-{i}"), rt)
        assert engine.submit(newer.id) == "pending"
    with rt.engine.connect() as conn:
        ours = store.get_refund(conn, first.id)
    found, _ = engine._lookup(get_adapter("coinvoyage"), rt.accounts["coinvoyage-sandbox"], spec_of(ours))
    assert found is not None and found.provider_refund_id == ours.provider_refund_id
