"""Cobo adapter: pure unit tests, then real HTTP against the sandbox emulator."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from config.accounts import Account
from providers import cobo
from providers.base import (
    ErrorKind,
    ProviderError,
    Reading,
    RefundSpec,
    RefundStatus,
    Request,
    Response,
    StatusResult,
    UnmappedStatusError,
)
from providers.cobo import ADAPTER
from tests.conftest import SandboxServer

EVM = "0x" + "ab" * 20
TRON = "TJRabPrwbZy45sbavfcjinPJC18kjpRTv8"


def new_seed() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()


RESPONSE_SEED = new_seed()
RESPONSE_PUBLIC = cobo.public_key_hex(RESPONSE_SEED)


def make_account(seed: str | None = None, **options: Any) -> Account:
    opts = {"response_public_key": RESPONSE_PUBLIC, "merchant_id": "M1001", **options}
    return Account(
        name="cobo-unit",
        provider="cobo",
        base_url="http://sandbox.invalid/cobo/v2",
        secrets={"api_private_key": SecretStr(seed or new_seed())},
        options=opts,
    )


def spec(amount: str = "10.50", **kw: Any) -> RefundSpec:
    values: dict[str, Any] = {
        "refund_id": "rfd-0001",
        "amount": Decimal(amount),
        "currency": "ETH_USDT",
        "destination": EVM,
        "fields": {"order_id": "O-1"},
    }
    values.update(kw)
    return RefundSpec(**values)


def signed_response(payload: Any, status: int = 200, seed: str = RESPONSE_SEED) -> Response:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    ts = "1735689700123"
    return Response(status, {"biz-timestamp": ts, "biz-resp-signature": cobo.sign_response(seed, raw, ts)}, raw)


def refund(status: str = "Pending", **kw: Any) -> dict[str, Any]:
    return {
        "request_id": "rfd-0001",
        "refund_id": "R1",
        "token_id": "ETH_USDT",
        "amount": "10.50",
        "to_address": EVM,
        "status": status,
        "failed_reason": "",
        **kw,
    }


# --- statuses --------------------------------------------------------------------------------------

DOCUMENTED = {
    "Pending": RefundStatus.PENDING,
    "Processing": RefundStatus.PROCESSING,
    "Completed": RefundStatus.COMPLETED,
    "Failed": RefundStatus.FAILED,
    "PartiallyCompleted": RefundStatus.PARTIALLY_COMPLETED,
    "PendingConfirmation": RefundStatus.ACTION_REQUIRED,
    "AddressPending": RefundStatus.ACTION_REQUIRED,
    "AddressSubmitted": RefundStatus.ACTION_REQUIRED,
}


def test_status_table_covers_exactly_the_documented_statuses() -> None:
    assert {raw: entry.status for raw, entry in cobo.STATUS_TABLE.items()} == DOCUMENTED
    assert {entry.reading for entry in cobo.STATUS_TABLE.values()} == {Reading.REFUND}  # refund records only
    assert ADAPTER.status_table is cobo.STATUS_TABLE


@pytest.mark.parametrize(("raw", "want"), DOCUMENTED.items())
def test_every_documented_status_maps(raw: str, want: RefundStatus) -> None:
    result = ADAPTER.parse_status(spec(), make_account(), signed_response(refund(raw, failed_reason="gas")))
    assert result.status is want
    assert result.raw_status == raw
    assert result.provider_refund_id == "R1"
    assert result.detail["amount"] == "10.50"
    assert result.detail["destination"] == EVM
    assert result.detail["currency"] == "ETH_USDT"
    if want is RefundStatus.ACTION_REQUIRED:
        assert result.reason and "address" in result.reason
    if want is RefundStatus.FAILED:
        assert result.reason == "gas"


@pytest.mark.parametrize("raw", ["Frozen", "pending", "Cancelled", ""])
def test_unknown_status_raises_unmapped(raw: str) -> None:
    with pytest.raises(UnmappedStatusError) as info:
        ADAPTER.parse_status(spec(), make_account(), signed_response(refund(raw)))
    assert info.value.kind is ErrorKind.UNMAPPED
    assert info.value.raw_status == raw


def test_amount_reported_as_json_number_keeps_its_text() -> None:
    raw = json.dumps(refund()).replace('"10.50"', "10.50").encode()
    assert b'"amount": 10.50' in raw
    result = ADAPTER.parse_status(spec(), make_account(), signed_response(raw))
    assert result.detail["amount"] == "10.50"


# --- errors ----------------------------------------------------------------------------------------


def err(code: int, http: int = 400) -> Response:
    body = json.dumps({"error_code": code, "error_message": "m", "error_id": "e"}).encode()
    return Response(http, {"content-type": "application/json"}, body)


@pytest.mark.parametrize(
    ("resp", "kind", "code"),
    [
        (err(12009), ErrorKind.AMBIGUOUS, "12009"),
        (err(30001), ErrorKind.AMBIGUOUS, "30001"),
        (err(2040), ErrorKind.AMBIGUOUS, "2040"),
        (err(2023, 401), ErrorKind.AUTH, "2023"),
        (err(2024, 401), ErrorKind.AUTH, "2024"),
        (err(2010, 429), ErrorKind.RATE_LIMITED, "2010"),
        (err(2026, 400), ErrorKind.RATE_LIMITED, "2026"),
        (err(12007), ErrorKind.REJECTED, "12007"),
        (err(30012), ErrorKind.REJECTED, "30012"),
        (err(2003), ErrorKind.REJECTED, "2003"),
        (err(2006), ErrorKind.REJECTED, "2006"),
        (err(1003), ErrorKind.REJECTED, "1003"),
        (err(1006), ErrorKind.REJECTED, "1006"),
        (err(2025, 403), ErrorKind.REJECTED, "2025"),
        (err(4001, 403), ErrorKind.REJECTED, "4001"),
        (err(2028, 404), ErrorKind.REJECTED, "2028"),
        (err(1000, 500), ErrorKind.AMBIGUOUS, "1000"),
        (err(2000, 500), ErrorKind.AMBIGUOUS, "2000"),
        (Response(503, {}, b""), ErrorKind.RETRYABLE, None),
        (Response(502, {}, b"<html>bad gateway</html>"), ErrorKind.AMBIGUOUS, None),
        (Response(500, {}, b""), ErrorKind.AMBIGUOUS, None),
        (Response(429, {"retry-after": "7"}, b""), ErrorKind.RATE_LIMITED, None),
        (Response(401, {}, b""), ErrorKind.AUTH, None),
        (Response(400, {}, b"oops"), ErrorKind.REJECTED, None),
    ],
)
def test_error_classification(resp: Response, kind: ErrorKind, code: str | None) -> None:
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(), make_account(), resp)
    assert info.value.kind is kind
    assert info.value.code == code
    assert info.value.http_status == resp.status_code


def test_retry_after_is_read_from_the_header() -> None:
    resp = Response(429, {"retry-after": "3"}, err(2010, 429).body)
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(), make_account(), resp)
    assert info.value.kind is ErrorKind.RATE_LIMITED
    assert info.value.retry_after == 3.0


@pytest.mark.parametrize("resp", [err(1000, 500), Response(502, {}, b"")])
def test_reads_turn_ambiguous_into_retryable(resp: Response) -> None:
    for parse in (ADAPTER.parse_status, ADAPTER.parse_lookup):
        with pytest.raises(ProviderError) as info:
            parse(spec(), make_account(), resp)
        assert info.value.kind is ErrorKind.RETRYABLE


def test_secret_never_appears_in_errors() -> None:
    seed = new_seed()
    account = make_account(seed)
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(), account, err(2023, 401))
    assert seed not in str(info.value) and seed not in repr(account)


# --- response signatures ---------------------------------------------------------------------------


def test_unsigned_or_tampered_2xx_is_ambiguous_on_submit_and_retryable_on_reads() -> None:
    good = signed_response(refund())
    unsigned = Response(201, {}, good.body)
    tampered = Response(201, dict(good.headers), good.body.replace(b"10.50", b"99.50"))
    other_key = signed_response(refund(), seed=new_seed())
    for bad in (unsigned, tampered, other_key):
        with pytest.raises(ProviderError) as info:
            ADAPTER.parse_submit(spec(), make_account(), bad)
        assert info.value.kind is ErrorKind.AMBIGUOUS
        for read in (ADAPTER.parse_status, ADAPTER.parse_lookup):
            with pytest.raises(ProviderError) as info:
                read(spec(), make_account(), bad)
            assert info.value.kind is ErrorKind.RETRYABLE
    assert ADAPTER.parse_submit(spec(), make_account(), good).status is RefundStatus.PENDING


def test_submit_answer_about_another_request_is_ambiguous() -> None:
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(), make_account(), signed_response(refund(request_id="someone-else")))
    assert info.value.kind is ErrorKind.AMBIGUOUS


# --- validation ------------------------------------------------------------------------------------


def fields_of(errors: list[Any]) -> dict[str, str]:
    return {e.field: e.rule for e in errors}


def test_valid_spec_has_no_errors() -> None:
    assert ADAPTER.validate(spec(), make_account()) == []
    ok = spec(
        currency="TRON_USDT",
        destination=TRON,
        fields={
            "order_id": "O-1",
            "merchant_id": "M2",
            "refund_type": "Merchant",
            "charge_merchant_fee": True,
            "merchant_fee_amount": "0.10",
            "merchant_fee_token_id": "TRON_USDT",
        },
    )
    assert ADAPTER.validate(ok, make_account()) == []


@pytest.mark.parametrize(
    ("kw", "field", "words"),
    [
        ({"amount": Decimal("10.505")}, "amount", "2 decimal"),
        ({"amount": Decimal("0")}, "amount", "greater than zero"),
        ({"amount": Decimal("-1")}, "amount", "greater than zero"),
        ({"currency": "USDT"}, "currency", "CHAIN_TOKEN"),
        ({"currency": "eth_usdt"}, "currency", "CHAIN_TOKEN"),
        ({"destination": TRON}, "destination", "evm"),
        ({"destination": EVM[:-1]}, "destination", "evm"),
        ({"destination": " " + EVM}, "destination", "whitespace"),
        ({"destination": ""}, "destination", "empty"),
        ({"currency": "TRON_USDT", "destination": EVM}, "destination", "tron"),
        ({"refund_id": ""}, "refund_id", "empty"),
        ({"fields": {"payin_order_id": "O-1"}}, "payin_order_id", "unknown field"),
        ({"fields": {"refund_type": "Customer"}}, "refund_type", "Merchant or Psp"),
        ({"fields": {"order_id": ""}}, "order_id", "non-empty"),
        ({"fields": {"charge_merchant_fee": "yes"}}, "charge_merchant_fee", "true or false"),
        (
            {"fields": {"refund_type": "Psp", "charge_merchant_fee": True}},
            "charge_merchant_fee",
            "Merchant",
        ),
        ({"fields": {"merchant_fee_amount": 0.1}}, "merchant_fee_amount", "float"),
        ({"fields": {"merchant_fee_amount": "abc"}}, "merchant_fee_amount", "decimal"),
        ({"fields": {"merchant_fee_amount": "10.50"}}, "merchant_fee_amount", "less than"),
        ({"fields": {"merchant_fee_token_id": "usdt"}}, "merchant_fee_token_id", "CHAIN_TOKEN"),
    ],
)
def test_validate_names_field_and_rule(kw: dict[str, Any], field: str, words: str) -> None:
    errors = fields_of(ADAPTER.validate(spec(**kw), make_account()))
    assert field in errors, errors
    assert words in errors[field]


def test_refund_type_option_is_validated_too() -> None:
    errors = fields_of(ADAPTER.validate(spec(), make_account(refund_type="Other")))
    assert "refund_type" in errors


def test_adapter_contract_constants() -> None:
    assert ADAPTER.name == "cobo"
    assert ADAPTER.nonce_policy == "timestamp" and ADAPTER.nonce_unit == "ms"
    assert ADAPTER.required_fields == ()
    assert ADAPTER.exclusive_key(spec()) is None
    assert ADAPTER.settle_seconds == 10  # request_id is Cobo's idempotency key


# --- request building ------------------------------------------------------------------------------


def check_signature(req: Request, account: Account, sign_path: str) -> None:
    """The request verifies the way Cobo verifies it: "/v2" path, query and body exactly as sent."""
    query = req.url.partition("?")[2]
    body = req.body.decode() if req.body else ""
    pub = cobo.public_key_hex(account.secret("api_private_key"))
    assert req.headers["Biz-Api-Key"] == pub
    assert cobo.verify_request(
        pub,
        req.method,
        sign_path,
        req.headers["Biz-Api-Nonce"],
        query,
        body,
        req.headers["Biz-Api-Signature"],
    )


def test_build_submit() -> None:
    account = make_account()
    s = spec(
        refund_id="rfd-é",
        fields={"order_id": "O-1", "charge_merchant_fee": True, "merchant_fee_amount": Decimal("0.1")},
    )
    req = ADAPTER.build_submit(s, account, 1735689600000)
    assert req.method == "POST"
    assert req.url == "http://sandbox.invalid/cobo/v2/payments/refunds"
    assert req.headers["Biz-Api-Nonce"] == "1735689600000"
    assert req.headers["Content-Type"] == "application/json"
    assert req.body is not None
    assert b"\\u00e9" in req.body  # the SDK's json.dumps form (ensure_ascii)
    assert json.loads(req.body) == {
        "request_id": "rfd-é",
        "merchant_id": "M1001",
        "payable_amount": "10.50",
        "to_address": EVM,
        "token_id": "ETH_USDT",
        "refund_type": "Merchant",
        "order_id": "O-1",
        "charge_merchant_fee": True,
        "merchant_fee_amount": "0.1",
    }
    check_signature(req, account, "/v2/payments/refunds")


def test_build_submit_field_overrides_option_and_plain_decimal() -> None:
    s = spec(amount="1E+1", fields={"merchant_id": "M9", "refund_type": "Psp"})
    body = json.loads(ADAPTER.build_submit(s, make_account(), 1).body or b"")
    assert body["payable_amount"] == "10"
    assert body["merchant_id"] == "M9" and body["refund_type"] == "Psp"
    no_merchant = Account("c", "cobo", "https://x.invalid/v2", make_account().secrets, {"response_public_key": "00"})
    assert "merchant_id" not in json.loads(ADAPTER.build_submit(spec(), no_merchant, 1).body or b"")


def test_build_status_percent_encodes_the_refund_id_and_signs_the_encoded_path() -> None:
    account = make_account()
    req = ADAPTER.build_status(spec(provider_refund_id="R 1/2"), account, 5)
    assert req.method == "GET" and req.body is None
    assert req.url == "http://sandbox.invalid/cobo/v2/payments/refunds/R%201%2F2"
    check_signature(req, account, "/v2/payments/refunds/R%201%2F2")


def test_build_lookup_signs_the_query_it_sends() -> None:
    account = make_account()
    req = ADAPTER.build_lookup(spec(refund_id="rf 1/é"), account, 5)
    assert req.method == "GET" and req.body is None
    assert req.url == "http://sandbox.invalid/cobo/v2/payments/refunds?request_id=rf+1%2F%C3%A9"
    check_signature(req, account, "/v2/payments/refunds")
    # without a provider id, a status read falls back to the lookup
    assert ADAPTER.build_status(spec(refund_id="rf 1/é"), account, 5).url == req.url


def test_encode_query_drops_empty_values_and_keeps_order() -> None:
    assert cobo.encode_query({"b": "1", "a": "", "c": "x y,z"}) == "b=1&c=x+y%2Cz"
    assert cobo.encode_query({}) == ""


# --- lookup ----------------------------------------------------------------------------------------


def test_parse_lookup_found_absent_and_foreign() -> None:
    account = make_account()
    found = ADAPTER.parse_lookup(spec(), account, signed_response({"data": [refund("Processing")]}))
    assert found is not None and found.status is RefundStatus.PROCESSING and found.provider_refund_id == "R1"
    assert ADAPTER.parse_lookup(spec(), account, signed_response({"data": [], "pagination": {}})) is None
    foreign = {"data": [refund(request_id="other")]}
    assert ADAPTER.parse_lookup(spec(), account, signed_response(foreign)) is None
    with pytest.raises(ProviderError):
        ADAPTER.parse_lookup(spec(), account, signed_response({"nope": 1}))


def test_parse_status_reads_the_list_shape() -> None:
    account = make_account()
    result = ADAPTER.parse_status(spec(), account, signed_response({"data": [refund("Completed")]}))
    assert result.status is RefundStatus.COMPLETED
    # Not listed (yet): on a poll that is a refund not visible yet, never "rejected" (lookup says absent).
    late = ADAPTER.parse_status(spec(), account, signed_response({"data": []}))
    assert (late.status, late.raw_status) == (RefundStatus.PENDING, cobo.NOT_LISTED)
    assert late.reason and "not visible yet" in late.reason
    assert ADAPTER.parse_lookup(spec(), account, signed_response({"data": []})) is None


# --- webhooks --------------------------------------------------------------------------------------


def webhook(status: str = "Completed") -> bytes:
    data = {**refund(status), "data_type": "PaymentRefund"}
    return json.dumps({"event_id": "e1", "type": "payment.refund.status.updated", "data": data}).encode()


def test_verify_webhook() -> None:
    account = make_account()
    body = webhook()
    signed = signed_response(body)
    headers = {
        "Biz-Timestamp": signed.headers["biz-timestamp"],
        "Biz-Resp-Signature": signed.headers["biz-resp-signature"],
    }
    result = ADAPTER.verify_webhook(headers, body, account)
    assert result.status is RefundStatus.COMPLETED and result.detail["amount"] == "10.50"
    for bad_headers, bad_body in (
        (headers, webhook("Failed")),
        ({"Biz-Timestamp": "1", "Biz-Resp-Signature": headers["Biz-Resp-Signature"]}, body),
        ({"Biz-Timestamp": headers["Biz-Timestamp"]}, body),
        ({**headers, "Biz-Resp-Signature": "zz"}, body),
    ):
        with pytest.raises(ProviderError) as info:
            ADAPTER.verify_webhook(bad_headers, bad_body, account)
        assert info.value.kind is ErrorKind.AUTH


# --- real HTTP against the sandbox -----------------------------------------------------------------


def send(req: Request, timeout: float = 5.0) -> Response:
    with httpx.Client(timeout=timeout) as client:
        r = client.request(req.method, req.url, headers=dict(req.headers), content=req.body)
    return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


def now_ms() -> int:
    return int(time.time() * 1000)


class Nonces:
    """TIMESTAMP policy, as the worker allocates: the clock in ms, never repeating within a test."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last = max(self.last + 1, now_ms())
        return self.last


