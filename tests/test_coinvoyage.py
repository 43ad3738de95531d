"""CoinVoyage adapter: pure unit tests, then real HTTP against the sandbox emulator."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from config.accounts import Account, AccountConfigError
from providers import coinvoyage as cv
from providers.base import (
    ErrorKind,
    LookupNextPage,
    NoncePolicy,
    NonceUnit,
    ProviderError,
    Reading,
    RefundSpec,
    RefundStatus,
    Request,
    Response,
    UnmappedStatusError,
)
from tests.conftest import SandboxServer
from worker.engine import integrity_problems, spec_of
from worker.models import Refund

ADAPTER = cv.ADAPTER
SOL_ADDRESS = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"
NOW = 1_735_689_600


def account(**options: Any) -> Account:
    return Account(
        name="cv-test",
        provider="coinvoyage",
        base_url="http://provider.invalid/v2",
        secrets={
            "api_key": SecretStr("pk_unit"),
            "api_secret": SecretStr("sk_unit"),
            "webhook_secret": SecretStr("whsec_unit"),
        },
        options=options,
    )


def spec(amount: str = "10.00", *, refund_id: str | None = None, **fields: Any) -> RefundSpec:
    base: dict[str, Any] = {"payorder_id": "po_deposit_1", "chain_id": 30000000000001}
    base.update(fields)
    base = {k: v for k, v in base.items() if v is not ...}
    return RefundSpec(
        refund_id=refund_id or f"rf_{uuid.uuid4().hex[:12]}",
        amount=Decimal(amount),
        currency="USD",
        destination=SOL_ADDRESS,
        fields=base,
    )


def resp(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else (b"" if body is None else cv.json_dumps(body).encode())
    return Response(status, headers or {}, raw)


def pay_order(status: str = "PENDING", **extra: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "id": "po_refund_1",
        "mode": "REFUND",
        "status": status,
        "hosted_url": "http://pay.invalid/pay/po_refund_1",
        # The real shape: token units (here 0.066666666 SOL, 9 decimals) worth the requested 10.00 USD.
        "fulfillment": {
            "amount": {
                "raw_amount": "66666666",
                "ui_amount": Decimal("0.066666666"),
                "ui_amount_display": "0.066666666",
                "value_usd": Decimal("10.00"),
            },
            "asset": {"id": "sol", "name": "Solana", "ticker": "SOL", "decimals": 9},
            "receiving_address": SOL_ADDRESS,
        },
        "metadata": {},
    }
    order.update(extra)
    return order


# --- contract -----------------------------------------------------------------------------------


def test_adapter_declares_its_nonce_rules() -> None:
    assert ADAPTER.name == "coinvoyage"
    assert ADAPTER.nonce_policy == NoncePolicy.TIMESTAMP
    assert ADAPTER.nonce_unit == NonceUnit.S
    assert ADAPTER.required_fields == ("payorder_id", "chain_id")
    assert ADAPTER.exclusive_key(spec()) is None


# --- statuses -----------------------------------------------------------------------------------

DOCUMENTED = {
    "PENDING": RefundStatus.PENDING,
    "AWAITING_PAYMENT": RefundStatus.ACTION_REQUIRED,
    "AWAITING_CONFIRMATION": RefundStatus.PROCESSING,
    "OPTIMISTIC_CONFIRMED": RefundStatus.PROCESSING,
    "EXECUTING_ORDER": RefundStatus.PROCESSING,
    "PARTIAL_PAYMENT": RefundStatus.PROCESSING,
    "COMPLETED": RefundStatus.COMPLETED,
    "FAILED": RefundStatus.FAILED,
    "EXPIRED": RefundStatus.FAILED,
    "REFUNDED": RefundStatus.FAILED,
}


def test_status_table_covers_exactly_the_documented_statuses() -> None:
    assert {raw: entry.status for raw, entry in cv.STATUS_TABLE.items()} == DOCUMENTED
    assert {entry.reading for entry in cv.STATUS_TABLE.values()} == {Reading.REFUND}  # refund records only
    assert ADAPTER.status_table is cv.STATUS_TABLE
    assert ADAPTER.settle_seconds == 300  # no idempotency key: a wrong "absent" pays twice


@pytest.mark.parametrize(("raw", "expected"), DOCUMENTED.items())
def test_every_documented_status_maps(raw: str, expected: RefundStatus) -> None:
    s = spec()
    result = ADAPTER.parse_status(
        dataclasses.replace(s, provider_refund_id="po_refund_1"), account(), resp(200, pay_order(raw))
    )
    assert result.status == expected
    assert result.raw_status == raw
    assert result.provider_refund_id == "po_refund_1"
    assert result.detail["amount"] == "10.00"
    assert result.detail["destination"] == SOL_ADDRESS
    assert result.detail["currency"] == "USD"
    if expected == RefundStatus.FAILED:
        assert raw in (result.reason or "")


def test_awaiting_payment_asks_for_funding_with_the_hosted_url() -> None:
    result = ADAPTER.parse_submit(spec(), account(), resp(200, pay_order("AWAITING_PAYMENT")))
    assert result.status == RefundStatus.ACTION_REQUIRED
    assert result.detail["action_url"] == "http://pay.invalid/pay/po_refund_1"
    assert "fund" in (result.reason or "")


@pytest.mark.parametrize("raw", ["ON_HOLD", "completed", "CANCELLED", ""])
def test_unknown_status_raises_unmapped(raw: str) -> None:
    with pytest.raises(UnmappedStatusError) as info:
        ADAPTER.parse_submit(spec(), account(), resp(200, pay_order(raw)))
    assert info.value.kind == ErrorKind.UNMAPPED
    assert info.value.raw_status == raw


# --- errors -------------------------------------------------------------------------------------


def _err(status: int, message: str = "boom") -> dict[str, Any]:
    return {"error": {"path": "/v2/x", "statusCode": status, "status": "X", "message": message}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "submit", "kind", "retry_after"),
    [
        (401, _err(401, "Invalid signature"), {}, True, ErrorKind.AUTH, None),
        (403, _err(403), {}, True, ErrorKind.AUTH, None),
        (429, _err(429), {"retry-after": "7"}, True, ErrorKind.RATE_LIMITED, 7.0),
        (429, _err(429), {"retry-after": "Wed, 21 Oct 2015 07:28 GMT"}, True, ErrorKind.RATE_LIMITED, None),
        (429, None, {}, False, ErrorKind.RATE_LIMITED, None),
        (503, None, {}, True, ErrorKind.RETRYABLE, None),
        (503, _err(503), {}, True, ErrorKind.AMBIGUOUS, None),
        (500, _err(500), {}, True, ErrorKind.AMBIGUOUS, None),
        (502, b"<html>bad gateway</html>", {}, True, ErrorKind.AMBIGUOUS, None),
        (500, _err(500), {}, False, ErrorKind.RETRYABLE, None),
        (400, _err(400, "Insufficient balance"), {}, True, ErrorKind.REJECTED, None),
        (404, _err(404, "PayOrder not found"), {}, True, ErrorKind.REJECTED, None),
        # A second refund of the pay-order: maybe an earlier send of ours -> AMBIGUOUS (the worker looks it up).
        (422, {"error": "Unprocessable Entity", "message": "PayOrder not completed or already refunded",
               "code": 422}, {}, True, ErrorKind.AMBIGUOUS, None),
        (422, _err(422, "PayOrder not completed or already refunded"), {}, True, ErrorKind.AMBIGUOUS, None),
        (422, _err(422), {}, False, ErrorKind.REJECTED, None),
        (302, None, {}, True, ErrorKind.AMBIGUOUS, None),
    ],
)  # fmt: skip
def test_error_table(
    status: int, body: Any, headers: dict[str, str], submit: bool, kind: ErrorKind, retry_after: float | None
) -> None:
    parse = ADAPTER.parse_submit if submit else ADAPTER.parse_status
    with pytest.raises(ProviderError) as info:
        parse(dataclasses.replace(spec(), provider_refund_id="po_1"), account(), resp(status, body, headers))
    assert info.value.kind == kind
    assert info.value.retry_after == retry_after
    assert info.value.http_status == status


def test_error_message_is_the_providers_and_never_a_secret() -> None:
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(), account(), resp(400, _err(400, "Insufficient balance")))
    assert "Insufficient balance" in str(info.value)
    assert "sk_unit" not in str(info.value)
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(), account(), resp(422, {"error": "Unprocessable", "message": "already refunded"}))
    assert "already refunded" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        {"id": "po_1"},
        pay_order(mode="DEPOSIT"),
        pay_order(metadata={"refundq_refund_id": "x"}),
    ],
)
def test_unverifiable_2xx_on_submit_is_ambiguous(body: Any) -> None:
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(refund_id="mine"), account(), resp(200, body))
    assert info.value.kind == ErrorKind.AMBIGUOUS


# --- validation ---------------------------------------------------------------------------------


def _errors(s: RefundSpec, acct: Account | None = None) -> set[tuple[str, str]]:
    return {(e.field, e.rule) for e in ADAPTER.validate(s, acct or account())}


def test_valid_specs_pass() -> None:
    assert _errors(spec()) == set()
    assert _errors(spec("0.000000000000000001", amount_kind="token", asset_address=None)) == set()
    token = spec("1.5", amount_kind="token", asset_address="EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v")
    assert _errors(token) == set()


@pytest.mark.parametrize(
    ("s", "field", "rule_part"),
    [
        (spec(payorder_id=...), "payorder_id", "required"),
        (spec(chain_id=...), "chain_id", "required"),
        (spec(chain_id="1"), "chain_id", "positive integer"),
        (spec(chain_id=True), "chain_id", "positive integer"),
        (spec(payorder_id="po 1"), "payorder_id", "whitespace"),
        (spec("10.001"), "amount", "at most 2 decimal places"),
        (spec("0.0000000000000000001", amount_kind="token"), "amount", "at most 18 decimal places"),
        (spec("0"), "amount", "greater than zero"),
        (spec(amount_kind="crypto"), "amount_kind", "'fiat' or 'token'"),
        (spec(asset_address="0x 12"), "asset_address", "whitespace"),
        (spec(memo="x"), "memo", "unknown field"),
        (dataclasses.replace(spec(), destination="short"), "destination", "20 to 128"),
        (dataclasses.replace(spec(), destination=SOL_ADDRESS + " "), "destination", "whitespace"),
        (dataclasses.replace(spec(), currency="usd"), "currency", "3-letter"),
    ],
)
def test_validate_names_field_and_rule(s: RefundSpec, field: str, rule_part: str) -> None:
    errors = ADAPTER.validate(s, account())
    assert any(e.field == field and rule_part in e.rule for e in errors), errors


def test_validate_checks_the_account_options() -> None:
    fields = {f for f, _ in _errors(spec(), account(signature_scheme="hmac_sha1", refund_path="/refund"))}
    assert fields == {"account.signature_scheme", "account.refund_path"}


# --- requests -----------------------------------------------------------------------------------


def _verify(req: Request, acct: Account, path: str, ts: int) -> None:
    scheme = acct.option("signature_scheme", cv.SCHEME_HMAC)
    expected = cv.sign_request(scheme, "pk_unit", "sk_unit", ts, req.method, path)
    assert req.headers["Authorization"] == expected.header


def test_build_submit_fiat() -> None:
    s = spec("12.50", refund_id="rf_1")
    req = ADAPTER.build_submit(s, account(), NOW)
    assert req.method == "POST"
    assert req.url == "http://provider.invalid/v2/pay-orders/po_deposit_1/refund"
    assert req.body == (
        b'{"intent":{"amount":{"fiat":{"amount":12.50,"unit":"USD"}},'
        b'"asset":{"address":null,"chain_id":30000000000001},'
        b'"receiving_address":"9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"},'
        b'"metadata":{"refundq_refund_id":"rf_1"}}'
    )
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-API-KEY"] == "pk_unit"
    _verify(req, account(), "/pay-orders/po_deposit_1/refund", NOW)
    assert req.headers["Authorization"].endswith(f",timestamp={NOW}")


def test_build_submit_token_keeps_every_digit() -> None:
    s = spec("123456789.000000000000000001", amount_kind="token", asset_address="0x" + "ab" * 20)
    body = json.loads(ADAPTER.build_submit(s, account(), NOW).body or b"", parse_float=Decimal)
    assert body["intent"]["amount"] == {"token_amount": Decimal("123456789.000000000000000001")}
    assert body["intent"]["asset"]["address"] == "0x" + "ab" * 20


def test_build_submit_encodes_the_id_and_signs_the_encoded_path() -> None:
    acct = account(refund_path="/v9/orders/{payorder_id}/refunds")
    req = ADAPTER.build_submit(spec(payorder_id="po/ü?x"), acct, NOW)
    assert req.url == "http://provider.invalid/v2/v9/orders/po%2F%C3%BC%3Fx/refunds"
    _verify(req, acct, "/v9/orders/po%2F%C3%BC%3Fx/refunds", NOW)


def test_legacy_scheme_and_unknown_scheme() -> None:
    acct = account(signature_scheme=cv.SCHEME_LEGACY)
    req = ADAPTER.build_submit(spec(), acct, NOW)
    _verify(req, acct, "", NOW)
    assert len(req.headers["Authorization"].split("signature=")[1].split(",")[0]) == 128
    with pytest.raises(AccountConfigError):
        ADAPTER.build_submit(spec(), account(signature_scheme="hmac_sha1"), NOW)


def test_nonce_must_be_seconds() -> None:
    with pytest.raises(ValueError, match="seconds"):
        ADAPTER.build_submit(spec(), account(), NOW * 1000)


def test_build_status_and_lookup() -> None:
    s = dataclasses.replace(spec(), provider_refund_id="po_r 1")
    req = ADAPTER.build_status(s, account(), NOW)
    assert (req.method, req.url, req.body) == ("GET", "http://provider.invalid/v2/pay-orders/po_r%201", None)
    # A single read is authenticated by X-API-KEY alone (spec §1); the list is signed too.
    assert req.headers["X-API-KEY"] == "pk_unit" and "Authorization" not in req.headers
    req = ADAPTER.build_lookup(s, account(), NOW)
    assert (req.method, req.url, req.body) == ("GET", "http://provider.invalid/v2/pay-orders?limit=100", None)
    _verify(req, account(), "/pay-orders?limit=100", NOW)
    assert req.headers["X-API-KEY"] == "pk_unit"
    with pytest.raises(ValueError):
        ADAPTER.build_status(spec(), account(), NOW)


# --- lookup -------------------------------------------------------------------------------------


def test_parse_lookup_found_absent_and_duplicates() -> None:
    mine = pay_order("EXECUTING_ORDER", metadata={"refundq_refund_id": "rf_me"})
    other = pay_order("COMPLETED", id="po_other", metadata={"refundq_refund_id": "rf_other"})
    deposit = pay_order("COMPLETED", id="po_dep", mode="DEPOSIT", metadata={"refundq_refund_id": "rf_me"})
    s = spec(refund_id="rf_me")
    found = ADAPTER.parse_lookup(s, account(), resp(200, {"data": [other, deposit, mine], "pagination": {}}))
    assert found is not None
    assert (found.status, found.provider_refund_id) == (RefundStatus.PROCESSING, "po_refund_1")
    assert ADAPTER.parse_lookup(s, account(), resp(200, {"data": [other, deposit]})) is None
    assert ADAPTER.parse_lookup(s, account(), resp(200, {"data": []})) is None
    twice = dict(mine, id="po_refund_2")
    dup = ADAPTER.parse_lookup(s, account(), resp(200, {"data": [mine, twice]}))
    assert dup is not None and (dup.provider_refund_id, dup.others) == ("po_refund_1", ("po_refund_2",))
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_lookup(s, account(), resp(200, [mine]))
    assert info.value.kind == ErrorKind.RETRYABLE
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_lookup(s, account(), resp(401, _err(401)))
    assert info.value.kind == ErrorKind.AUTH


# --- webhooks -----------------------------------------------------------------------------------


def _webhook(body: bytes, secret: str = "whsec_unit", name: str = "CoinVoyage-Webhook-Signature") -> dict[str, str]:
    return {name: cv.webhook_signature(secret, body)}


def test_webhook_verifies_and_maps_the_status() -> None:
    body = '{"type":"payorder_error","payorder_id":"po_ü","status":"FAILED","message":"Ошибка"}'.encode()
    result = ADAPTER.verify_webhook(_webhook(body, name="coinvoyage-webhook-signature"), body, account())
    assert (result.status, result.raw_status, result.provider_refund_id) == (
        RefundStatus.FAILED,
        "FAILED",
        "po_ü",
    )
    assert "Ошибка" in (result.reason or "")
    done = b'{"type":"payorder_completed","payorder_id":"po_1"}'
    assert ADAPTER.verify_webhook(_webhook(done), done, account()).status == RefundStatus.COMPLETED
    started = b'{"type":"payorder_started","payorder_id":"po_1"}'
    assert ADAPTER.verify_webhook(_webhook(started), started, account()).status == RefundStatus.UNKNOWN


def test_webhook_refuses_bad_signatures() -> None:
    body = b'{"type":"payorder_completed","payorder_id":"po_1","status":"COMPLETED"}'
    for headers, raw in [
        (_webhook(body), body.replace(b"COMPLETED", b"FAILED")),  # tampered
        (_webhook(body), body + b" "),  # whitespace only
        (_webhook(body, secret="other"), body),
        ({}, body),
    ]:
        with pytest.raises(ProviderError) as info:
            ADAPTER.verify_webhook(headers, raw, account())
        assert info.value.kind == ErrorKind.AUTH
    no_secret = dataclasses.replace(account(), secrets={"api_key": SecretStr("k"), "api_secret": SecretStr("s")})
    with pytest.raises(ProviderError) as info:
        ADAPTER.verify_webhook(_webhook(body), body, no_secret)
    assert info.value.kind == ErrorKind.AUTH


def test_webhook_with_undocumented_status_is_unmapped() -> None:
    body = b'{"type":"payorder_error","payorder_id":"po_1","status":"ON_HOLD"}'
    with pytest.raises(UnmappedStatusError):
        ADAPTER.verify_webhook(_webhook(body), body, account())


# --- over real HTTP against the sandbox ---------------------------------------------------------


def send(req: Request, timeout: float = 5.0) -> Response:
    r = httpx.request(req.method, req.url, headers=dict(req.headers), content=req.body, timeout=timeout)
    return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


def now() -> int:
    return int(time.time())


def cv_account(sandbox: SandboxServer) -> Account:
    return sandbox.accounts["coinvoyage-sandbox"]


def ledger_entry(sandbox: SandboxServer, refund_id: str) -> dict[str, Any]:
    entries = [e for e in sandbox.ledger()["refunds"] if e["provider"] == "coinvoyage" and e["refund_key"] == refund_id]
    assert len(entries) == 1, entries
    return entries[0]


def poll_until(sandbox: SandboxServer, s: RefundSpec, final: set[RefundStatus], seconds: float = 8) -> list[str]:
    """Status reads until one of `final`; returns the raw statuses seen. Bounded by a deadline."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = ADAPTER.parse_status(s, cv_account(sandbox), send(ADAPTER.build_status(s, cv_account(sandbox), now())))
        if not seen or seen[-1] != result.raw_status:
            seen.append(result.raw_status)
        if result.status in final:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"no final status within {seconds}s; saw {seen}")


