"""Reading the original payment (build_payment / parse_payment) and what a refund settled (Cobo).

Pure parsing first, then real HTTP against the sandbox (tests/conftest.py `sandbox`). Helpers come from the
adapters' own test modules, so requests are built and sent the same way there and here.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from config.accounts import Account
from providers import cobo, coincorner, cryptomus
from providers.base import ErrorKind, PaymentRule, ProviderError, RefundSpec, RefundStatus, Response
from sandbox.cobo import partial_split
from tests import test_cobo as cobo_t
from tests import test_coincorner as cc_t
from tests import test_cryptomus as cm_t
from tests.conftest import SandboxServer

CC = coincorner.ADAPTER
CM = cryptomus.ADAPTER
CB = cobo.ADAPTER


# --- CoinCorner GetOrder, pure ------------------------------------------------------------------------


def get_order_answer(**fields: Any) -> Response:
    body = {"OrderId": "55", "InvoiceAmount": "25.50", "InvoiceCurrency": "GBP", **fields}
    return cc_t.answer(200, {k: v for k, v in body.items() if v is not None})


def test_coincorner_payment_is_a_signed_get_order_of_the_refunds_order() -> None:
    account = cc_t.make_account()
    assert CC.build_payment(cc_t.make_spec(), account, 42) == CC.build_get_order("55", account, 42)
    assert (CC.payment_rule, CC.reads_payment) == (PaymentRule.WITHIN, True)


def test_coincorner_invoice_amount_given_as_a_json_number_stays_exact() -> None:
    # 17 significant digits: a float would read it as 12345678901.234568.
    resp = cc_t.answer(200, b'{"OrderId":"55","InvoiceAmount":12345678901.23456789,"InvoiceCurrency":"GBP"}')
    reading = CC.parse_payment(cc_t.make_spec(), cc_t.make_account(), resp)
    assert reading.amount == Decimal("12345678901.23456789")
    assert reading.detail["InvoiceAmount"] == "12345678901.23456789"


def test_coincorner_invoice_amount_given_as_a_string() -> None:
    reading = CC.parse_payment(cc_t.make_spec(), cc_t.make_account(), get_order_answer())
    assert (reading.key, reading.amount, reading.currency) == ("order:55", Decimal("25.50"), "GBP")


@pytest.mark.parametrize(
    "body",
    [
        {"OrderId": None, "OrderStatusText": "N/A", "Error": "Invalid OrderId"},
        {"OrderStatusText": "N/A"},
        {"OrderId": "55", "InvoiceCurrency": "GBP"},
    ],
)
def test_coincorner_unknown_order_is_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as info:
        CC.parse_payment(cc_t.make_spec(), cc_t.make_account(), cc_t.answer(200, body))
    assert info.value.kind is ErrorKind.REJECTED
    assert info.value.message.startswith("coincorner: order 55 not found: ")


@pytest.mark.parametrize("amount", ["-1", "0", "1e3", "abc", True, [1], "NaN"])
def test_coincorner_malformed_invoice_amount_is_unsure(amount: Any) -> None:
    with pytest.raises(ProviderError) as info:
        CC.parse_payment(cc_t.make_spec(), cc_t.make_account(), get_order_answer(InvoiceAmount=amount))
    assert info.value.kind is ErrorKind.UNSURE


def test_coincorner_missing_invoice_currency_is_unsure() -> None:
    with pytest.raises(ProviderError) as info:
        CC.parse_payment(cc_t.make_spec(), cc_t.make_account(), get_order_answer(InvoiceCurrency=None))
    assert info.value.kind is ErrorKind.UNSURE


@pytest.mark.parametrize(
    ("resp", "kind"),
    [
        (cc_t.answer(401, {"Message": "Authorization has been denied for this request."}), ErrorKind.AUTH),
        (cc_t.answer(500, {"Message": "An error has occurred."}), ErrorKind.RETRYABLE),
        (cc_t.answer(429, {"Message": "Too many requests"}, retry_after="3"), ErrorKind.RATE_LIMITED),
        (cc_t.answer(200, {"OrderStatusText": "N/A", "Error": "Invalid nonce"}), ErrorKind.NONCE),
        (cc_t.answer(200, b"<html>"), ErrorKind.RETRYABLE),
        (cc_t.answer(200, {"OrderId": "other", "InvoiceAmount": 1, "InvoiceCurrency": "GBP"}), ErrorKind.RETRYABLE),
    ],
)
def test_coincorner_payment_read_errors_are_classified_as_reads(resp: Response, kind: ErrorKind) -> None:
    with pytest.raises(ProviderError) as info:
        CC.parse_payment(cc_t.make_spec(), cc_t.make_account(), resp)
    assert info.value.kind is kind


# --- Cryptomus payment/info, pure ---------------------------------------------------------------------


def test_cryptomus_payment_is_the_signed_payment_info_request() -> None:
    account, s = cm_t.make_account(), cm_t.spec()
    assert CM.build_payment(s, account, 0) == CM.build_status(s, account, 0)
    assert (CM.payment_rule, CM.reads_payment) == (PaymentRule.WHOLE, True)


def test_cryptomus_payment_is_keyed_by_the_reported_uuid() -> None:
    reading = CM.parse_payment(cm_t.spec(), cm_t.make_account(), cm_t.info("paid", uuid=cm_t.INVOICE.upper()))
    assert reading.key == f"invoice:{cm_t.INVOICE}"
    assert (reading.amount, reading.currency) == (Decimal("15.00"), "USDT")
    assert set(reading.detail) == {"uuid", "order_id", "amount", "currency", "status", "payment_status"}


@pytest.mark.parametrize(
    ("resp", "kind"),
    [
        (cm_t.answer({"state": 1, "message": "Payment was not found"}, 422), ErrorKind.REJECTED),
        (cm_t.answer({"state": 1, "message": "Invalid Sign."}, 401), ErrorKind.AUTH),
        (cm_t.answer({"message": "Server Error"}, 500), ErrorKind.RETRYABLE),
        (cm_t.info("paid", amount=15.0), ErrorKind.UNSURE),  # a JSON number went through float
        (cm_t.info("paid", amount="-15.00"), ErrorKind.UNSURE),
        (cm_t.info("paid", currency=None), ErrorKind.UNSURE),
        (cm_t.info("paid", order_id="order-2"), ErrorKind.RETRYABLE),  # about another invoice
        (cm_t.info("paid", uuid="not-a-uuid"), ErrorKind.RETRYABLE),
    ],
)
def test_cryptomus_payment_read_errors(resp: Response, kind: ErrorKind) -> None:
    with pytest.raises(ProviderError) as info:
        CM.parse_payment(cm_t.spec(), cm_t.make_account(), resp)
    assert info.value.kind is kind
    if resp.status_code == 422:
        assert "order-1" in info.value.message


# --- Cobo settled amount and fee, pure ----------------------------------------------------------------


def tx(status: str, amount: Any) -> dict[str, Any]:
    return {"tx_id": "t", "status": status, "amount": amount}


@pytest.mark.parametrize(
    ("status", "transactions", "settled"),
    [
        ("PartiallyCompleted", [tx("Completed", "48.00"), tx("Failed", "32.00")], Decimal("48.00")),
        ("Completed", [tx("Completed", "30.00"), tx("Completed", "50.00")], Decimal("80.00")),
        ("Completed", [tx("Completed", Decimal("80.00"))], Decimal("80.00")),  # a JSON number, read as Decimal
        ("PartiallyCompleted", [tx("Completed", "48.0x"), tx("Failed", "32.00")], None),
        ("PartiallyCompleted", [tx("Completed", 48.0)], None),  # never a float
        ("PartiallyCompleted", [tx("Failed", "80.00")], Decimal(0)),
        ("Completed", [], None),
        ("Processing", [tx("Completed", "80.00")], None),
        ("Failed", [tx("Failed", "80.00")], None),
    ],
)
def test_cobo_settled_amount(status: str, transactions: list[dict[str, Any]], settled: Decimal | None) -> None:
    result = cobo.to_status_result(cobo_t.refund(status, amount="80.00", transactions=transactions))
    assert result.settled_amount == settled
    assert result.detail["amount"] == "80.00"  # the requested amount, for the integrity check


@pytest.mark.parametrize(("fee", "want"), [("0.35", Decimal("0.35")), ("", None), (None, None), ("n/a", None)])
def test_cobo_fee_is_the_commission_fee(fee: Any, want: Decimal | None) -> None:
    assert cobo.to_status_result(cobo_t.refund("Completed", commission_fee=fee)).fee == want


def test_cobo_settled_amount_is_read_by_submit_poll_and_lookup() -> None:
    body = cobo_t.refund("PartiallyCompleted", request_id="rfd-0001", transactions=[tx("Completed", "6.30")])
    account, s = cobo_t.make_account(), cobo_t.spec()
    listed = cobo_t.signed_response({"data": [body]})
    for result in (
        CB.parse_submit(s, account, cobo_t.signed_response(body, 201)),
        CB.parse_status(s, account, cobo_t.signed_response(body)),
        CB.parse_lookup(s, account, listed),
    ):
        assert result is not None and result.settled_amount == Decimal("6.30")


@pytest.mark.parametrize(
    ("amount", "completed", "failed"),
    [("80.00", "48.00", "32.00"), ("0.52", "0.31", "0.21"), ("10.99", "6.59", "4.40"), ("4.01", "2.40", "1.61")],
)
def test_cobo_sandbox_partial_split_rounds_the_completed_part_down(amount: str, completed: str, failed: str) -> None:
    assert partial_split(Decimal(amount)) == (Decimal(completed), Decimal(failed))


# --- over real HTTP: CoinCorner -----------------------------------------------------------------------


@pytest.fixture
def nonces() -> Iterator[int]:
    return itertools.count(int(time.time() * 1000))


@pytest.fixture
def cc_account(sandbox: SandboxServer) -> Account:
    return sandbox.accounts["coincorner-sandbox"]


def cc_spec(marker: str = "", amount: str = "10.00") -> RefundSpec:
    return cc_t.make_spec(order_id=f"ord-{uuid.uuid4().hex[:12]}{marker}", amount=amount)


def test_coincorner_get_order_reads_the_default_invoice(cc_account: Account, nonces: Iterator[int]) -> None:
    s = cc_spec()
    resp = cc_t.send(CC.build_payment(s, cc_account, next(nonces)))
    assert b'"InvoiceAmount":1000.00' in resp.body  # a JSON number, as JSON.NET writes a decimal
    reading = CC.parse_payment(s, cc_account, resp)
    order_id = s.fields["order_id"]
    assert (reading.key, reading.amount, reading.currency) == (f"order:{order_id}", Decimal("1000.00"), "GBP")
    assert reading.detail["OrderId"] == order_id and reading.detail["InvoiceAmount"] == "1000.00"


def test_coincorner_get_order_reads_the_marked_invoice_amount(cc_account: Account, nonces: Iterator[int]) -> None:
    s = cc_spec("-amt25_50")
    reading = CC.parse_payment(s, cc_account, cc_t.send(CC.build_payment(s, cc_account, next(nonces))))
    assert (reading.amount, str(reading.amount)) == (Decimal("25.50"), "25.50")


def test_coincorner_refund_above_the_invoice_amount_is_refused(
    sandbox: SandboxServer, cc_account: Account, nonces: Iterator[int]
) -> None:
    s = cc_spec("-amt25_50", amount="25.51")
    with pytest.raises(ProviderError) as info:
        CC.parse_submit(s, cc_account, cc_t.send(CC.build_submit(s, cc_account, next(nonces))))
    assert info.value.kind is ErrorKind.REJECTED
    assert cc_t.refunds(sandbox) == []
    whole = cc_spec("-amt25_50", amount="25.50")
    assert CC.parse_submit(whole, cc_account, cc_t.send(CC.build_submit(whole, cc_account, next(nonces)))).status is (
        RefundStatus.PENDING
    )


def test_coincorner_unknown_order(sandbox: SandboxServer, cc_account: Account, nonces: Iterator[int]) -> None:
    s = cc_spec("-missing")
    order_id = s.fields["order_id"]
    resp = cc_t.send(CC.build_payment(s, cc_account, next(nonces)))
    assert json.loads(resp.body) == {"OrderId": None, "OrderStatusText": "N/A", "Error": "Invalid OrderId"}
    with pytest.raises(ProviderError) as info:
        CC.parse_payment(s, cc_account, resp)
    assert info.value.kind is ErrorKind.REJECTED
    assert info.value.message == f"coincorner: order {order_id} not found: Invalid OrderId"
    # CheckOrder answers the same; a poll or lookup reads it as before: a refund may have been sent on it.
    for parse in (CC.parse_status, CC.parse_lookup):
        result = parse(s, cc_account, cc_t.send(CC.build_status(s, cc_account, next(nonces))))
        assert result is not None and (result.status, result.raw_status) == (RefundStatus.NEEDS_ATTENTION, "N/A")
    with pytest.raises(ProviderError) as refused:
        CC.parse_submit(s, cc_account, cc_t.send(CC.build_submit(s, cc_account, next(nonces))))
    assert refused.value.kind is ErrorKind.REJECTED
    assert cc_t.refunds(sandbox) == []


@pytest.mark.parametrize("as_json", [False, True])
def test_coincorner_sandbox_binds_field_names_case_insensitively(
    cc_account: Account, nonces: Iterator[int], as_json: bool
) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:12]}"
    for endpoint in ("CheckOrder", "GetOrder"):
        fields = coincorner.json_body(
            cc_account.secret("api_key"),
            cc_account.secret("api_secret"),
            str(cc_account.require("user_id")),
            next(nonces),
            {"OrderId": order_id},
        )
        lowered = {name.lower(): value for name, value in fields.items()}
        assert set(lowered) == {"apikey", "signature", "nonce", "orderid"}
        url = f"{cc_account.base_url}/{endpoint}"
        r = httpx.post(url, json=lowered, timeout=5) if as_json else httpx.post(url, data=lowered, timeout=5)
        assert r.status_code == 200, r.text
        assert r.json()["OrderId"] == order_id


# --- over real HTTP: Cryptomus ------------------------------------------------------------------------


@pytest.fixture
def cm_account(sandbox: SandboxServer) -> Account:
    return sandbox.accounts["cryptomus-sandbox"]


def cm_read(s: RefundSpec, account: Account) -> Any:
    return CM.parse_payment(s, account, cm_t.send(CM.build_payment(s, account, 0)))


def test_cryptomus_payment_info_by_order_id_is_keyed_by_the_invoice_uuid(cm_account: Account) -> None:
    order_id = f"o-{uuid.uuid4().hex[:12]}"
    s = cm_t.live_spec(order_id)
    reading = cm_read(s, cm_account)
    invoice_uuid = str(uuid.UUID(reading.detail["uuid"]))
    assert reading.key == f"invoice:{invoice_uuid}" != f"invoice:{order_id}"
    assert (reading.amount, reading.currency) == (Decimal("15.00"), "USDT")
    assert reading.detail["order_id"] == order_id and reading.detail["status"] == "paid"
    assert cm_read(s, cm_account).key == reading.key  # the sandbox maps order_id -> uuid deterministically
    by_uuid = RefundSpec("rfd-u", s.amount, s.currency, s.destination, {"uuid": invoice_uuid.upper()})
    same = cm_read(by_uuid, cm_account)
    assert (same.key, same.amount, same.currency) == (reading.key, reading.amount, reading.currency)


def test_cryptomus_payment_info_reads_the_marked_amount(cm_account: Account) -> None:
    reading = cm_read(cm_t.live_spec(f"o-{uuid.uuid4().hex[:8]}-amt25_50"), cm_account)
    assert (reading.amount, str(reading.amount)) == (Decimal("25.50"), "25.50")


def test_cryptomus_unknown_invoice_is_rejected(cm_account: Account) -> None:
    order_id = f"o-{uuid.uuid4().hex[:8]}-sbx58"
    with pytest.raises(ProviderError) as info:
        cm_read(cm_t.live_spec(order_id), cm_account)
    assert info.value.kind is ErrorKind.REJECTED and info.value.http_status == 422
    assert order_id in info.value.message and "Payment was not found" in info.value.message


def test_cryptomus_payment_info_carries_the_real_apis_fields(cm_account: Account) -> None:
    s = cm_t.live_spec(f"o-{uuid.uuid4().hex[:8]}")
    result = json.loads(cm_t.send(CM.build_payment(s, cm_account, 0)).body)["result"]
    documented = {
        "uuid", "order_id", "amount", "payment_amount", "payer_amount", "payer_currency", "currency",
        "merchant_amount", "network", "address", "from", "txid", "payment_status", "url", "expired_at",
        "status", "is_final", "additional_data", "created_at", "updated_at",
    }  # fmt: skip
    assert documented <= set(result)
    assert Decimal(result["merchant_amount"]) < Decimal(result["amount"])
    assert result["address"].startswith("T") and result["address"] != result["from"]
    assert isinstance(result["expired_at"], int) and result["created_at"].endswith("+00:00")
    assert result["url"].endswith(result["uuid"])


# --- over real HTTP: Cobo -----------------------------------------------------------------------------


@pytest.fixture
def cobo_account(sandbox: SandboxServer) -> Account:
    return sandbox.accounts["cobo-sandbox"]


SDK_TX_FIELDS = {
    "tx_id",
    "tx_hash",
    "token_id",
    "from_address",
    "to_address",
    "amount",
    "status",
    "created_timestamp",
    "updated_timestamp",
}


def test_cobo_partial_refund_settles_the_completed_transaction(cobo_account: Account) -> None:
    nonce = cobo_t.Nonces()
    s = cobo_t.live_spec("80.00", order_id="O-sbx52")
    first = cobo_t.submit(s, cobo_account, nonce)
    assert first.settled_amount is None  # Pending: no transaction yet
    polled = cobo_t.with_id(s, first)
    seen = cobo_t.poll_until(polled, cobo_account, nonce, lambda r: r.status is RefundStatus.PARTIALLY_COMPLETED)
    assert seen[-1] == "PartiallyCompleted"
    resp = cobo_t.send(CB.build_status(polled, cobo_account, nonce()))
    result = CB.parse_status(polled, cobo_account, resp)
    assert result.settled_amount == Decimal("48.00")
    assert result.detail["amount"] == "80.00" and result.fee is None
    transactions = json.loads(resp.body)["transactions"]
    assert [(t["status"], t["amount"]) for t in transactions] == [("Completed", "48.00"), ("Failed", "32.00")]
    for t in transactions:
        assert set(t) >= SDK_TX_FIELDS
        assert t["token_id"] == "ETH_USDT" and t["to_address"] == cobo_t.EVM and t["from_address"].startswith("0x")
    assert transactions[0]["tx_id"] != transactions[1]["tx_id"]
    found = CB.parse_lookup(s, cobo_account, cobo_t.send(CB.build_lookup(s, cobo_account, nonce())))
    assert found is not None and found.settled_amount == Decimal("48.00")


def test_cobo_completed_refund_settles_its_whole_amount(cobo_account: Account) -> None:
    nonce = cobo_t.Nonces()
    s = cobo_t.live_spec("80.00")
    polled = cobo_t.with_id(s, cobo_t.submit(s, cobo_account, nonce))
    cobo_t.poll_until(polled, cobo_account, nonce, lambda r: r.status is RefundStatus.COMPLETED)
    resp = cobo_t.send(CB.build_status(polled, cobo_account, nonce()))
    assert CB.parse_status(polled, cobo_account, resp).settled_amount == Decimal("80.00")
    [t] = json.loads(resp.body)["transactions"]
    assert set(t) >= SDK_TX_FIELDS and t["status"] == "Completed"
