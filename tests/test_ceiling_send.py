"""Ceilings the provider reports (CoinCorner GetOrder, Cryptomus payment/info), judged before the
first send, and follow-ups of a partially completed refund: over real HTTP against the sandbox."""

from __future__ import annotations

import time
import uuid as uuidlib
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from providers.base import PaymentReading
from providers.base import RefundStatus as S
from sandbox import cryptomus as sandbox_cryptomus
from tests.conftest import make_runtime
from tests.test_operator import drive
from worker import ceiling, store
from worker.demo import ADDRESSES
from worker.engine import Engine
from worker.models import payment_table
from worker.operator import ActionRefused, follow_up
from worker.producer import persist
from worker.validation import ValidationFailed


@pytest.fixture
def rt(sandbox: Any, db_url: str) -> Any:
    return make_runtime(db_url, sandbox.accounts_file)


def cryptomus(key: str, amount: str, **fields: str) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "provider": "cryptomus",
        "account": "cryptomus-sandbox",
        "amount": amount,
        "currency": "USDT",
        "destination": ADDRESSES["cryptomus"],
        "fields": {"network": "tron", **fields},
    }


def coincorner(key: str, amount: str, order: str) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "provider": "coincorner",
        "account": "coincorner-sandbox",
        "amount": amount,
        "currency": "GBP",
        "destination": ADDRESSES["coincorner"],
        "fields": {"order_id": order},
    }


def reasons(rt: Any, refund_id: str) -> list[str]:
    with rt.engine.connect() as conn:
        return [e["reason"] or "" for e in store.events(conn, refund_id)]


def created(sandbox: Any, provider: str) -> list[dict[str, Any]]:
    return [e for e in sandbox.ledger()["refunds"] if e["provider"] == provider]


def test_a_cryptomus_refund_below_the_invoice_is_refused_before_anything_is_sent(rt: Any, sandbox: Any) -> None:
    """Cryptomus's refund call carries no amount and returns the whole invoice (15.00 USDT here):
    old code sent a 5.00 refund, the provider paid 15.00, and it was flagged only afterwards."""
    order = f"inv-{time.time_ns()}"
    refund, _ = persist(cryptomus(order, "5.00", order_id=order), rt)
    assert Engine(rt).submit(refund.id) == "rejected"
    assert created(sandbox, "cryptomus") == []
    why = [r for r in reasons(rt, refund.id) if r.startswith("refused before sending")]
    assert why and "must equal the 15.00 USDT paid for invoice:" in why[0], reasons(rt, refund.id)
    with rt.engine.connect() as conn:
        stored = {r.key: r for r in conn.execute(select(payment_table)).all()}
    canonical = [k for k in stored if k != f"invoice:{order}"]
    assert len(canonical) == 1 and stored[canonical[0]].source == "provider"
    assert stored[canonical[0]].refundable == Decimal(15) and stored[canonical[0]].read_at is not None
    # The invoice is free again (nothing was paid): the whole amount goes out, once.
    whole, _ = persist(cryptomus(f"{order}-whole", "15.00", order_id=order), rt)
    assert drive(rt, whole.id, {S.COMPLETED}).status == "completed"
    assert [e["created"] for e in created(sandbox, "cryptomus")] == [1]


def test_one_cryptomus_invoice_named_by_order_id_and_by_uuid_is_refunded_once(rt: Any, sandbox: Any) -> None:
    """The one-refund-per-invoice key used to differ for `uuid` and `order_id` of the same invoice."""
    order = f"alias-{time.time_ns()}"
    by_order, _ = persist(cryptomus(f"{order}-a", "15.00", order_id=order), rt)
    assert drive(rt, by_order.id, {S.COMPLETED}).payment_key.startswith("invoice:")
    with rt.engine.connect() as conn:
        key = store.get_refund(conn, by_order.id).payment_key  # type: ignore[union-attr]
    uuid = key.removeprefix("invoice:")
    assert uuid != order
    with pytest.raises(ValidationFailed, match=f"invoice:{uuid} already has refund {by_order.id}"):
        persist(cryptomus(f"{order}-b", "15.00", uuid=uuid), rt)
    # The other order: both are stored before either is sent (their keys differ then); the second to
    # be sent finds the first under the invoice's canonical key and is refused before sending.
    other = f"alias2-{time.time_ns()}"
    merchant = rt.accounts["cryptomus-sandbox"].require("merchant")
    uuid2 = str(uuidlib.uuid5(sandbox_cryptomus._NAMESPACE, f"{merchant}:{other}"))  # the sandbox's invoice
    by_uuid, _ = persist(cryptomus(f"{other}-uuid", "15.00", uuid=uuid2), rt)
    by_order2, _ = persist(cryptomus(f"{other}-order", "15.00", order_id=other), rt)
    assert Engine(rt).submit(by_order2.id) == "rejected"
    assert any(f"invoice:{uuid2} already has refund {by_uuid.id}" in r for r in reasons(rt, by_order2.id))
    assert drive(rt, by_uuid.id, {S.COMPLETED}).status == "completed"
    assert sorted(e["created"] for e in created(sandbox, "cryptomus")) == [1, 1]  # one per invoice