@pytest.fixture
def nonce() -> Nonces:
    return Nonces()


@pytest.fixture
def acct(sandbox: SandboxServer) -> Account:
    return sandbox.accounts["cobo-sandbox"]


def live_spec(amount: str = "10.20", order_id: str = "O-1", refund_id: str | None = None) -> RefundSpec:
    rid = refund_id or f"rfd-{time.time_ns()}"
    return RefundSpec(rid, Decimal(amount), "ETH_USDT", EVM, {"order_id": order_id})


def submit(s: RefundSpec, account: Account, nonce: Callable[[], int]) -> StatusResult:
    return ADAPTER.parse_submit(s, account, send(ADAPTER.build_submit(s, account, nonce())))


def with_id(s: RefundSpec, result: StatusResult) -> RefundSpec:
    return RefundSpec(s.refund_id, s.amount, s.currency, s.destination, s.fields, result.provider_refund_id)


def poll_until(
    s: RefundSpec, account: Account, nonce: Callable[[], int], done: Callable[[StatusResult], bool]
) -> list[str]:
    """Raw statuses seen until `done`; bounded by a deadline."""
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while True:
        result = ADAPTER.parse_status(s, account, send(ADAPTER.build_status(s, account, nonce())))
        if not seen or seen[-1] != result.raw_status:
            seen.append(result.raw_status)
        if done(result):
            return seen
        assert time.monotonic() < deadline, f"still {seen} after 5 s"
        time.sleep(0.05)