def create(sandbox: SandboxServer, s: RefundSpec) -> RefundSpec:
    result = ADAPTER.parse_submit(s, cv_account(sandbox), send(ADAPTER.build_submit(s, cv_account(sandbox), now())))
    assert result.provider_refund_id
    return dataclasses.replace(s, provider_refund_id=result.provider_refund_id)


def test_sandbox_refuses_a_wrong_secret_in_coinvoyage_shape(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    wrong = dataclasses.replace(acct, secrets={**acct.secrets, "api_secret": SecretStr("sk_wrong")})
    s = spec()
    r = send(ADAPTER.build_submit(s, wrong, now()))
    assert r.status_code == 401
    error = json.loads(r.body)["error"]
    assert error["statusCode"] == 401 and error["message"] == "Invalid signature" and "path" in error
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, wrong, r)
    assert info.value.kind == ErrorKind.AUTH
    assert sandbox.ledger()["refunds"] == []


def test_sandbox_refuses_stale_timestamps_and_a_changed_query(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    r = send(ADAPTER.build_submit(spec(), acct, now() - 3600))
    assert r.status_code == 401 and "expired" in json.loads(r.body)["error"]["message"]
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(), acct, r)
    assert info.value.kind == ErrorKind.AUTH
    req = ADAPTER.build_lookup(spec(), acct, now())
    r = send(dataclasses.replace(req, url=req.url.replace("limit=100", "limit=50")))  # the query is signed
    assert r.status_code == 401


