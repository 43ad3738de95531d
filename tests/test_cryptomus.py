"""Cryptomus adapter: pure unit tests, then real HTTP against the sandbox emulator."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from config.accounts import Account
from providers import cryptomus as cm
from providers.base import (
    ErrorKind,
    NoncePolicy,
    ProviderError,
    RefundSpec,
    RefundStatus,
    Request,
    Response,
    StatusResult,
    UnmappedStatusError,
)
from providers.cryptomus import ADAPTER
from tests.conftest import SandboxServer

TRON = "TDD97yguPESTpcrJMqU6h2ozZbibv4Vaqm"
EVM = "0x" + "ab" * 20
INVOICE = "62f88b36-a9d5-4fa6-aa26-e040c3dbf26d"
API_KEY = "test-only-key+/=é"
MERCHANT = "8b03432e-385b-4670-8d06-064591096795"

DOCUMENTED = {
    "refund_process", "refund_paid", "refund_fail", "paid", "paid_over", "wrong_amount", "process",
    "confirm_check", "wrong_amount_waiting", "check", "fail", "cancel", "system_fail", "locked",
}  # fmt: skip


def md5_sign(body: bytes, key: str = API_KEY) -> str:
    """Independent of the production signer, to check it."""
    return hashlib.md5(base64.b64encode(body) + key.encode()).hexdigest()


def make_account(key: str = API_KEY, **options: Any) -> Account:
    return Account(
        name="cryptomus-unit",
        provider="cryptomus",
        base_url="http://sandbox.invalid/cryptomus",
        secrets={"api_key": SecretStr(key)},
        options={"merchant": MERCHANT, "is_subtract": True, **options},
    )


def spec(amount: str = "15.00", destination: str = TRON, **fields: Any) -> RefundSpec:
    return RefundSpec("rfd-1", Decimal(amount), "USDT", destination, fields or {"order_id": "order-1"})


def answer(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Response(status, headers or {}, raw)


def info(status: str, **extra: Any) -> Response:
    result = {"uuid": INVOICE, "order_id": "order-1", "amount": "15.00", "currency": "USDT", "status": status}
    return answer({"state": 0, "result": {**result, **extra}})


# --- PHP-style JSON and signing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ({}, "[]"),
        ({"a": {}}, '{"a":[]}'),
        ({"0": "x", "1": "y"}, '["x","y"]'),  # a PHP list once decoded
        ({"1": "x"}, '{"1":"x"}'),
        ({"u": "https://a/é"}, '{"u":"https:\\/\\/a\\/é"}'),
        ({"s": 'q"\\\t\n\x01\x7f'}, '{"s":"q\\"\\\\\\t\\n\\u0001\x7f"}'),
        ({"s": "a\u2028b\u2029"}, '{"s":"a\\u2028b\\u2029"}'),  # PHP escapes line terminators
        ({"b": True, "f": False, "n": None, "i": -5}, '{"b":true,"f":false,"n":null,"i":-5}'),
        ([1.0, 0.1, 1e-5, 1e20, 1e16, -0.0, 15.5], "[1,0.1,1.0e-5,1.0e+20,10000000000000000,-0,15.5]"),
    ],
)
def test_php_json_encode(value: Any, encoded: str) -> None:
    assert cm.php_json_encode(value) == encoded


def test_php_json_decode_turns_big_integers_into_doubles_and_refuses_nan() -> None:
    assert cm.php_json_encode(cm.php_json_decode("[9223372036854775807,9223372036854775808]")) == (
        "[9223372036854775807,9.223372036854776e+18]"
    )
    with pytest.raises(ValueError):
        cm.php_json_decode("[NaN]")


def test_sign_body_is_md5_of_base64_body_plus_key() -> None:
    body = '{"order_id":"é"}'.encode()
    assert cm.sign_body(body, API_KEY) == md5_sign(body)
    assert cm.sign_body(b"", API_KEY) == hashlib.md5(API_KEY.encode()).hexdigest()


# --- status map --------------------------------------------------------------------------------------


def test_status_table_covers_exactly_the_documented_statuses() -> None:
    assert set(cm.STATUS_TABLE) == DOCUMENTED
    assert ADAPTER.status_table is cm.STATUS_TABLE
    assert ADAPTER.settle_seconds == 30  # one refund per invoice


@pytest.mark.parametrize("raw", ["process", "check", "confirm_check", "wrong_amount_waiting"])
def test_payment_in_progress_is_unsure_on_polls_and_lookups(raw: str) -> None:
    for parse in (ADAPTER.parse_status, ADAPTER.parse_lookup):
        with pytest.raises(ProviderError) as exc:
            parse(spec(), make_account(), info(raw))
        assert (exc.value.kind, exc.value.raw_status) == (ErrorKind.UNSURE, raw)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("refund_process", RefundStatus.PROCESSING),
        ("refund_paid", RefundStatus.COMPLETED),
        ("refund_fail", RefundStatus.FAILED),
        ("paid", RefundStatus.PENDING),
        ("paid_over", RefundStatus.PENDING),
        ("wrong_amount", RefundStatus.NEEDS_ATTENTION),
        ("fail", RefundStatus.NEEDS_ATTENTION),
        ("cancel", RefundStatus.NEEDS_ATTENTION),
        ("system_fail", RefundStatus.NEEDS_ATTENTION),
        ("locked", RefundStatus.NEEDS_ATTENTION),
    ],
)
def test_every_documented_status_maps(raw: str, want: RefundStatus) -> None:
    result = ADAPTER.parse_status(spec(), make_account(), info(raw))
    assert (result.status, result.raw_status) == (want, raw)
    if want in (RefundStatus.PENDING, RefundStatus.NEEDS_ATTENTION):
        assert result.reason and raw in result.reason


@pytest.mark.parametrize("raw", ["refund_hold", "Refund_Paid", "", "refunded"])
def test_unknown_status_raises_unmapped(raw: str) -> None:
    with pytest.raises(UnmappedStatusError) as exc:
        ADAPTER.parse_status(spec(), make_account(), info(raw))
    assert exc.value.raw_status == raw and exc.value.kind is ErrorKind.UNMAPPED
    with pytest.raises(UnmappedStatusError):
        ADAPTER.parse_lookup(spec(), make_account(), info(raw))


def test_status_detail_reports_the_invoice_amount_as_given() -> None:
    result = ADAPTER.parse_status(spec(uuid=INVOICE), make_account(), info("refund_paid", amount="15.10"))
    assert result.detail["amount"] == "15.10" and result.detail["currency"] == "USDT"
    assert result.detail["invoice_uuid"] == INVOICE and result.provider_refund_id == INVOICE
    assert "destination" not in result.detail  # payment info carries no refund address


# --- error classification ----------------------------------------------------------------------------

SIGN_ERR = {"state": 1, "message": "Invalid Sign."}


@pytest.mark.parametrize(
    ("resp", "submit", "kind", "retry_after"),
    [
        (answer(SIGN_ERR, 401), True, ErrorKind.AUTH, None),
        (answer(SIGN_ERR, 200), True, ErrorKind.AUTH, None),
        (answer({"message": "Invalid Sign."}, 422), False, ErrorKind.AUTH, None),
        (answer(b"", 401), True, ErrorKind.AUTH, None),
        (answer({"state": 1, "message": "Payment was not found"}, 422), True, ErrorKind.REJECTED, None),
        (answer({"state": 1, "message": "You are forbidden"}, 422), True, ErrorKind.REJECTED, None),
        (
            answer({"state": 1, "errors": {"uuid": ["validation.required_without"]}}, 422),
            True,
            ErrorKind.REJECTED,
            None,
        ),
        (
            answer({"state": 1, "message": "You can make a refund only once"}, 422),
            True,
            ErrorKind.AMBIGUOUS,
            None,
        ),
        (answer({"state": 1, "message": "Refund already requested"}, 422), True, ErrorKind.AMBIGUOUS, None),
        (answer({"state": 1, "message": "Store wallet not found"}, 200), True, ErrorKind.REJECTED, None),
        (
            answer({"message": "Too Many Attempts."}, 429, {"retry-after": "7"}),
            True,
            ErrorKind.RATE_LIMITED,
            7.0,
        ),
        (answer(b"", 429), True, ErrorKind.RATE_LIMITED, None),
        (answer(b"", 503), True, ErrorKind.RETRYABLE, None),
        (answer(b"<html>bad gateway</html>", 503), True, ErrorKind.AMBIGUOUS, None),
        (answer({"message": "Server Error"}, 500), True, ErrorKind.AMBIGUOUS, None),
        (answer({"message": "Server Error"}, 500), False, ErrorKind.RETRYABLE, None),
        (answer(b"<html>ok</html>", 200), True, ErrorKind.AMBIGUOUS, None),
        (answer(b"<html>ok</html>", 200), False, ErrorKind.RETRYABLE, None),
        (answer(b"", 404), False, ErrorKind.REJECTED, None),
    ],
)
def test_error_classification(resp: Response, submit: bool, kind: ErrorKind, retry_after: float | None) -> None:
    parse: Callable[..., Any] = ADAPTER.parse_submit if submit else ADAPTER.parse_status
    with pytest.raises(ProviderError) as exc:
        parse(spec(), make_account(), resp)
    assert exc.value.kind is kind
    assert exc.value.retry_after == retry_after
    assert exc.value.http_status == resp.status_code


def test_validation_errors_are_named_in_the_message() -> None:
    resp = answer({"state": 1, "errors": {"address": ["validation.required"]}}, 422)
    with pytest.raises(ProviderError) as exc:
        ADAPTER.parse_submit(spec(), make_account(), resp)
    assert "address: validation.required" in exc.value.message


def test_secret_never_appears_in_errors() -> None:
    account = make_account()
    with pytest.raises(ProviderError) as exc:
        ADAPTER.parse_submit(spec(), account, answer(SIGN_ERR, 401))
    assert API_KEY not in str(exc.value) and API_KEY not in repr(exc.value.args)


def test_parse_submit_accepts_state_zero() -> None:
    result = ADAPTER.parse_submit(spec(), make_account(), answer({"state": 0, "result": []}))
    assert result.status is RefundStatus.PENDING and result.provider_refund_id == "order-1"
    both = spec(order_id="order-1", uuid=INVOICE.upper())
    assert ADAPTER.parse_submit(both, make_account(), answer({"state": 0, "result": []})).provider_refund_id == (
        INVOICE.upper()
    )


# --- validation --------------------------------------------------------------------------------------


def test_valid_specs_have_no_errors() -> None:
    assert ADAPTER.validate(spec(), make_account()) == []
    assert ADAPTER.validate(spec(uuid=INVOICE, is_subtract=False, network="tron"), make_account()) == []
    assert ADAPTER.validate(spec("0.12345678", EVM, order_id="заказ_1", network="BSC"), make_account()) == []


@pytest.mark.parametrize(
    ("kw", "field", "words"),
    [
        ({"fields": {}}, "fields.order_id", "order_id or uuid is required"),
        ({"fields": {"order_id": "o-1", "amount": "1"}}, "fields.amount", "unknown field"),
        ({"fields": {"order_id": "o/1"}}, "fields.order_id", "letters, digits"),
        ({"fields": {"order_id": "x" * 129}}, "fields.order_id", "1 to 128"),
        ({"fields": {"order_id": ""}}, "fields.order_id", "1 to 128"),
        ({"fields": {"uuid": "not-a-uuid"}}, "fields.uuid", "invoice uuid"),
        ({"fields": {"order_id": "o-1", "is_subtract": "true"}}, "fields.is_subtract", "true or false"),
        ({"fields": {"order_id": "o-1", "network": 5}}, "fields.network", "network code"),
        ({"amount": Decimal("1.123456789")}, "amount", "at most 8 decimal places"),
        ({"amount": Decimal("0")}, "amount", "greater than zero"),
        ({"destination": EVM, "fields": {"order_id": "o-1", "network": "tron"}}, "destination", "tron"),
        ({"destination": TRON, "fields": {"order_id": "o-1", "network": "eth"}}, "destination", "evm"),
        ({"destination": TRON + " "}, "destination", "whitespace"),
    ],
)
def test_validate_names_field_and_rule(kw: dict[str, Any], field: str, words: str) -> None:
    values: dict[str, Any] = {"refund_id": "r", "amount": Decimal("15"), "currency": "USDT"}
    values |= {"destination": TRON, "fields": {"order_id": "o-1"}} | kw
    errors = ADAPTER.validate(RefundSpec(**values), make_account())
    assert any(e.field == field and words in e.rule for e in errors), errors


def test_validate_checks_the_account() -> None:
    account = Account("a", "cryptomus", "http://sandbox.invalid", {}, {"is_subtract": "yes"})
    fields = {e.field for e in ADAPTER.validate(spec(), account)}
    assert fields == {"account.merchant", "account.api_key", "account.is_subtract"}


def test_contract_constants_and_exclusive_key() -> None:
    assert ADAPTER.name == "cryptomus" and ADAPTER.nonce_policy is NoncePolicy.NONE
    assert ADAPTER.exclusive_key(spec(order_id="o-1")) == "invoice:o-1"
    assert ADAPTER.exclusive_key(spec(order_id="o-1", uuid=INVOICE.upper())) == f"invoice:{INVOICE}"


# --- requests ----------------------------------------------------------------------------------------


def check_signed(req: Request, url: str, body: str) -> None:
    assert (req.method, req.url) == ("POST", url)
    assert req.body == body.encode()
    assert dict(req.headers) == {
        "merchant": MERCHANT,
        "sign": md5_sign(body.encode()),
        "Content-Type": "application/json",
        "Accept": "application/json",
    }


def test_build_submit() -> None:
    req = ADAPTER.build_submit(spec(uuid=INVOICE), make_account(), 0)
    body = f'{{"uuid":"{INVOICE}","address":"{TRON}","is_subtract":true}}'
    check_signed(req, "http://sandbox.invalid/cryptomus/v1/payment/refund", body)


def test_build_submit_field_overrides_option_and_keeps_unicode_raw() -> None:
    s = spec(order_id="заказ-1", is_subtract=False)
    req = ADAPTER.build_submit(s, make_account(is_subtract=True), 0)
    check_signed(
        req,
        "http://sandbox.invalid/cryptomus/v1/payment/refund",
        f'{{"order_id":"заказ-1","address":"{TRON}","is_subtract":false}}',
    )
    option_only = ADAPTER.build_submit(spec(), make_account(is_subtract=False), 0)
    assert option_only.body is not None and option_only.body.endswith(b'"is_subtract":false}')


def test_build_status_and_lookup_name_the_invoice() -> None:
    for build in (ADAPTER.build_status, ADAPTER.build_lookup):
        check_signed(
            build(spec(), make_account(), 0),
            "http://sandbox.invalid/cryptomus/v1/payment/info",
            '{"order_id":"order-1"}',
        )
        both = spec(uuid=INVOICE, order_id="o-1")
        assert build(both, make_account(), 0).body == f'{{"uuid":"{INVOICE}","order_id":"o-1"}}'.encode()


def test_parse_lookup_found_absent_and_not_refundable() -> None:
    account = make_account()
    assert ADAPTER.parse_lookup(spec(), account, info("paid")) is None
    assert ADAPTER.parse_lookup(spec(), account, info("paid_over")) is None
    found = ADAPTER.parse_lookup(spec(), account, info("refund_process"))
    assert found is not None and found.status is RefundStatus.PROCESSING and found.detail["amount"] == "15.00"
    for raw in ("fail", "cancel", "locked", "wrong_amount", "system_fail"):
        contradicts = ADAPTER.parse_lookup(spec(), account, info(raw))
        assert contradicts is not None and contradicts.status is RefundStatus.NEEDS_ATTENTION
        assert contradicts.reason and raw in contradicts.reason
    with pytest.raises(ProviderError) as exc:
        ADAPTER.parse_lookup(spec(), account, info("process"))
    assert exc.value.kind is ErrorKind.UNSURE
    # The documented "no such invoice": no refund can be on it, so it is proof of absence.
    assert ADAPTER.parse_lookup(spec(), account, answer({"state": 1, "message": "Payment was not found"}, 422)) is None
    with pytest.raises(ProviderError) as exc:  # any other 422 is not
        ADAPTER.parse_lookup(spec(), account, answer({"state": 1, "message": "Validation failed"}, 422))
    assert exc.value.kind is ErrorKind.REJECTED


# --- webhooks ----------------------------------------------------------------------------------------


def webhook(payload: dict[str, Any], key: str = API_KEY, **dump: Any) -> bytes:
    # Signed as Cryptomus documents it (PHP json_encode with JSON_UNESCAPED_UNICODE), re-derived here.
    signed = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
    return json.dumps({**payload, "sign": md5_sign(signed.encode(), key)}, **dump).encode()


PAYLOAD = {"type": "payment", "uuid": INVOICE, "order_id": "o-1", "amount": "15.00", "currency": "USDT",
           "status": "refund_paid", "additional_data": "https://shop.example/é"}  # fmt: skip


def test_verify_webhook_accepts_any_formatting_of_a_signed_body() -> None:
    for body in (webhook(PAYLOAD), webhook(PAYLOAD, indent=2), webhook(PAYLOAD, ensure_ascii=False)):
        result = ADAPTER.verify_webhook({}, body, make_account())
        assert (result.status, result.raw_status, result.provider_refund_id) == (
            RefundStatus.COMPLETED,
            "refund_paid",
            INVOICE,
        )
        assert result.detail["amount"] == "15.00"


@pytest.mark.parametrize(
    "body",
    [
        webhook(PAYLOAD).replace(b"refund_paid", b"refund_fail"),
        webhook(PAYLOAD, key="another-key"),
        json.dumps(PAYLOAD).encode(),  # no sign at all
        b"not json",
        b"[1,2]",
    ],
)
def test_verify_webhook_refuses_as_auth(body: bytes) -> None:
    with pytest.raises(ProviderError) as exc:
        ADAPTER.verify_webhook({}, body, make_account())
    assert exc.value.kind is ErrorKind.AUTH


def test_webhook_in_an_unsure_state_is_only_a_poll_hint() -> None:
    result = ADAPTER.verify_webhook({}, webhook({**PAYLOAD, "status": "confirm_check"}), make_account())
    assert (result.status, result.raw_status) == (RefundStatus.UNKNOWN, "confirm_check")


def test_verified_webhook_with_unknown_status_is_unmapped() -> None:
    with pytest.raises(UnmappedStatusError):
        ADAPTER.verify_webhook({}, webhook({**PAYLOAD, "status": "refund_hold"}), make_account())


# --- real HTTP against the sandbox -------------------------------------------------------------------


def send(req: Request, timeout: float = 5.0) -> Response:
    with httpx.Client(timeout=timeout) as client:
        r = client.request(req.method, req.url, headers=dict(req.headers), content=req.body)
    return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


@pytest.fixture
def acct(sandbox: SandboxServer) -> Account:
    return sandbox.accounts["cryptomus-sandbox"]


def live_spec(order_id: str, amount: str = "15.00", **fields: Any) -> RefundSpec:
    return RefundSpec(f"rfd-{time.time_ns()}", Decimal(amount), "USDT", TRON, {"order_id": order_id, **fields})


def submit(s: RefundSpec, account: Account) -> StatusResult:
    return ADAPTER.parse_submit(s, account, send(ADAPTER.build_submit(s, account, 0)))


def lookup(s: RefundSpec, account: Account) -> StatusResult | None:
    return ADAPTER.parse_lookup(s, account, send(ADAPTER.build_lookup(s, account, 0)))


def poll_until(s: RefundSpec, account: Account, done: Callable[[StatusResult], bool]) -> list[str]:
    """Raw statuses seen until `done`; bounded by a deadline."""
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while True:
        result = ADAPTER.parse_status(s, account, send(ADAPTER.build_status(s, account, 0)))
        if not seen or seen[-1] != result.raw_status:
            seen.append(result.raw_status)
        if done(result):
            return seen
        assert time.monotonic() < deadline, f"still {seen} after 5 s"
        time.sleep(0.05)


def refunds_in(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return [r for r in sandbox.ledger()["refunds"] if r["provider"] == "cryptomus"]


def test_wrong_key_is_refused_in_cryptomus_shape_as_auth(sandbox: SandboxServer, acct: Account) -> None:
    wrong = Account(acct.name, "cryptomus", acct.base_url, {"api_key": SecretStr("not-the-key")}, acct.options)
    stranger = Account(acct.name, "cryptomus", acct.base_url, acct.secrets, {**acct.options, "merchant": MERCHANT})
    s = live_spec("o-auth")
    for account in (wrong, stranger):
        resp = send(ADAPTER.build_submit(s, account, 0))
        assert resp.status_code == 401 and json.loads(resp.body) == {"state": 1, "message": "Invalid Sign."}
        with pytest.raises(ProviderError) as exc:
            ADAPTER.parse_submit(s, account, resp)
        assert exc.value.kind is ErrorKind.AUTH
    # A body changed after signing is refused too: the sign covers the exact bytes.
    req = ADAPTER.build_submit(s, acct, 0)
    assert req.body is not None
    tampered = Request(req.method, req.url, req.headers, req.body.replace(b"o-auth", b"o-auth2"))
    assert send(tampered).status_code == 401
    assert refunds_in(sandbox) == []


def test_create_then_status_reaches_completed(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-amt25_50-1", "25.50")
    assert lookup(s, acct) is None  # a paid invoice: safe to send
    result = submit(s, acct)
    assert result.status is RefundStatus.PENDING and result.provider_refund_id == "o-amt25_50-1"
    seen = poll_until(s, acct, lambda r: r.status is RefundStatus.COMPLETED)
    assert seen == ["refund_process", "refund_paid"]
    final = ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, 0)))
    assert final.detail["amount"] == "25.50"
    [entry] = refunds_in(sandbox)
    assert (entry["created"], entry["create_calls"], entry["destination"]) == (1, 1, TRON)


def test_invoice_named_by_uuid_and_order_id(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-both", uuid=INVOICE)
    submit(s, acct)
    found = lookup(s, acct)
    assert found is not None and found.detail["invoice_uuid"] == INVOICE and found.provider_refund_id == INVOICE
    [entry] = refunds_in(sandbox)
    assert entry["refund_key"] == INVOICE


def test_one_refund_per_invoice(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-twice")
    submit(s, acct)
    resp = send(ADAPTER.build_submit(s, acct, 0))
    assert resp.status_code == 422 and json.loads(resp.body)["state"] == 1
    with pytest.raises(ProviderError) as exc:
        ADAPTER.parse_submit(s, acct, resp)
    assert exc.value.kind is ErrorKind.AMBIGUOUS  # the worker looks it up, and finds it
    assert lookup(s, acct) is not None
    [entry] = refunds_in(sandbox)
    assert (entry["created"], entry["create_calls"]) == (1, 2)


@pytest.mark.parametrize(
    ("order_id", "final", "raw"),
    [
        ("o-sbx51", RefundStatus.FAILED, "refund_fail"),
        ("o-sbx52", RefundStatus.COMPLETED, "refund_paid"),  # PARTIAL: no counterpart, NORMAL
        ("o-sbx59", RefundStatus.COMPLETED, "refund_paid"),  # ACTION_REQUIRED: no counterpart, NORMAL
    ],
)
def test_scenario_outcomes(sandbox: SandboxServer, acct: Account, order_id: str, final: RefundStatus, raw: str) -> None:
    submit(live_spec(order_id), acct)
    assert poll_until(live_spec(order_id), acct, lambda r: r.status is final)[-1] == raw


def test_undocumented_status_is_never_silently_mapped(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-sbx57")
    submit(s, acct)
    deadline = time.monotonic() + 5
    with pytest.raises(UnmappedStatusError) as exc:
        while time.monotonic() < deadline:
            ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, 0)))
            time.sleep(0.05)
    assert exc.value.raw_status == "refund_hold"


def test_rejected_scenario(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-sbx58")
    with pytest.raises(ProviderError) as exc:
        submit(s, acct)
    assert exc.value.kind is ErrorKind.REJECTED and exc.value.message == "Payment was not found"
    assert lookup(s, acct) is None  # no such invoice: absent, and a resend is refused the same way
    assert refunds_in(sandbox) == []


def test_validation_errors_come_in_laravel_shape(sandbox: SandboxServer, acct: Account) -> None:
    req = cm.json_request(f"{acct.base_url}/v1/payment/refund", acct.option("merchant"), acct.secret("api_key"), {})
    resp = send(req)
    body = json.loads(resp.body)
    assert resp.status_code == 422 and body["errors"]["order_id"] == ["validation.required_without"]
    assert body["errors"]["address"] == ["validation.required"]
    with pytest.raises(ProviderError) as exc:
        ADAPTER.parse_submit(live_spec("x"), acct, resp)
    assert exc.value.kind is ErrorKind.REJECTED


def test_timeout_after_commit_then_lookup_finds_it(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-sbx56")
    with pytest.raises(httpx.ReadTimeout):
        send(ADAPTER.build_submit(s, acct, 0), timeout=0.5)  # the sandbox hangs 3 s
    found = lookup(s, acct)
    assert found is not None and found.raw_status.startswith("refund_") and found.detail["amount"] == "15.00"
    [entry] = refunds_in(sandbox)
    assert entry["created"] == 1


def test_rate_limited_scenario(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-sbx54")
    resp = send(ADAPTER.build_submit(s, acct, 0))
    assert resp.status_code == 429 and json.loads(resp.body) == {"state": 1, "message": "Too Many Attempts."}
    with pytest.raises(ProviderError) as exc:
        ADAPTER.parse_submit(s, acct, resp)
    assert exc.value.kind is ErrorKind.RATE_LIMITED and exc.value.retry_after == 1.0
    assert refunds_in(sandbox) == []
    assert submit(s, acct).status is RefundStatus.PENDING  # the fault fires once


def test_rate_limit_per_merchant(sandbox: SandboxServer, acct: Account) -> None:
    sandbox.configure(rate_limit={acct.option("merchant"): 2.0})
    s = live_spec("o-rate")
    kinds: list[str] = []
    for _ in range(4):
        try:
            lookup(s, acct)
            kinds.append("ok")
        except ProviderError as exc:
            kinds.append(exc.kind)
            assert exc.retry_after is not None and exc.retry_after >= 1
    assert kinds[:2] == ["ok", "ok"] and ErrorKind.RATE_LIMITED in kinds[2:]


def test_server_error_creates_nothing_and_resend_is_safe(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-sbx55")
    with pytest.raises(ProviderError) as exc:
        submit(s, acct)
    assert exc.value.kind is ErrorKind.AMBIGUOUS
    assert lookup(s, acct) is None
    assert submit(s, acct).status is RefundStatus.PENDING
    [entry] = refunds_in(sandbox)
    assert entry["created"] == 1


def test_outage_answers_empty_503(sandbox: SandboxServer, acct: Account) -> None:
    sandbox.configure(outage={"cryptomus": True})
    resp = send(ADAPTER.build_submit(live_spec("o-down"), acct, 0))
    assert resp.status_code == 503 and resp.body == b""
    with pytest.raises(ProviderError) as exc:
        ADAPTER.parse_submit(live_spec("o-down"), acct, resp)
    assert exc.value.kind is ErrorKind.RETRYABLE


def test_drift_shows_in_payment_info(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec("o-drift")
    submit(s, acct)
    r = httpx.post(
        f"{sandbox.base_url}/_sandbox/drift/cryptomus/o-drift",
        json={"status": "refund_fail", "amount": "1.00"},
    )
    r.raise_for_status()
    result = ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, 0)))
    assert (result.status, result.detail["amount"]) == (RefundStatus.FAILED, "1.00")


def test_history_lists_refunded_invoices(sandbox: SandboxServer, acct: Account) -> None:
    submit(live_spec("o-hist"), acct)
    req = cm.json_request(f"{acct.base_url}/{cm.LIST_PATH}", acct.option("merchant"), acct.secret("api_key"), {})
    assert req.body == b"[]"  # the PHP SDK's empty parameters
    body = json.loads(send(req).body)
    assert [i["order_id"] for i in body["result"]["items"]] == ["o-hist"]


def test_build_submit_never_guesses_a_non_boolean_is_subtract() -> None:
    with pytest.raises(ValueError, match="is_subtract"):
        ADAPTER.build_submit(spec(), make_account(is_subtract="false"), 0)