def refunds_in(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return [r for r in sandbox.ledger()["refunds"] if r["provider"] == "cobo"]


def raw_error(resp: Response) -> Mapping[str, Any]:
    body = json.loads(resp.body)
    assert set(body) == {"error_code", "error_message", "error_id"}
    return body


def test_wrong_secret_is_refused_as_auth(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    wrong = Account(acct.name, "cobo", acct.base_url, {"api_private_key": SecretStr(new_seed())}, acct.options)
    s = live_spec()
    resp = send(ADAPTER.build_submit(s, wrong, nonce()))
    assert resp.status_code == 401 and raw_error(resp)["error_code"] == 2024
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, wrong, resp)
    assert info.value.kind is ErrorKind.AUTH
    assert refunds_in(sandbox) == []


def test_bad_signature_is_refused(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec()
    good = ADAPTER.build_submit(s, acct, nonce())
    assert good.body is not None
    # the body changed after signing (or the signature is simply wrong): Cobo 2023
    for bad in (
        Request(good.method, good.url, good.headers, good.body.replace(b"10.20", b"99.20")),
        Request(good.method, good.url, {**good.headers, "Biz-Api-Signature": "00" * 64}, good.body),
    ):
        resp = send(bad)
        assert resp.status_code == 401 and raw_error(resp)["error_code"] == 2023
        with pytest.raises(ProviderError) as info:
            ADAPTER.parse_submit(s, acct, resp)
        assert info.value.kind is ErrorKind.AUTH
    assert refunds_in(sandbox) == []
    assert sandbox.ledger()["counters"]["cobo:signature_rejections"] == 2


def test_stale_timestamp_is_refused(sandbox: SandboxServer, acct: Account) -> None:
    s = live_spec()
    stale = now_ms() - 10 * 60 * 1000  # beyond the 5 min window
    resp = send(ADAPTER.build_submit(s, acct, stale))
    assert resp.status_code == 401 and raw_error(resp)["error_code"] == 2023
    assert "stale" in raw_error(resp)["error_message"]
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, acct, resp)
    assert info.value.kind is ErrorKind.AUTH
    future = now_ms() + 10 * 60 * 1000
    assert send(ADAPTER.build_submit(s, acct, future)).status_code == 401
    assert refunds_in(sandbox) == []
    assert submit(s, acct, now_ms).status is RefundStatus.PENDING  # a fresh one goes through


def test_replayed_nonce_is_refused(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec()
    create = ADAPTER.build_submit(s, acct, nonce())
    assert ADAPTER.parse_submit(s, acct, send(create)).status is RefundStatus.PENDING
    replay = send(create)  # byte-identical resend: same nonce, same signature
    assert replay.status_code == 401 and raw_error(replay)["error_code"] == 2023
    assert "replayed" in raw_error(replay)["error_message"]
    lookup = ADAPTER.build_lookup(s, acct, nonce())
    assert ADAPTER.parse_lookup(s, acct, send(lookup)) is not None
    assert send(lookup).status_code == 401
    [entry] = refunds_in(sandbox)
    assert entry["created"] == 1 and entry["create_calls"] == 1  # the replay never reached the ledger
    assert sandbox.ledger()["counters"]["cobo:nonce_rejections"] == 2


def test_create_then_status_reaches_completed(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec()
    first = submit(s, acct, nonce)
    assert first.status is RefundStatus.PENDING and first.provider_refund_id
    assert first.detail == {
        "amount": "10.20",
        "destination": EVM,
        "currency": "ETH_USDT",
        "request_id": s.refund_id,
    }
    seen = poll_until(with_id(s, first), acct, nonce, lambda r: r.status is RefundStatus.COMPLETED)
    assert seen == ["Pending", "Processing", "Completed"]
    [entry] = refunds_in(sandbox)
    assert entry["created"] == 1 and entry["refund_key"] == s.refund_id


@pytest.mark.parametrize(
    ("amount", "final", "raw"),
    [
        ("12.51", RefundStatus.FAILED, "Failed"),
        ("12.52", RefundStatus.PARTIALLY_COMPLETED, "PartiallyCompleted"),
    ],
)
def test_failing_scenarios(
    sandbox: SandboxServer, acct: Account, nonce: Nonces, amount: str, final: RefundStatus, raw: str
) -> None:
    s = live_spec(amount)
    first = submit(s, acct, nonce)
    seen = poll_until(with_id(s, first), acct, nonce, lambda r: r.status is final)
    assert seen[-1] == raw
    result = ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(with_id(s, first), acct, nonce())))
    assert result.reason  # failed_reason carried through


def test_undocumented_status_is_never_silently_mapped(acct: Account, nonce: Nonces) -> None:
    s = live_spec("12.57")
    s = with_id(s, submit(s, acct, nonce))
    deadline = time.monotonic() + 5
    while True:
        try:
            ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, nonce())))
        except UnmappedStatusError as exc:
            assert exc.raw_status == "Frozen"
            return
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_action_required_until_funded(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec("12.59")
    first = submit(s, acct, nonce)
    assert first.status is RefundStatus.ACTION_REQUIRED and first.raw_status == "PendingConfirmation"
    assert first.reason and "address" in first.reason
    time.sleep(0.7)  # well past two clock steps: still waiting for a person
    s = with_id(s, first)
    assert ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, nonce()))).status is (
        RefundStatus.ACTION_REQUIRED
    )
    httpx.post(f"{sandbox.base_url}/_sandbox/fund/cobo/{s.refund_id}", timeout=5).raise_for_status()
    seen = poll_until(s, acct, nonce, lambda r: r.status is RefundStatus.COMPLETED)
    assert seen == ["Pending", "Processing", "Completed"]