def test_create_then_polls_reach_completed_on_the_clock(sandbox: SandboxServer) -> None:
    s = create(sandbox, spec("10.00"))
    seen = poll_until(sandbox, s, {RefundStatus.COMPLETED})
    assert seen[0] == "PENDING" and seen[-1] == "COMPLETED" and "EXECUTING_ORDER" in seen
    entry = ledger_entry(sandbox, s.refund_id)
    assert (entry["created"], entry["create_calls"], entry["amount"]) == (1, 1, "10.00")
    final = ADAPTER.parse_status(s, cv_account(sandbox), send(ADAPTER.build_status(s, cv_account(sandbox), now())))
    assert final.detail["amount"] == "10.00" and final.detail["destination"] == SOL_ADDRESS
    assert final.detail["currency"] == "USD"


def test_action_required_waits_for_funding(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = spec("10.59")
    first = ADAPTER.parse_submit(s, acct, send(ADAPTER.build_submit(s, acct, now())))
    assert first.status == RefundStatus.ACTION_REQUIRED
    assert first.detail["action_url"].startswith(sandbox.base_url)
    s = dataclasses.replace(s, provider_refund_id=first.provider_refund_id)
    time.sleep(0.7)  # two clock steps: without funding it must still wait
    again = ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, now())))
    assert again.raw_status == "AWAITING_PAYMENT"
    httpx.post(f"{sandbox.base_url}/_sandbox/fund/coinvoyage/{first.provider_refund_id}", timeout=5).raise_for_status()
    assert poll_until(sandbox, s, {RefundStatus.COMPLETED})[-1] == "COMPLETED"


