"""Strict producer input: every string, number and nesting level is checked before any SQL, and
each refusal names the field and the rule."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from config.accounts import Accounts, load_accounts
from providers.base import RefundSpec
from providers.cobo import CoboAdapter
from providers.coincorner import CoinCornerAdapter
from sandbox.accounts import write_sandbox_accounts
from tests.conftest import make_runtime
from tests.test_producer import good as cobo
from worker.models import refund_table
from worker.producer import enqueue_refund, persist
from worker.validation import MAX_INT, ValidationFailed, check, parse_request

CONTROL = "control characters"


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Accounts:
    return load_accounts(write_sandbox_accounts(tmp_path_factory.mktemp("acc"), "http://127.0.0.1:9"))


def cryptomus(**changes: Any) -> dict[str, Any]:
    invoice = {"account": "cryptomus-sandbox", "provider": "cryptomus", "amount": "15", "currency": "USDT"}
    invoice |= {"destination": "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL", "fields": {"order_id": "o-2", "network": "tron"}}
    return cobo(**(invoice | changes))


def refused(data: dict[str, Any], accounts: Accounts) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        check(data, accounts)
    return {e.field: e.rule for e in info.value.errors}


@pytest.mark.parametrize("amount", ["1٠0", "１２", " 1", "1 ", "\xa01", "1\n", "+1", "1e3", "1_000", "0x10", "1" * 65])
def test_amount_is_ascii_digits_without_padding(accounts: Accounts, amount: str) -> None:
    errors = refused(cobo(amount=amount), accounts)
    assert set(errors) == {"amount"}, errors


@pytest.mark.parametrize("amount", [Decimal("1e100000000"), Decimal("1e-100000000"), Decimal("-1e100000000")])
def test_huge_exponents_are_refused_cheaply(accounts: Accounts, amount: Decimal) -> None:
    started = time.perf_counter()
    errors = refused(cobo(amount=amount), accounts)
    assert time.perf_counter() - started < 0.05  # formatting 1e100000000 takes ~0.3 s and 200 MB
    assert "at most 20 digits before and 18 after" in errors["amount"]


def test_amount_limits_are_numeric_38_18(accounts: Accounts) -> None:
    assert parse_request(cobo(amount="9" * 20 + "." + "9" * 18)).amount == Decimal("9" * 20 + "." + "9" * 18)
    assert parse_request(cobo(amount="1.50000000000000000000000")).amount == Decimal("1.5")
    assert "at most 20 digits" in refused(cobo(amount="1" + "0" * 20), accounts)["amount"]
    assert "at most 20 digits" in refused(cobo(amount="0." + "0" * 18 + "1"), accounts)["amount"]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"deadline_hours": True}, "deadline_hours", "not true/false"),
        ({"deadline_hours": " 24"}, "deadline_hours", "plain decimal"),
        ({"deadline_hours": float("nan")}, "deadline_hours", "finite"),
        ({"deadline_hours": "inf"}, "deadline_hours", "plain decimal"),
        ({"deadline_hours": 10**400}, "deadline_hours", "at most 2160"),
        ({"amount": True}, "amount", "not a float"),
        ({"provider": b"cobo"}, "provider", "valid string"),
        ({"idempotency_key": "k" * 201}, "idempotency_key", "at most 200"),
        ({"idempotency_key": "ord-1\n"}, "idempotency_key", CONTROL),
        ({"account": "cobo-sandbox\x00"}, "account", CONTROL),
        ({"currency": "ETH_USDT\n"}, "currency", CONTROL),
        ({"currency": "ETH_USDT\x1b[2J"}, "currency", CONTROL),
        ({"destination": "0x" + "ab" * 19 + "\ud800"}, "destination", CONTROL),
        ({"destination": "\x85" + "ab" * 20}, "destination", CONTROL),
        ({"fields": {"order_id": "o\x00"}}, "fields.order_id", CONTROL),
        ({"fields": {"order_id": "\x7f"}}, "fields.order_id", CONTROL),
        ({"fields": {"a": {"b": ["ok", "\x9b31m"]}}}, "fields.a.b[1]", CONTROL),
        ({"fields": {"a\x1b": 1}}, "fields.a\\x1b", "key must not contain " + CONTROL),
        ({"fields": {"k" * 65: 1}}, "fields." + "k" * 64 + "...", "at most 64"),
        ({"fields": {"x": "v" * 1001}}, "fields.x", "at most 1000"),
        ({"fields": {"x": float("nan")}}, "fields.x", "finite"),
        ({"fields": {"x": {"y": [float("-inf")]}}}, "fields.x.y[0]", "finite"),
        ({"fields": {"x": MAX_INT + 1}}, "fields.x", "2**53"),
        ({"fields": {"x": Decimal("1")}}, "fields.x", "JSON value"),
        ({"fields": {"a": {"b": {"c": {"d": {}}}}}}, "fields.a.b.c.d", "4 levels"),
        ({"fields": {str(i): i for i in range(33)}}, "fields", "at most 32"),
        ({"fields": {"a": [list(range(32))] * 8}}, "fields", "256 values"),
        ({"colour\x1b[31m": "red"}, "colour\\x1b[31m", "not a known field"),
    ],
)
def test_each_hostile_input_is_refused_by_name(
    accounts: Accounts, changes: dict[str, Any], field: str, words: str
) -> None:
    errors = refused(cobo(**changes), accounts)
    assert field in errors and words in errors[field], errors


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"currency": "USDT\x00"}, "currency", CONTROL),
        ({"currency": "usdt"}, "currency", "upper-case"),
        ({"currency": "X" * 33}, "currency", "at most 32"),
        ({"fields": {"order_id": "o-2", "network": "tron\x1b]0;pwned\x07"}}, "fields.network", CONTROL),
        ({"fields": {"order_id": "o-2", "network": "tron\n"}}, "fields.network", CONTROL),
        ({"fields": {"order_id": "o-2", "network": "t" * 1_000_000}}, "fields.network", "at most 1000"),
        ({"fields": {"order_id": "o-2", "network": "t" * 33}}, "fields.network", "network code"),
        ({"fields": {"order_id": "o-2", "network": "tr on"}}, "fields.network", "network code"),
    ],
)
def test_cryptomus_currency_and_network(accounts: Accounts, changes: dict[str, Any], field: str, words: str) -> None:
    errors = refused(cryptomus(**changes), accounts)
    assert field in errors and words in errors[field], errors


def test_valid_requests_at_the_limits_are_accepted(accounts: Accounts) -> None:
    assert check(cobo(deadline_hours=24), accounts).deadline_hours == 24
    assert check(cobo(deadline_hours="1.5"), accounts).deadline_hours == 1.5  # a CSV cell
    assert check(cryptomus(), accounts).fields["network"] == "tron"
    fields = {
        "k" * 64: "v" * 1000,
        "deep": {"b": {"c": {"d": MAX_INT}}},
        "list": [1.5, -MAX_INT, None, True, "ü €"],
        **{f"n{i}": i for i in range(29)},
    }
    assert parse_request(cobo(fields=fields)).fields == fields


def test_a_built_request_is_checked_again(accounts: Accounts) -> None:
    built = parse_request(cobo()).model_copy(update={"destination": "0x\x00"})  # skips every validator
    assert CONTROL in refused(built.model_dump(), accounts)["destination"]
    with pytest.raises(ValidationFailed, match="destination"):
        check(built, accounts)


def test_provider_patterns_refuse_a_trailing_newline(accounts: Accounts) -> None:
    # Adapters are also called directly (batch, sandbox): their own patterns must hold, not `$`.
    def spec(**changes: Any) -> RefundSpec:
        values: dict[str, Any] = {"refund_id": "r", "amount": Decimal("1"), "currency": "ETH_USDT"}
        values["fields"] = {"order_id": "o"}
        return RefundSpec(**(values | {"destination": "0x" + "ab" * 20} | changes))

    cobo_errors = CoboAdapter().validate(spec(currency="ETH_USDT\n"), accounts["cobo-sandbox"])
    assert [e.field for e in cobo_errors] == ["currency"]
    fee_fields = {"order_id": "o", "merchant_fee_amount": "1e-100000000"}
    fee = CoboAdapter().validate(spec(fields=fee_fields), accounts["cobo-sandbox"])
    assert [e.field for e in fee] == ["merchant_fee_amount"]
    corner = CoinCornerAdapter().validate(
        spec(
            currency="GBP\n",
            destination="bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
            fields={"order_id": "ord-1\n", "refund_type": "1\n"},
        ),
        accounts["coincorner-sandbox"],
    )
    assert {e.field for e in corner} == {"currency", "fields.order_id", "fields.refund_type"}


# --- before any SQL: what PostgreSQL itself would refuse ------------------------------------------


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"idempotency_key": "k" * 201}, "idempotency_key"),  # StringDataRightTruncation
        ({"destination": "0x" + "ab" * 20 + "\x00"}, "destination"),  # NUL: psycopg.DataError
        ({"currency": "ETH_\x00USDT"}, "currency"),
        ({"fields": {"order_id": "o-1\x00"}}, "fields.order_id"),
        ({"fields": {"order_id": "o-\ud800"}}, "fields.order_id"),  # lone surrogate: not UTF-8
        ({"fields": {"merchant_fee_amount": float("nan")}}, "fields.merchant_fee_amount"),  # NaN: not JSON
        ({"fields": {"charge_merchant_fee": float("inf")}}, "fields.charge_merchant_fee"),
    ],
)
def test_postgresql_refusals_become_named_field_errors(
    tmp_path: Path, db_url: str, changes: dict[str, Any], field: str
) -> None:
    rt = make_runtime(db_url, write_sandbox_accounts(tmp_path / "acc", "http://127.0.0.1:9"))
    for door in (persist, enqueue_refund):
        with pytest.raises(ValidationFailed) as info:
            door(cobo(**changes), rt)
        assert field in {e.field for e in info.value.errors}, info.value.errors
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(refund_table)).scalar_one() == 0
    refund, created = persist(cobo(), rt)  # and the same request, clean, is stored
    assert created and refund.destination == "0x" + "ab" * 20


def test_error_texts_never_carry_a_secret(sandbox: Any, sqlite_url: str) -> None:
    """A producer pasted a key into the destination (or the key): door (a)'s error text, which the
    caller logs or shows, has it scrubbed in any letter case."""
    from config.logging import register_secrets
    from tests.conftest import make_runtime
    from worker.demo import own_payment
    from worker.producer import IdempotencyConflict, persist

    rt = make_runtime(sqlite_url, sandbox.accounts_file)
    secret = "Sk-Live-" + "Q" * 24
    register_secrets([secret])
    request = own_payment(
        {
            "idempotency_key": "leak-" + secret,
            "provider": "cobo",
            "account": "cobo-sandbox",
            "amount": "1.00",
            "currency": "ETH_USDT",
            "destination": "0x" + "ab" * 20,
        }
    )
    persist(request, rt)
    with pytest.raises(IdempotencyConflict) as conflict:
        persist({**request, "amount": "2.00"}, rt)
    with pytest.raises(ValidationFailed) as invalid:
        persist({**request, "idempotency_key": "other", "destination": secret.lower()}, rt)
    for text in (str(conflict.value), str(invalid.value), *map(str, invalid.value.errors)):
        assert secret.lower() not in text.lower(), text