def test_a_coincorner_refund_above_the_invoice_is_refused_before_sending(rt: Any, sandbox: Any) -> None:
    order = f"cc-{time.time_ns()}-amt5_00"
    over, _ = persist(coincorner(f"{order}-over", "6.00", order), rt)
    assert Engine(rt).submit(over.id) == "rejected"
    assert created(sandbox, "coincorner") == []
    assert any("ceiling: refunds of order:" in r and "above the 5.00 paid" in r for r in reasons(rt, over.id))
    fits, _ = persist(coincorner(f"{order}-fits", "5.00", order), rt)
    assert drive(rt, fits.id, {S.COMPLETED}).status == "completed"
    assert [e["created"] for e in created(sandbox, "coincorner")] == [1]


@pytest.mark.parametrize("provider", ["coincorner", "cryptomus"])
def test_a_payment_the_provider_does_not_know_is_refused_before_sending(rt: Any, sandbox: Any, provider: str) -> None:
    if provider == "coincorner":
        request = coincorner(f"gone-{time.time_ns()}", "1.00", f"missing-{time.time_ns()}")
    else:  # a uuid Cryptomus never issued: "Payment was not found"
        request = cryptomus(f"gone-{time.time_ns()}", "15.00", uuid=str(uuidlib.uuid4()))
    refund, _ = persist(request, rt)
    assert Engine(rt).submit(refund.id) == "rejected"
    assert created(sandbox, provider) == []
    assert any("does not know the original payment" in r for r in reasons(rt, refund.id)), reasons(rt, refund.id)


# --- PartiallyCompleted, then a follow-up for the remainder ------------------------------------------


def cobo(key: str, amount: str, order: str, paid: str) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "provider": "cobo",
        "account": "cobo-sandbox",
        "amount": amount,
        "paid_amount": paid,
        "currency": "ETH_USDT",
        "destination": ADDRESSES["cobo"],
        "fields": {"order_id": order},
    }


def test_a_partial_refund_and_its_follow_up_pay_exactly_the_amount_once(rt: Any, sandbox: Any) -> None:
    order = f"part-{time.time_ns()}"
    # Cents 52: the sandbox pays 60 % (rounded down to cents) and fails the rest.
    first, _ = persist(cobo(f"{order}-1", "80.52", order, paid="80.52"), rt)
    first = drive(rt, first.id, {S.PARTIALLY_COMPLETED})
    assert first.settled_amount == Decimal("48.31")
    done = follow_up(rt, first.id, by="alice", note="customer still owed")
    second = drive(rt, done.refund_id, {S.COMPLETED})
    assert second.follow_up_of == first.id and second.amount == Decimal("32.21")
    assert second.settled_amount == Decimal("32.21")  # what the provider reports it paid
    assert first.settled_amount + second.settled_amount == Decimal("80.52")
    with rt.engine.connect() as conn:
        after = store.get_refund(conn, first.id)
    assert after is not None and after.status == "partially_completed" and after.next_action_at is None
    assert any(f"follow-up {second.id} for 32.21 by alice" in r for r in reasons(rt, first.id))
    with pytest.raises(ActionRefused, match=r"ceiling: .* nothing remains to follow up"):
        follow_up(rt, first.id, by="bob")
    assert any("follow-up by bob refused: ceiling" in r for r in reasons(rt, first.id))
    ledger = [e for e in created(sandbox, "cobo")]
    assert sorted(e["refund_key"] for e in ledger) == sorted([first.id, second.id])
    assert all(e["created"] == 1 for e in ledger)