@pytest.mark.parametrize(
    ("amount", "final_raw", "via"),
    [("10.51", "FAILED", "EXECUTING_ORDER"), ("10.52", "EXPIRED", "PARTIAL_PAYMENT"), ("10.53", None, None)],
)
def test_failure_scenarios(sandbox: SandboxServer, amount: str, final_raw: str | None, via: str | None) -> None:
    if final_raw is None:  # SLOW: still not final after what would finish a normal refund
        s = create(sandbox, spec(amount))
        time.sleep(0.8)
        r = ADAPTER.parse_status(s, cv_account(sandbox), send(ADAPTER.build_status(s, cv_account(sandbox), now())))
        assert r.raw_status == "PENDING"
        return
    s = create(sandbox, spec(amount))
    seen = poll_until(sandbox, s, {RefundStatus.FAILED})
    assert seen[-1] == final_raw and via in seen


def test_undocumented_status_is_unmapped(sandbox: SandboxServer) -> None:
    s = create(sandbox, spec("10.57"))
    with pytest.raises(UnmappedStatusError) as info:
        poll_until(sandbox, s, {RefundStatus.COMPLETED})
    assert info.value.raw_status == "ON_HOLD"


def test_rejected_refund(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = spec("10.58")
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, acct, send(ADAPTER.build_submit(s, acct, now())))
    assert info.value.kind == ErrorKind.REJECTED and "Insufficient balance" in info.value.message
    assert sandbox.ledger()["refunds"] == []


