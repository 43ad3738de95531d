"""CoinCorner adapter: pure unit tests, then real HTTP against the sandbox (tests/conftest.py `sandbox`)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from pydantic import SecretStr

from config.accounts import Account
from providers import coincorner
from providers.base import (
    ErrorKind,
    ProviderError,
    RefundSpec,
    RefundStatus,
    Request,
    Response,
    StatusResult,
    UnmappedStatusError,
)
from tests.conftest import SandboxServer

ADAPTER = coincorner.ADAPTER
BTC_ADDRESS = "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
KEY = "F6A425A0-08C0-4DF5-B56B-98E4AFA01995"  # test-only, upper-case on purpose
SECRET = "0D3C1B2A9E8F4A7BB6C5D4E3F2A1B0C9"


def make_account(**options: Any) -> Account:
    return Account(
        name="cc-test",
        provider="coincorner",
        base_url="http://127.0.0.1:9/coincorner/api",
        secrets={"api_key": SecretStr(KEY), "api_secret": SecretStr(SECRET)},
        options={"user_id": "AbC123", **options},
    )


def make_spec(order_id: str = "55", amount: str = "10.00", currency: str = "GBP", **fields: Any) -> RefundSpec:
    return RefundSpec(
        refund_id="rq-1",
        amount=Decimal(amount),
        currency=currency,
        destination=BTC_ADDRESS,
        fields={"order_id": order_id, **fields},
    )


def answer(status: int, body: Any = b"", **headers: str) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status, {k.lower().replace("_", "-"): v for k, v in headers.items()}, raw)


def check_answer(order_status: int | str, order_id: str = "55", text: str | None = None) -> Response:
    body: dict[str, Any] = {"OrderId": order_id, "OrderStatus": order_status}
    body["OrderStatusText"] = text if text is not None else coincorner.STATUS_TEXT.get(str(order_status), "?")
    return answer(200, body)


# --- statuses ---------------------------------------------------------------------------------------

# None: the payment is still open (UNSURE): both reads raise ProviderError(UNSURE).
DOCUMENTED: dict[str, RefundStatus | None] = {
    "0": None,
    "1": None,
    "2": RefundStatus.PENDING,
    "-1": RefundStatus.NEEDS_ATTENTION,
    "-2": RefundStatus.NEEDS_ATTENTION,
    "-4": RefundStatus.PROCESSING,
    "-5": RefundStatus.COMPLETED,
    "-99": None,
}


def test_status_table_covers_exactly_the_documented_statuses() -> None:
    assert set(coincorner.STATUS_TABLE) == {*DOCUMENTED, coincorner.UNKNOWN_ORDER}
    assert set(coincorner.STATUS_TEXT) == set(DOCUMENTED)
    assert ADAPTER.status_table is coincorner.STATUS_TABLE
    assert ADAPTER.settle_seconds == 30  # one refund per OrderId


@pytest.mark.parametrize(("raw", "expected"), DOCUMENTED.items())
def test_parse_status_maps_every_documented_status(raw: str, expected: RefundStatus | None) -> None:
    if expected is None:
        with pytest.raises(ProviderError) as caught:
            ADAPTER.parse_status(make_spec(), make_account(), check_answer(int(raw)))
        assert caught.value.kind is ErrorKind.UNSURE and caught.value.raw_status == raw
        return
    result = ADAPTER.parse_status(make_spec(), make_account(), check_answer(int(raw)))
    assert result.status is expected
    assert result.raw_status == raw
    assert result.provider_refund_id == "55"
    if expected is RefundStatus.NEEDS_ATTENTION:
        assert result.reason and raw in result.reason


def test_status_given_as_a_string_is_mapped_the_same() -> None:
    result = ADAPTER.parse_status(make_spec(), make_account(), check_answer("-5"))
    assert result.status is RefundStatus.COMPLETED


@pytest.mark.parametrize("raw", [-7, -3, 3, "Refunded", "-5.0"])
def test_unknown_status_raises_unmapped(raw: int | str) -> None:
    with pytest.raises(UnmappedStatusError) as info:
        ADAPTER.parse_status(make_spec(), make_account(), check_answer(raw, text="x"))
    assert info.value.kind is ErrorKind.UNMAPPED
    assert info.value.raw_status == str(raw)


@pytest.mark.parametrize(
    "resp",
    [
        answer(200, b"<html>"),
        answer(200, {"OrderId": "55"}),
        answer(200, {"OrderId": "55", "OrderStatus": True}),
        answer(200, {"OrderId": "other", "OrderStatus": -5}),
    ],
)
def test_unusable_status_answers_are_errors_not_statuses(resp: Response) -> None:
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_status(make_spec(), make_account(), resp)
    assert info.value.kind is ErrorKind.RETRYABLE


def test_unknown_order_answer_needs_attention_never_rejected() -> None:
    # A refund may have been sent on it: "rejected" would claim no money moved.
    resp = answer(200, {"OrderId": None, "OrderStatusText": "N/A", "Error": "Invalid OrderId"})
    for parse in (ADAPTER.parse_status, ADAPTER.parse_lookup):
        result = parse(make_spec(), make_account(), resp)
        assert result is not None
        assert (result.status, result.raw_status) == (RefundStatus.NEEDS_ATTENTION, "N/A")
        assert result.reason and "Invalid OrderId" in result.reason


@pytest.mark.parametrize(("message", "kind"), [("Invalid nonce", ErrorKind.NONCE), ("Bad signature", ErrorKind.AUTH)])
def test_check_order_error_body_naming_credentials_is_that_error(message: str, kind: ErrorKind) -> None:
    resp = answer(200, {"OrderStatusText": "N/A", "Error": message})
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_lookup(make_spec(), make_account(), resp)
    assert info.value.kind is kind


# --- lookup -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "status"), [(-4, RefundStatus.PROCESSING), (-5, RefundStatus.COMPLETED)])
def test_lookup_finds_a_refund(raw: int, status: RefundStatus) -> None:
    found = ADAPTER.parse_lookup(make_spec(), make_account(), check_answer(raw))
    assert found is not None and found.status is status and found.provider_refund_id == "55"


def test_lookup_of_a_paid_order_without_refund_is_none() -> None:
    assert ADAPTER.parse_lookup(make_spec(), make_account(), check_answer(2)) is None


@pytest.mark.parametrize("raw", [0, 1, -99])
def test_lookup_of_an_order_still_awaiting_payment_is_unsure(raw: int) -> None:
    with pytest.raises(ProviderError) as caught:
        ADAPTER.parse_lookup(make_spec(), make_account(), check_answer(raw))
    assert caught.value.kind is ErrorKind.UNSURE


@pytest.mark.parametrize("raw", [-1, -2])
def test_lookup_of_a_not_refundable_order_needs_attention(raw: int) -> None:
    found = ADAPTER.parse_lookup(make_spec(), make_account(), check_answer(raw))
    assert found is not None
    assert (found.status, found.raw_status) == (RefundStatus.NEEDS_ATTENTION, str(raw))
    assert found.reason and "contradicts" in found.reason


def test_lookup_of_an_undocumented_status_raises_unmapped() -> None:
    with pytest.raises(UnmappedStatusError):
        ADAPTER.parse_lookup(make_spec(), make_account(), check_answer(-7, text="?"))


# --- error classification ---------------------------------------------------------------------------

ERRORS: list[tuple[Response, bool, ErrorKind, float | None]] = [
    (answer(503), True, ErrorKind.RETRYABLE, None),
    (answer(503), False, ErrorKind.RETRYABLE, None),
    (answer(503, {"Message": "maintenance"}), True, ErrorKind.AMBIGUOUS, None),
    (answer(500, {"Message": "An error has occurred."}), True, ErrorKind.AMBIGUOUS, None),
    (answer(502, b"bad gateway"), True, ErrorKind.AMBIGUOUS, None),
    (answer(500, {"Message": "An error has occurred."}), False, ErrorKind.RETRYABLE, None),
    (answer(429, {"Message": "Too many requests"}, Retry_After="7"), True, ErrorKind.RATE_LIMITED, 7.0),
    (answer(429, b"", Retry_After="1.5"), False, ErrorKind.RATE_LIMITED, 1.5),
    (answer(429, b"", Retry_After="Wed, 21 Oct 2015 07:28:00 GMT"), True, ErrorKind.RATE_LIMITED, None),
    (answer(429, b""), True, ErrorKind.RATE_LIMITED, None),
    (answer(401, {"Message": "Authorization has been denied for this request."}), True, ErrorKind.AUTH, None),
    (answer(403, b""), False, ErrorKind.AUTH, None),
    (answer(400, {"Message": "Invalid Signature"}), True, ErrorKind.AUTH, None),
    (answer(400, {"Message": "Invalid nonce"}), True, ErrorKind.NONCE, None),
    (answer(401, {"Message": "Nonce must be increasing"}), False, ErrorKind.NONCE, None),
    (answer(400, {"Message": "Insufficient balance"}), True, ErrorKind.REJECTED, None),
    (answer(404, {"Message": "Order not found"}), True, ErrorKind.REJECTED, None),
    (answer(400, {"Message": "Order already refunded"}), True, ErrorKind.AMBIGUOUS, None),
    (answer(400, {"Message": "Order already refunded"}), False, ErrorKind.REJECTED, None),
    (answer(400, b"plain text refusal"), True, ErrorKind.REJECTED, None),
]


@pytest.mark.parametrize(("resp", "submit", "kind", "retry_after"), ERRORS)
def test_error_classification(resp: Response, submit: bool, kind: ErrorKind, retry_after: float | None) -> None:
    spec, account = make_spec(), make_account()
    parse: Callable[..., Any] = ADAPTER.parse_submit if submit else ADAPTER.parse_status
    with pytest.raises(ProviderError) as info:
        parse(spec, account, resp)
    assert info.value.kind is kind
    assert info.value.retry_after == retry_after
    assert info.value.http_status == resp.status_code
    assert SECRET not in str(info.value) and SECRET.lower() not in str(info.value)


def test_error_message_comes_from_the_aspnet_shape() -> None:
    error = coincorner.classify_error(answer(400, {"Message": "Insufficient balance"}), submit=True)
    assert "Insufficient balance" in error.message


# --- validation -------------------------------------------------------------------------------------


def test_valid_spec_has_no_errors() -> None:
    assert ADAPTER.validate(make_spec(), make_account()) == []
    assert ADAPTER.validate(make_spec(amount="0.00012345", currency="BTC"), make_account()) == []
    assert ADAPTER.validate(make_spec(refund_type="BuyNew"), make_account()) == []


def _rules(spec: RefundSpec, account: Account | None = None) -> dict[str, str]:
    return {e.field: e.rule for e in ADAPTER.validate(spec, account or make_account())}


@pytest.mark.parametrize(
    ("spec", "field", "rule_part"),
    [
        (dataclasses.replace(make_spec(), fields={}), "fields.order_id", "required"),
        (make_spec(order_id=""), "fields.order_id", "required"),
        (make_spec(order_id=" 55"), "fields.order_id", "no outer spaces"),
        (make_spec(invoice="x"), "fields.invoice", "unknown field"),
        (make_spec(amount="10.001"), "amount", "at most 2 decimal places"),
        (make_spec(amount="0.000000001", currency="BTC"), "amount", "at most 8 decimal places"),
        (make_spec(amount="0"), "amount", "greater than zero"),
        (make_spec(amount="-1"), "amount", "greater than zero"),
        (make_spec(currency="gbp"), "currency", "3-letter"),
        (make_spec(currency="USDT"), "currency", "3-letter"),
        (dataclasses.replace(make_spec(), destination="0x" + "ab" * 20), "destination", "bitcoin"),
        (dataclasses.replace(make_spec(), destination=BTC_ADDRESS + " "), "destination", "whitespace"),
        (make_spec(refund_type="1; drop"), "fields.refund_type", "enum value"),
    ],
)
def test_validate_names_field_and_rule(spec: RefundSpec, field: str, rule_part: str) -> None:
    rules = _rules(spec)
    assert field in rules, rules
    assert rule_part in rules[field]


def test_validate_requires_the_account_user_id() -> None:
    account = dataclasses.replace(make_account(), options={})
    assert "account.user_id" in _rules(make_spec(), account)


def test_exclusive_key_is_one_refund_per_order() -> None:
    assert ADAPTER.exclusive_key(make_spec(order_id="A-7")) == "order:A-7"
    assert ADAPTER.nonce_policy == "increasing" and ADAPTER.nonce_unit == "ms"
    assert ADAPTER.required_fields == ("order_id",)


# --- requests ---------------------------------------------------------------------------------------


def _independent_signature(nonce: int) -> str:
    message = f"{nonce}abc123{KEY.lower()}".encode()
    return hmac.new(SECRET.lower().encode(), message, hashlib.sha256).hexdigest()


def test_build_submit_sends_the_signed_form() -> None:
    nonce = 1735689606123
    request = ADAPTER.build_submit(make_spec(order_id="Nr 5/ü", amount="10.50"), make_account(), nonce)
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9/coincorner/api/RefundOrder"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert (
        request.body
        == (
            f"APIKey={KEY.lower()}&Signature={_independent_signature(nonce)}&Nonce={nonce}"
            f"&OrderId=Nr+5%2F%C3%BC&Amount=10.50&Address={BTC_ADDRESS}&RefundType=1"
        ).encode()
    )


def test_refund_type_comes_from_the_field_then_the_account_then_the_default() -> None:
    def refund_type(spec: RefundSpec, account: Account) -> str:
        body = ADAPTER.build_submit(spec, account, 1).body
        assert body is not None
        return dict(parse_qsl(body.decode()))["RefundType"]

    assert refund_type(make_spec(), dataclasses.replace(make_account(), options={"user_id": "1"})) == "1"
    assert refund_type(make_spec(), make_account(refund_type="0")) == "0"
    assert refund_type(make_spec(refund_type="BuyNew"), make_account(refund_type="0")) == "BuyNew"


def test_amount_is_a_plain_decimal() -> None:
    body = ADAPTER.build_submit(make_spec(amount="1E+1"), make_account(), 5).body
    assert body is not None and b"&Amount=10&" in body


def test_status_lookup_and_get_order_post_the_order_id() -> None:
    account = make_account()
    for build, endpoint in (
        (ADAPTER.build_status, "CheckOrder"),
        (ADAPTER.build_lookup, "CheckOrder"),
        (lambda s, a, n: ADAPTER.build_get_order("55", a, n), "GetOrder"),
    ):
        request = build(make_spec(), account, 42)
        assert request.url.endswith(f"/api/{endpoint}")
        assert (
            request.body == f"APIKey={KEY.lower()}&Signature={_independent_signature(42)}&Nonce=42&OrderId=55".encode()
        )


def test_json_body_is_the_same_fields_as_an_object() -> None:
    params = {"OrderId": "55"}
    body = coincorner.json_body(KEY, SECRET, "AbC123", 42, params)
    assert body == {
        "APIKey": KEY.lower(),
        "Signature": _independent_signature(42),
        "Nonce": "42",
        "OrderId": "55",
    }
    with pytest.raises(ValueError):
        coincorner.json_body(KEY, SECRET, "AbC123", 42, {"Nonce": "1"})


def test_signature_check_is_case_insensitive_and_exact() -> None:
    good = _independent_signature(7)
    assert coincorner.signature_matches(good.upper(), 7, "ABC123", KEY, SECRET)
    assert not coincorner.signature_matches(good, 8, "abc123", KEY, SECRET)


@pytest.mark.parametrize("status", [200, 204])
def test_accepted_refund_is_pending_and_known_by_order_id(status: int) -> None:
    result = ADAPTER.parse_submit(make_spec(order_id="77"), make_account(), answer(status, b'"ok"'))
    assert result == StatusResult(
        RefundStatus.PENDING, "accepted", provider_refund_id="77", detail={"raw_body": '"ok"'}
    )


# --- webhooks ---------------------------------------------------------------------------------------


def test_webhook_with_our_key_is_a_poll_hint() -> None:
    body = json.dumps({"OrderId": "55", "APIKey": KEY.lower()}).encode()
    result = ADAPTER.verify_webhook({"content-type": "application/json"}, body, make_account())
    assert result.status is RefundStatus.PENDING and result.raw_status == "callback"
    assert result.provider_refund_id == "55"


def test_webhook_status_is_mapped_when_present() -> None:
    body = f"OrderId=55&APIKey={KEY.lower()}&OrderStatus=-5".encode()
    result = ADAPTER.verify_webhook({"content-type": "application/x-www-form-urlencoded"}, body, make_account())
    assert result.status is RefundStatus.COMPLETED and result.raw_status == "-5"


@pytest.mark.parametrize(
    "body",
    [
        {"OrderId": "55", "APIKey": "f6a425a0-0000-0000-0000-000000000000"},
        {"OrderId": "55", "APIKey": KEY},  # the plugins compare against the lower-cased key exactly
        {"OrderId": "55"},
        {"OrderId": "55", "APIKey": 1},
    ],
)
def test_webhook_with_another_key_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as info:
        ADAPTER.verify_webhook({}, json.dumps(body).encode(), make_account())
    assert info.value.kind is ErrorKind.AUTH
    assert KEY.lower() not in str(info.value)


# --- over real HTTP against the sandbox -------------------------------------------------------------


@pytest.fixture
def account(sandbox: SandboxServer) -> Account:
    return sandbox.accounts["coincorner-sandbox"]


@pytest.fixture
def nonces() -> Iterator[int]:
    return itertools.count(int(time.time() * 1000))


def send(request: Request, timeout: float = 5.0) -> Response:
    r = httpx.request(request.method, request.url, headers=dict(request.headers), content=request.body, timeout=timeout)
    return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


def sandbox_spec(amount: str = "10.00", marker: str = "") -> RefundSpec:
    return make_spec(order_id=f"ord-{uuid.uuid4().hex[:12]}{marker}", amount=amount)


def refunds(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return [r for r in sandbox.ledger()["refunds"] if r["provider"] == "coincorner"]


def poll_until(check: Callable[[], StatusResult], done: Callable[[StatusResult], bool], seconds: float = 5.0) -> list:
    seen: list[RefundStatus] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        seen.append(result.status)
        if done(result):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not done within {seconds} s; saw {seen}")


def test_wrong_secret_is_refused_as_auth(sandbox: SandboxServer, account: Account, nonces: Iterator[int]) -> None:
    wrong = dataclasses.replace(account, secrets={**account.secrets, "api_secret": SecretStr("00" * 16)})
    spec = sandbox_spec()
    resp = send(ADAPTER.build_submit(spec, wrong, next(nonces)))
    assert resp.status_code == 401 and "Message" in json.loads(resp.body)
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec, wrong, resp)
    assert info.value.kind is ErrorKind.AUTH
    assert refunds(sandbox) == []


def test_refund_reaches_completed_on_the_clock(sandbox: SandboxServer, account: Account, nonces: Iterator[int]) -> None:
    spec = sandbox_spec()
    assert ADAPTER.parse_lookup(spec, account, send(ADAPTER.build_lookup(spec, account, next(nonces)))) is None
    accepted = ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    assert accepted.status is RefundStatus.PENDING and accepted.provider_refund_id == spec.fields["order_id"]
    seen = poll_until(
        lambda: ADAPTER.parse_status(spec, account, send(ADAPTER.build_status(spec, account, next(nonces)))),
        lambda r: r.status is RefundStatus.COMPLETED,
    )
    assert RefundStatus.PROCESSING in seen and seen[-1] is RefundStatus.COMPLETED
    [entry] = refunds(sandbox)
    assert (entry["created"], entry["amount"], entry["destination"]) == (1, "10.00", BTC_ADDRESS)
    assert entry["key_id"] == account.secret("api_key").lower()


def test_sandbox_accepts_a_json_body_and_get_order(sandbox: SandboxServer, account: Account) -> None:
    fields = coincorner.json_body(
        account.secret("api_key"),
        account.secret("api_secret"),
        account.require("user_id"),
        10,
        {"OrderId": "9"},
    )
    r = httpx.post(f"{account.base_url}/CheckOrder", json=fields, timeout=5)
    assert r.status_code == 200 and r.json()["OrderStatus"] == 2
    resp = send(ADAPTER.build_get_order("9", account, 11))
    assert resp.status_code == 200 and json.loads(resp.body)["OrderId"] == "9"


def test_timeout_after_commit_then_lookup_finds_it(
    sandbox: SandboxServer, account: Account, nonces: Iterator[int]
) -> None:
    spec = sandbox_spec(amount="12.56")
    with pytest.raises(httpx.ReadTimeout):
        send(ADAPTER.build_submit(spec, account, next(nonces)), timeout=0.5)
    found = ADAPTER.parse_lookup(spec, account, send(ADAPTER.build_lookup(spec, account, next(nonces))))
    assert found is not None and found.status in (RefundStatus.PROCESSING, RefundStatus.COMPLETED)
    [entry] = refunds(sandbox)
    assert entry["created"] == 1
    # A careless resend is refused (one refund per OrderId) and never classified as a plain rejection.
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    assert info.value.kind is ErrorKind.AMBIGUOUS
    [entry] = refunds(sandbox)
    assert (entry["created"], entry["create_calls"]) == (1, 2)


def test_second_refund_on_an_order_is_refused(sandbox: SandboxServer, account: Account, nonces: Iterator[int]) -> None:
    spec = sandbox_spec()
    ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    resp = send(ADAPTER.build_submit(spec, account, next(nonces)))
    assert resp.status_code == 400 and json.loads(resp.body) == {"Message": "Order already refunded"}
    [entry] = refunds(sandbox)
    assert (entry["created"], entry["create_calls"]) == (1, 2)


def test_rate_limit_answers_429_with_retry_after(
    sandbox: SandboxServer, account: Account, nonces: Iterator[int]
) -> None:
    sandbox.configure(rate_limit={account.secret("api_key").lower(): 1.0})
    spec = sandbox_spec()
    send(ADAPTER.build_status(spec, account, next(nonces)))  # uses the one token
    resp = send(ADAPTER.build_status(spec, account, next(nonces)))
    assert resp.status_code == 429 and resp.header("retry-after") == "1"
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_status(spec, account, resp)
    assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.retry_after == 1.0


def test_rate_limited_scenario_creates_nothing_then_succeeds(
    sandbox: SandboxServer, account: Account, nonces: Iterator[int]
) -> None:
    spec = sandbox_spec(amount="3.54")
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.retry_after == 1.0
    assert refunds(sandbox) == []
    ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    assert [r["created"] for r in refunds(sandbox)] == [1]


def test_repeated_or_lower_nonce_is_refused_as_nonce(
    sandbox: SandboxServer, account: Account, nonces: Iterator[int]
) -> None:
    spec = sandbox_spec()
    nonce = next(nonces)
    assert send(ADAPTER.build_status(spec, account, nonce)).status_code == 200
    for stale in (nonce, nonce - 1):
        resp = send(ADAPTER.build_status(spec, account, stale))
        assert resp.status_code == 400 and "nonce" in json.loads(resp.body)["Message"].lower()
        with pytest.raises(ProviderError) as info:
            ADAPTER.parse_status(spec, account, resp)
        assert info.value.kind is ErrorKind.NONCE
    # A create with a stale nonce is refused as NONCE too, and creates nothing.
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, nonce)))
    assert info.value.kind is ErrorKind.NONCE
    assert sandbox.ledger()["counters"]["coincorner:nonce_rejections"] == 3
    assert refunds(sandbox) == []
    assert send(ADAPTER.build_status(spec, account, nonce + 1)).status_code == 200


def test_forged_calls_do_not_burn_nonces(sandbox: SandboxServer, account: Account, nonces: Iterator[int]) -> None:
    wrong = dataclasses.replace(account, secrets={**account.secrets, "api_secret": SecretStr("11" * 16)})
    spec, nonce = sandbox_spec(), next(nonces)
    assert send(ADAPTER.build_status(spec, wrong, nonce + 100)).status_code == 401
    assert send(ADAPTER.build_status(spec, account, nonce)).status_code == 200


def test_rejected_scenario(sandbox: SandboxServer, account: Account, nonces: Iterator[int]) -> None:
    spec = sandbox_spec(marker="sbx58")
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    assert info.value.kind is ErrorKind.REJECTED and "Insufficient balance" in info.value.message
    assert refunds(sandbox) == []


def test_server_error_scenario_is_ambiguous_and_lookup_says_absent(
    sandbox: SandboxServer, account: Account, nonces: Iterator[int]
) -> None:
    spec = sandbox_spec(amount="4.55")
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    assert info.value.kind is ErrorKind.AMBIGUOUS
    assert ADAPTER.parse_lookup(spec, account, send(ADAPTER.build_lookup(spec, account, next(nonces)))) is None
    ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    assert [r["created"] for r in refunds(sandbox)] == [1]


def test_undocumented_status_scenario_raises_unmapped(
    sandbox: SandboxServer, account: Account, nonces: Iterator[int]
) -> None:
    spec = sandbox_spec(amount="5.57")
    ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    deadline = time.monotonic() + 5
    with pytest.raises(UnmappedStatusError) as info:
        while time.monotonic() < deadline:
            ADAPTER.parse_status(spec, account, send(ADAPTER.build_status(spec, account, next(nonces))))
            time.sleep(0.05)
    assert info.value.raw_status == "-7"


def test_outage_is_retryable(sandbox: SandboxServer, account: Account, nonces: Iterator[int]) -> None:
    sandbox.configure(outage={"coincorner": True})
    spec = sandbox_spec()
    resp = send(ADAPTER.build_submit(spec, account, next(nonces)))
    assert (resp.status_code, resp.body) == (503, b"")
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec, account, resp)
    assert info.value.kind is ErrorKind.RETRYABLE
    assert refunds(sandbox) == []


def test_drifted_status_is_reported(sandbox: SandboxServer, account: Account, nonces: Iterator[int]) -> None:
    spec = sandbox_spec()
    ADAPTER.parse_submit(spec, account, send(ADAPTER.build_submit(spec, account, next(nonces))))
    order_id = spec.fields["order_id"]
    r = httpx.post(f"{sandbox.base_url}/_sandbox/drift/coincorner/{order_id}", json={"status": "-1"}, timeout=5)
    r.raise_for_status()
    result = ADAPTER.parse_status(spec, account, send(ADAPTER.build_status(spec, account, next(nonces))))
    assert (result.status, result.raw_status) == (RefundStatus.NEEDS_ATTENTION, "-1")
