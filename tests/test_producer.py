"""Door (a): validation names the field and the rule and stores nothing; idempotent enqueue."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from sandbox.accounts import write_sandbox_accounts
from tests.conftest import make_runtime
from worker.demo import own_payment
from worker.models import refund_table
from worker.producer import IdempotencyConflict, enqueue_refund, persist
from worker.validation import ValidationFailed


@pytest.fixture
def rt(tmp_path: Path, db_url: str) -> Any:
    accounts = write_sandbox_accounts(tmp_path / "acc", "http://127.0.0.1:9")
    return make_runtime(db_url, accounts)


def good(**changes: Any) -> dict[str, Any]:
    request = {
        "idempotency_key": "order-1-refund",
        "provider": "cobo",
        "account": "cobo-sandbox",
        "amount": "12.50",
        "currency": "ETH_USDT",
        "destination": "0x" + "ab" * 20,
        "fields": {},
    }
    request.update(changes)
    return request if "fields" in changes else own_payment(request)  # a test of fields names them all


def rows(rt: Any) -> int:
    with rt.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(refund_table)).scalar_one()


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"amount": "-5.00"}, "amount", "greater than zero"),
        ({"amount": "0"}, "amount", "greater than zero"),
        ({"amount": "12.505"}, "amount", "decimal places"),
        ({"amount": 12.5}, "amount", "not a float"),
        ({"amount": "1e-3"}, "amount", "plain decimal"),
        ({"amount": "NaN"}, "amount", "plain decimal"),
        ({"account": "nobody"}, "account", "unknown account"),
        ({"account": "coincorner-sandbox"}, "account", "belongs to provider"),
        ({"provider": "paypal"}, "provider", "must be one of"),
        ({"destination": ""}, "destination", "empty"),
        ({"destination": "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL"}, "destination", "evm"),
        ({"idempotency_key": ""}, "idempotency_key", "at least 1"),
        ({"colour": "red"}, "colour", "not a known field"),
    ],
)
def test_bad_input_names_field_and_rule_and_stores_nothing(rt: Any, changes: dict, field: str, rule: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        enqueue_refund(good(**changes), rt)
    assert any(e.field == field and rule in e.rule for e in info.value.errors), info.value.errors
    assert field in str(info.value)
    assert rows(rt) == 0


def test_missing_field_is_named(rt: Any) -> None:
    request = good()
    del request["currency"]
    with pytest.raises(ValidationFailed, match="currency: is required"):
        enqueue_refund(request, rt)
    assert rows(rt) == 0


def test_same_key_same_payload_is_one_row(rt: Any) -> None:
    first, created = persist(good(), rt)
    again, created_again = persist(good(amount=Decimal("12.5")), rt)  # the same amount, written otherwise
    assert created and not created_again
    assert again.id == first.id
    assert rows(rt) == 1


def test_same_key_other_payload_is_a_conflict_naming_fields(rt: Any) -> None:
    persist(good(), rt)
    with pytest.raises(IdempotencyConflict) as info:
        persist(good(amount="13.00", destination="0x" + "cd" * 20), rt)
    assert info.value.differing == ["amount", "destination"]
    assert "amount, destination" in str(info.value)
    assert rows(rt) == 1


def test_accepted_when_the_broker_is_down(rt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis down at enqueue: the row is committed and due; the producer gets 'queued for delivery'."""
    from worker.app import celery_app

    def down(*_: Any, **__: Any) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(celery_app, "send_task", down)
    result = enqueue_refund(good(), rt)
    assert result.created and not result.published
    assert "queued for delivery" in result.message
    assert result.refund.status == "queued" and result.refund.next_action_at is not None
    assert rows(rt) == 1


def test_one_live_refund_per_invoice(rt: Any) -> None:
    """Cryptomus refunds a whole invoice once: a second refund for it is refused before sending."""
    base = {
        "provider": "cryptomus",
        "account": "cryptomus-sandbox",
        "currency": "USDT",
        "destination": "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",
        "amount": "15.00",
    }
    persist({**base, "idempotency_key": "k1", "fields": {"order_id": "inv-9"}}, rt)
    with pytest.raises(ValidationFailed, match="one refund per invoice"):
        persist({**base, "idempotency_key": "k2", "fields": {"order_id": "inv-9"}}, rt)
    assert rows(rt) == 1