def test_action_required_answered_with_an_address(acct: Account, nonce: Nonces) -> None:
    s = live_spec("12.59")
    s = with_id(s, submit(s, acct, nonce))
    other = "0x" + "cd" * 20
    resp = send(ADAPTER.build_update_address(s, acct, nonce(), other))
    result = ADAPTER.parse_status(s, acct, resp)
    assert result.status is RefundStatus.PENDING and result.detail["destination"] == other
    again = send(ADAPTER.build_update_address(s, acct, nonce(), other))
    assert again.status_code == 400  # no longer waiting for an address
    poll_until(s, acct, nonce, lambda r: r.status is RefundStatus.COMPLETED)


def test_timeout_after_commit_then_lookup_finds_it(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec("12.56")
    with pytest.raises(httpx.ReadTimeout):
        send(ADAPTER.build_submit(s, acct, nonce()), timeout=0.5)  # the sandbox hangs 3 s
    found = ADAPTER.parse_lookup(s, acct, send(ADAPTER.build_lookup(s, acct, nonce())))
    assert found is not None and found.provider_refund_id
    assert found.detail["amount"] == "12.56"
    # a resend anyway is refused as a duplicate: ambiguous, so the worker looks it up again
    with pytest.raises(ProviderError) as info:
        submit(s, acct, nonce)
    assert info.value.kind is ErrorKind.AMBIGUOUS and info.value.code == "12009"
    [entry] = refunds_in(sandbox)
    assert entry["created"] == 1 and entry["create_calls"] == 2


def test_rate_limited_scenario(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec("12.54")
    resp = send(ADAPTER.build_submit(s, acct, nonce()))
    assert resp.status_code == 429 and raw_error(resp)["error_code"] == 2010
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, acct, resp)
    assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.retry_after == 1.0
    assert refunds_in(sandbox) == []
    assert submit(s, acct, nonce).status is RefundStatus.PENDING  # the fault fires once


def test_rate_limit_per_key(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    key = cobo.public_key_hex(acct.secret("api_private_key"))
    sandbox.configure(rate_limit={key: 2.0})
    s = live_spec()
    kinds = []
    for _ in range(4):
        try:
            ADAPTER.parse_lookup(s, acct, send(ADAPTER.build_lookup(s, acct, nonce())))
            kinds.append("ok")
        except ProviderError as exc:
            kinds.append(exc.kind)
            assert exc.retry_after is not None and exc.retry_after >= 1
    assert kinds[:2] == ["ok", "ok"] and ErrorKind.RATE_LIMITED in kinds[2:]


def test_server_error_creates_nothing_and_resend_is_safe(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec("12.55")
    with pytest.raises(ProviderError) as info:
        submit(s, acct, nonce)
    assert info.value.kind is ErrorKind.AMBIGUOUS and info.value.code == "1000"
    assert ADAPTER.parse_lookup(s, acct, send(ADAPTER.build_lookup(s, acct, nonce()))) is None
    assert submit(s, acct, nonce).status is RefundStatus.PENDING
    [entry] = refunds_in(sandbox)
    assert entry["created"] == 1


def test_rejected_scenario(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec("12.58")
    with pytest.raises(ProviderError) as info:
        submit(s, acct, nonce)
    assert info.value.kind is ErrorKind.REJECTED and info.value.code == "12007"
    assert refunds_in(sandbox) == []


def test_outage_is_retryable(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec()
    sandbox.configure(outage={"cobo": True})
    resp = send(ADAPTER.build_submit(s, acct, nonce()))
    assert resp.status_code == 503 and resp.body == b""
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, acct, resp)
    assert info.value.kind is ErrorKind.RETRYABLE
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_lookup(s, acct, send(ADAPTER.build_lookup(s, acct, nonce())))
    assert info.value.kind is ErrorKind.RETRYABLE
    assert refunds_in(sandbox) == []


def test_drift_shows_in_status_reads(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec()
    s = with_id(s, submit(s, acct, nonce))
    change = {"amount": "99.99", "destination": "0x" + "ee" * 20}
    httpx.post(f"{sandbox.base_url}/_sandbox/drift/cobo/{s.refund_id}", json=change, timeout=5).raise_for_status()
    result = ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, nonce())))
    assert result.detail["amount"] == "99.99" and result.detail["destination"] == change["destination"]
    httpx.post(
        f"{sandbox.base_url}/_sandbox/drift/cobo/{s.refund_id}", json={"status": "Mystery"}, timeout=5
    ).raise_for_status()
    with pytest.raises(UnmappedStatusError):
        ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, nonce())))