def test_rate_limited_first_create_then_succeeds_once(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = spec("10.54")
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, acct, send(ADAPTER.build_submit(s, acct, now())))
    assert (info.value.kind, info.value.retry_after) == (ErrorKind.RATE_LIMITED, 1.0)
    assert sandbox.ledger()["refunds"] == []
    create(sandbox, s)
    assert ledger_entry(sandbox, s.refund_id)["created"] == 1


def test_key_rate_limit_answers_429_with_retry_after(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    sandbox.configure(rate_limit={acct.secret("api_key"): 1.0})
    s = dataclasses.replace(spec(), provider_refund_id="po_any")
    send(ADAPTER.build_status(s, acct, now()))
    r = send(ADAPTER.build_status(s, acct, now()))
    assert r.status_code == 429 and r.header("retry-after") == "1"
    assert json.loads(r.body)["error"]["statusCode"] == 429
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_status(s, acct, r)
    assert (info.value.kind, info.value.retry_after) == (ErrorKind.RATE_LIMITED, 1.0)


def test_server_error_is_ambiguous_and_the_lookup_clears_the_resend(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = spec("10.55")
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, acct, send(ADAPTER.build_submit(s, acct, now())))
    assert info.value.kind == ErrorKind.AMBIGUOUS
    assert ADAPTER.parse_lookup(s, acct, send(ADAPTER.build_lookup(s, acct, now()))) is None
    create(sandbox, s)
    assert ledger_entry(sandbox, s.refund_id)["created"] == 1


def test_timeout_after_commit_is_found_by_the_lookup(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = spec("10.56")
    with pytest.raises(httpx.ReadTimeout):
        send(ADAPTER.build_submit(s, acct, now()), timeout=0.5)  # the sandbox hangs 3 s after creating
    found = ADAPTER.parse_lookup(s, acct, send(ADAPTER.build_lookup(s, acct, now())))
    assert found is not None and found.provider_refund_id
    assert found.status in (RefundStatus.PENDING, RefundStatus.PROCESSING, RefundStatus.COMPLETED)
    entry = ledger_entry(sandbox, s.refund_id)
    assert (entry["created"], entry["provider_refund_id"]) == (1, found.provider_refund_id)


def test_a_second_refund_of_a_pay_order_is_422_ambiguous_and_the_lookup_finds_ours(sandbox: SandboxServer) -> None:
    """The API refuses a second refund of a pay-order with 422 (openapi 2.2.0). It may be our own earlier
    send: the adapter says AMBIGUOUS, and the lookup by metadata finds the order it created."""
    acct = cv_account(sandbox)
    s = spec("10.00", payorder_id=f"po_once_{uuid.uuid4().hex[:8]}")
    first = create(sandbox, s)
    r = send(ADAPTER.build_submit(s, acct, now()))
    assert r.status_code == 422
    assert json.loads(r.body)["error"]["message"] == "PayOrder not completed or already refunded"
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, acct, r)
    assert info.value.kind == ErrorKind.AMBIGUOUS and info.value.http_status == 422
    entry = ledger_entry(sandbox, s.refund_id)
    assert entry["created"] == 1  # refused, not a second order
    found = ADAPTER.parse_lookup(s, acct, send(ADAPTER.build_lookup(s, acct, now())))
    assert found is not None and found.provider_refund_id == first.provider_refund_id and not found.others
    # Someone else's refund of the same pay-order: also 422, and our lookup proves ours absent.
    other = spec("10.00", payorder_id=s.fields["payorder_id"])
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(other, acct, send(ADAPTER.build_submit(other, acct, now())))
    assert info.value.kind == ErrorKind.AMBIGUOUS
    assert ADAPTER.parse_lookup(other, acct, send(ADAPTER.build_lookup(other, acct, now()))) is None


def test_no_idempotency_key_the_same_refund_on_two_pay_orders_makes_two_orders(sandbox: SandboxServer) -> None:
    """CoinVoyage has no idempotency key, which is why the worker looks up before any resend."""
    acct = cv_account(sandbox)
    s = spec("10.00")
    first = create(sandbox, s)
    second = create(sandbox, dataclasses.replace(s, fields={**s.fields, "payorder_id": "po_deposit_2"}))
    assert first.provider_refund_id != second.provider_refund_id
    entry = ledger_entry(sandbox, s.refund_id)
    assert (entry["created"], entry["create_calls"]) == (2, 2)
    found = ADAPTER.parse_lookup(s, acct, send(ADAPTER.build_lookup(s, acct, now())))
    assert found is not None
    assert {found.provider_refund_id, *found.others} == {first.provider_refund_id, second.provider_refund_id}
    assert len(found.others) == 1
    other = spec("10.00")
    assert ADAPTER.parse_lookup(other, acct, send(ADAPTER.build_lookup(other, acct, now()))) is None


def test_outage_is_retryable(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    sandbox.configure(outage={"coinvoyage": True})
    r = send(ADAPTER.build_submit(spec(), acct, now()))
    assert (r.status_code, r.body) == (503, b"")
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(spec(), acct, r)
    assert info.value.kind == ErrorKind.RETRYABLE


def test_drift_shows_in_status_reads(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = create(sandbox, spec("10.00"))
    httpx.post(
        f"{sandbox.base_url}/_sandbox/drift/coinvoyage/{s.refund_id}",
        json={"status": "REFUNDED", "amount": "1.00", "destination": "0x" + "cd" * 20},
        timeout=5,
    ).raise_for_status()
    result = ADAPTER.parse_status(s, acct, send(ADAPTER.build_status(s, acct, now())))
    assert (result.status, result.raw_status) == (RefundStatus.FAILED, "REFUNDED")
    assert result.detail["amount"] == "1.00" and result.detail["destination"] == "0x" + "cd" * 20


def test_refunding_an_unknown_order_uses_a_paid_deposit(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = dataclasses.replace(spec(), provider_refund_id="po_whatever_sbx00")
    r = send(ADAPTER.build_status(s, acct, now()))
    assert r.status_code == 200
    order = json.loads(r.body)
    assert (order["mode"], order["status"]) == ("DEPOSIT", "COMPLETED")
    marked = create(sandbox, spec("10.00", payorder_id="po_dep_sbx51"))  # marker beats the cents
    assert poll_until(sandbox, marked, {RefundStatus.FAILED})[-1] == "FAILED"


def test_lookup_says_absent_only_when_no_later_page_can_hold_it() -> None:
    """A full page of newer orders without ours -> ask for the next page; a short page or one
    reaching orders older than our refund -> absent."""
    import json as _json
    from datetime import UTC, datetime, timedelta

    from providers.base import LookupNextPage, RefundSpec, Response
    from providers.coinvoyage import ADAPTER as adapter

    created = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    spec = RefundSpec("rf_ours", Decimal("1.00"), "USD", "addr", {}, created_at=created)

    def page(n: int, start: datetime) -> Response:
        orders = [
            {
                "id": f"po{i}",
                "mode": "REFUND",
                "status": "COMPLETED",
                "metadata": {"refundq_refund_id": f"x{i}"},
                "created_at": (start - timedelta(seconds=i)).isoformat(),
            }
            for i in range(n)
        ]
        return Response(200, {}, _json.dumps({"data": orders}).encode())

    acc = None  # parse_lookup does not use the account
    with pytest.raises(LookupNextPage) as info:
        adapter.parse_lookup(spec, acc, page(100, created + timedelta(hours=1)))  # type: ignore[arg-type]
    assert info.value.page == 1
    assert adapter.parse_lookup(spec, acc, page(99, created + timedelta(hours=1))) is None  # type: ignore[arg-type]
    assert adapter.parse_lookup(spec, acc, page(100, created - timedelta(hours=1))) is None  # type: ignore[arg-type]
    assert "offset=200" in adapter.build_lookup(dataclasses.replace(spec, lookup_page=2), account(), 1_700_000_000).url


# --- issue #12: the documented request body, read auth, list total, real amount shapes ----------

VECTORS = Path(__file__).parent / "vectors" / "coinvoyage.json"


def test_refund_body_is_the_documented_refund_request() -> None:
    """openapi 2.2.0 `RefundRequest`: `intent` {amount, asset, receiving_address} with `metadata` beside it;
    the create_refund vectors carry the same wrapped body."""
    s = spec("100", refund_id="rf_doc")
    body = json.loads(ADAPTER.build_submit(s, account(), NOW).body or b"", parse_float=Decimal)
    assert set(body) == {"intent", "metadata"}
    assert set(body["intent"]) == {"amount", "asset", "receiving_address"}
    assert body["metadata"] == {"refundq_refund_id": "rf_doc"}
    assert body["intent"]["asset"] == {"address": None, "chain_id": 30000000000001}
    vectors = [v for v in json.loads(VECTORS.read_text()) if v["kind"] == "create_refund"]
    assert vectors
    for v in vectors:
        documented = json.loads(v["inputs"]["body"], parse_float=Decimal)
        assert set(documented) <= set(body) and set(documented["intent"]) <= set(body["intent"])
        for key, value in documented["intent"].items():
            assert body["intent"][key] == value, key


def test_signature_header_name_is_an_account_option() -> None:
    acct = account(signature_header="Authorization-Signature")
    req = ADAPTER.build_submit(spec(), acct, NOW)
    assert "Authorization" not in req.headers and req.headers["X-API-KEY"] == "pk_unit"
    expected = cv.sign_request(cv.SCHEME_HMAC, "pk_unit", "sk_unit", NOW, "POST", "/pay-orders/po_deposit_1/refund")
    assert req.headers["Authorization-Signature"] == expected.header
    errors = {f for f, _ in _errors(spec(), account(signature_header="Bad Header:"))}
    assert errors == {"account.signature_header"}


def test_sandbox_refuses_the_flat_body_naming_intent(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = spec("10.00")
    good = ADAPTER.build_submit(s, acct, now())
    wrapped = json.loads(good.body or b"", parse_float=Decimal)
    flat = cv.json_dumps({**wrapped["intent"], "metadata": wrapped["metadata"]}).encode()
    r = send(dataclasses.replace(good, body=flat))
    assert r.status_code == 400 and "intent" in json.loads(r.body)["error"]["message"]
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_submit(s, acct, r)
    assert info.value.kind == ErrorKind.REJECTED
    assert sandbox.ledger()["refunds"] == []
    create(sandbox, s)  # the documented body is accepted


def test_sandbox_reads_need_x_api_key_and_take_it_alone(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = create(sandbox, spec("10.00"))
    read = ADAPTER.build_status(s, acct, now())
    assert set(read.headers) >= {"X-API-KEY"} and "Authorization" not in read.headers
    assert ADAPTER.parse_status(s, acct, send(read)).provider_refund_id == s.provider_refund_id
    bare = dataclasses.replace(read, headers={k: v for k, v in read.headers.items() if k != "X-API-KEY"})
    r = send(bare)
    assert r.status_code == 401 and "X-API-KEY" in json.loads(r.body)["error"]["message"]
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_status(s, acct, r)
    assert info.value.kind == ErrorKind.AUTH
    lookup = ADAPTER.build_lookup(s, acct, now())
    assert ADAPTER.parse_lookup(s, acct, send(lookup)) is not None
    no_key = dataclasses.replace(lookup, headers={k: v for k, v in lookup.headers.items() if k != "X-API-KEY"})
    assert send(no_key).status_code == 401
    unsigned = dataclasses.replace(lookup, headers={k: v for k, v in lookup.headers.items() if k != "Authorization"})
    assert send(unsigned).status_code == 401  # the list is privileged: signed too
    submit = ADAPTER.build_submit(spec("10.00"), acct, now())
    no_key = dataclasses.replace(submit, headers={k: v for k, v in submit.headers.items() if k != "X-API-KEY"})
    assert send(no_key).status_code == 401


def _list(orders: int, total: int | None, *, top_level: bool = False) -> Response:
    data: list[dict[str, Any]] = [
        pay_order("COMPLETED", id=f"po{i}", metadata={"refundq_refund_id": f"x{i}"}) for i in range(orders)
    ]
    body: dict[str, Any] = {"data": data}
    if total is not None:
        if top_level:
            body["total_count"] = total
        else:
            body["pagination"] = {"limit": 100, "offset": 0, "total_count": total}
    return resp(200, body)


def test_lookup_pages_by_total_count() -> None:
    s = spec(refund_id="rf_none")
    acct = account()
    # A full page that is the whole list: absent without asking for an empty next page.
    assert ADAPTER.parse_lookup(s, acct, _list(100, 100)) is None
    assert ADAPTER.parse_lookup(s, acct, _list(100, 100, top_level=True)) is None
    with pytest.raises(LookupNextPage) as info:
        ADAPTER.parse_lookup(s, acct, _list(100, 101))
    assert info.value.page == 1
    second = dataclasses.replace(s, lookup_page=1)
    assert ADAPTER.parse_lookup(second, acct, _list(1, 101)) is None
    # A short page while the total says more remain: never "absent" on a contradiction.
    with pytest.raises(LookupNextPage):
        ADAPTER.parse_lookup(s, acct, _list(50, 500))
    assert ADAPTER.parse_lookup(s, acct, _list(50, None)) is None  # no total: a short page ends the list


def _refund_row(amount: str, currency: str = "USD", **fields: Any) -> Refund:
    now_ = datetime.now(UTC)
    return Refund.model_validate(
        {
            "id": "rf_int",
            "idempotency_key": "k_int",
            "provider": "coinvoyage",
            "account": "cv-test",
            "amount": Decimal(amount),
            "currency": currency,
            "destination": SOL_ADDRESS,
            "fields": {"payorder_id": "po_deposit_1", "chain_id": 30000000000001, **fields},
            "status": "pending",
            "provider_refund_id": "po_refund_1",
            "deadline": now_,
            "created_at": now_,
            "updated_at": now_,
        }
    )


def test_integrity_on_real_token_unit_amounts_raises_no_false_drift() -> None:
    """A fiat refund reported in token units + value_usd compares value_usd; a token refund compares
    raw_amount / 10**decimals; a real drift is still flagged."""
    row = _refund_row("10.00")
    result = ADAPTER.parse_status(spec_of(row), account(), resp(200, pay_order("COMPLETED")))
    assert result.detail["amount"] == "10.00" and result.detail["currency"] == "USD"
    assert result.detail["token_amount"] == "0.066666666" and result.detail["token"] == "SOL"
    assert integrity_problems(row, result) == []
    # value_usd with more places than cents: rounded to the fiat refund's cents, no drift.
    fine = pay_order("COMPLETED")
    fine["fulfillment"]["amount"]["value_usd"] = Decimal("9.999999")
    assert integrity_problems(row, ADAPTER.parse_status(spec_of(row), account(), resp(200, fine))) == []
    # A real drift: the order is worth 1.00 USD.
    drift = pay_order("COMPLETED")
    drift["fulfillment"]["amount"].update(raw_amount="6666666", ui_amount_display="0.006666666", value_usd="1.00")
    problems = integrity_problems(row, ADAPTER.parse_status(spec_of(row), account(), resp(200, drift)))
    assert problems == ["amount: requested 10.00, provider reports 1.00"]
    # A token refund: exact token units from raw_amount and decimals.
    token_row = _refund_row("0.066666666", currency="SOL", amount_kind="token")
    result = ADAPTER.parse_status(spec_of(token_row), account(), resp(200, pay_order("COMPLETED")))
    assert result.detail["amount"] == "0.066666666" and integrity_problems(token_row, result) == []
    more = _refund_row("0.07", currency="SOL", amount_kind="token")
    result = ADAPTER.parse_status(spec_of(more), account(), resp(200, pay_order("COMPLETED")))
    assert integrity_problems(more, result) == ["amount: requested 0.07, provider reports 0.066666666"]
    # A fiat refund in EUR: token units and USD are not its unit, so no amount is compared.
    eur = _refund_row("10.00", currency="EUR")
    result = ADAPTER.parse_status(spec_of(eur), account(), resp(200, pay_order("COMPLETED")))
    assert "amount" not in result.detail and integrity_problems(eur, result) == []


def test_sandbox_reports_token_units_and_the_worker_sees_no_drift(sandbox: SandboxServer) -> None:
    acct = cv_account(sandbox)
    s = create(sandbox, spec("25.59"))
    r = send(ADAPTER.build_status(s, acct, now()))
    fulfillment = json.loads(r.body, parse_float=Decimal)["fulfillment"]
    assert set(fulfillment["amount"]) == {"raw_amount", "ui_amount", "ui_amount_display", "value_usd"}
    assert {"id", "name", "ticker", "decimals"} <= set(fulfillment["asset"])
    assert fulfillment["asset"]["ticker"] == "SOL" and fulfillment["amount"]["ui_amount_display"] == "0.1706"
    row = _refund_row("25.59").model_copy(update={"provider_refund_id": s.provider_refund_id})
    result = ADAPTER.parse_status(s, acct, r)
    assert integrity_problems(row, result) == []
    listed = json.loads(send(ADAPTER.build_lookup(s, acct, now())).body)
    assert listed["pagination"]["total_count"] >= 1 and "total" not in listed["pagination"]