def test_the_payment_ceiling_holds_for_a_follow_up_too(rt: Any, sandbox: Any) -> None:
    """Another producer refunded the rest of the payment meanwhile: the follow-up would exceed it."""
    order = f"part2-{time.time_ns()}"
    first, _ = persist(cobo(f"{order}-1", "80.52", order, paid="100.00"), rt)
    first = drive(rt, first.id, {S.PARTIALLY_COMPLETED})
    persist(cobo(f"{order}-2", "51.69", order, paid="100.00"), rt)  # 48.31 + 51.69 = 100.00
    with pytest.raises(ActionRefused, match=r"ceiling: refunds of order:.* would total 132\.21"):
        follow_up(rt, first.id, by="alice")


def test_only_a_partially_completed_refund_has_a_remainder(rt: Any, sandbox: Any) -> None:
    order = f"nf-{time.time_ns()}"
    refund, _ = persist(cobo(f"{order}-1", "10.00", order, paid="10.00"), rt)
    with pytest.raises(ActionRefused, match="is queued: only a partially_completed refund has a remainder"):
        follow_up(rt, refund.id, by="alice")


def test_follow_up_and_paid_amount_from_the_command_line(rt: Any, sandbox: Any) -> None:
    from typer.testing import CliRunner

    from worker.cli import app
    from worker.runtime import set_runtime

    order = f"cli-{time.time_ns()}"
    set_runtime(rt)
    try:
        create = [
            *("refund", "create", "--key", f"{order}-1", "--provider", "cobo", "--account", "cobo-sandbox"),
            *("--amount", "80.52", "--paid-amount", "80.52", "--currency", "ETH_USDT"),
            *("--destination", ADDRESSES["cobo"], "--field", f"order_id={order}"),
        ]
        made = CliRunner().invoke(app, create)
        assert made.exit_code == 0, made.output
        refund_id = made.output.strip().splitlines()[-1]
        drive(rt, refund_id, {S.PARTIALLY_COMPLETED})
        first = CliRunner().invoke(app, ["refund", "follow-up", refund_id, "--by", "alice"])
        assert first.exit_code == 0 and "followed up as rf_" in first.output, first.output
        again = CliRunner().invoke(app, ["refund", "follow-up", refund_id, "--by", "alice"])
        assert again.exit_code == 1 and "nothing remains to follow up" in again.output, again.output
        shown = CliRunner().invoke(app, ["refund", "show", refund_id])
        assert "settled_amount" in shown.output and "48.31" in shown.output, shown.output
    finally:
        set_runtime(None)


def test_a_twin_delivery_of_one_submit_does_not_count_the_refund_against_itself(sandbox: Any, pg_url: str) -> None:
    """Two deliveries of one refund's submit judge it at once: the first moves it to the invoice's
    canonical key under the payment's lock; the twin, waiting for that lock, read the refund before
    it and then counted it as another refund of the invoice (15.00 + 15.00 > 15.00): a good refund
    was rejected. Found by test_traps.test_duplicate_submit_messages_send_once."""
    import threading

    rt = make_runtime(pg_url, sandbox.accounts_file)
    order = f"twin-{time.time_ns()}"
    refund, _ = persist(cryptomus(order, "15.00", order_id=order), rt)
    reading = PaymentReading(f"invoice:{uuidlib.uuid4()}", Decimal("15.00"), "USDT")
    twin: dict[str, Any] = {}

    def second_delivery() -> None:
        with rt.engine.begin() as conn:
            twin["error"] = ceiling.admit_reading(conn, refund.id, reading)

    with rt.engine.connect() as first:
        tx = first.begin()
        assert ceiling.admit_reading(first, refund.id, reading) is None  # holds the lock, key moved
        thread = threading.Thread(target=second_delivery)
        thread.start()
        time.sleep(0.5)  # the twin is waiting for the payment's lock now
        tx.commit()
    thread.join(timeout=10)
    assert not thread.is_alive() and twin == {"error": None}, twin