def test_sandbox_answers_are_signed_with_its_own_key(sandbox: SandboxServer, acct: Account, nonce: Nonces) -> None:
    s = live_spec()
    resp = send(ADAPTER.build_submit(s, acct, nonce()))
    assert resp.status_code == 201 and resp.header("biz-resp-signature")
    # an account expecting another key refuses the (real, committed) answer: ambiguous, never trusted
    distrust = Account(
        acct.name,
        "cobo",
        acct.base_url,
        acct.secrets,
        {**acct.options, "response_public_key": RESPONSE_PUBLIC},
    )
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, distrust, resp)
    assert info.value.kind is ErrorKind.AMBIGUOUS
    assert ADAPTER.parse_submit(s, acct, resp).status is RefundStatus.PENDING


def test_unknown_refund_id_is_not_found(acct: Account, nonce: Nonces) -> None:
    s = RefundSpec("nope", Decimal("1"), "ETH_USDT", EVM, {}, "R-missing")
    resp = send(ADAPTER.build_status(s, acct, nonce()))
    assert resp.status_code == 404 and raw_error(resp)["error_code"] == 2028
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_status(s, acct, resp)
    assert info.value.kind is ErrorKind.REJECTED


def test_cancel_while_pending(acct: Account, nonce: Nonces) -> None:
    s = live_spec("12.59")
    s = with_id(s, submit(s, acct, nonce))
    path = f"/payments/refunds/{s.provider_refund_id}/cancel"
    req = cobo.signed_request(acct.secret("api_private_key"), "PUT", acct.base_url + path, "/v2" + path, nonce())
    result = ADAPTER.parse_status(s, acct, send(req))
    assert result.status is RefundStatus.FAILED and result.reason == "Cancelled by merchant"
