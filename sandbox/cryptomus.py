"""Cryptomus emulator, mounted under `/cryptomus`: POST `/v1/payment/refund`, `/v1/payment/info` and
`/v1/payment/list`.

Faithful to shared/providers/cryptomus.md where it is documented:
- Auth: the account is found by the `merchant` header; `sign` must equal `md5(base64(raw body) + api_key)`,
  else 401 `{"state":1,"message":"Invalid Sign."}`. The real server seems to re-encode the parsed body
  PHP-style before checking ([S8]); we check the exact raw bytes instead, which is the same thing for bodies
  that already are PHP-style JSON (all refundq sends) and stricter for anything else.
- Envelope `{"state":0,"result":...}`; validation errors 422 `{"state":1,"errors":{field:["validation.x"]}}`;
  other refusals 422 `{"state":1,"message":...}`.
- Invoices: every order_id names a paid invoice of 15.00 USDT, created on first sight (the merchant's own
  order). A marker `amt<units>[_<fraction>]` in the order_id or uuid sets another amount (`amt25_50` ->
  25.50). An order_id alone maps to a deterministic uuid (uuid5); a call giving both links them (the uuid
  identifies the invoice). A uuid alone names an invoice only once the sandbox issued it (for an order_id
  it has seen, or given together with one); any other uuid is 422 `Payment was not found`, as live.
- One refund per invoice: a second refund call answers 422 `{"state":1,"message":"You can make a refund
  only once"}` (the real text is undocumented, spec §9; this wording echoes the sibling refund-blocked
  endpoint) and is counted with `count_create_call`.
- Lifecycle on the clock: no refund -> `paid`; PENDING and PROCESSING phases -> `refund_process`; FINAL ->
  `refund_paid` (`refund_fail` in the FAILED scenario). `payment_status` stays `paid`.
- No nonce, no timestamp, no idempotency key: Cryptomus has none.
- payment/info (and each payment/list item) carries the fields the real API returns (spec §1): uuid, order_id,
  amount, payment_amount, payer_amount, payer_currency, currency, merchant_amount (amount less a 2% commission),
  network `tron`, address (the deposit address) and from (the payer's), txid, payment_status, url, expired_at
  (an hour after creation), status, is_final, additional_data, created_at (first sight of the invoice) and
  updated_at (the refund's creation, if any), with deterministic values per invoice.

Scenarios (marker `sbxNN` in the order_id or uuid; a refund call carries no amount):
FAILED -> refund_fail; SLOW -> 10x slower; RATE_LIMITED -> first refund call 429 `Too Many Attempts.` with
Retry-After: 1; SERVER_ERROR -> first refund call 500; TIMEOUT_AFTER_COMMIT -> first refund call records the
refund then hangs; UNDOCUMENTED_STATUS -> reads after the first phase answer `refund_hold`; REJECTED -> the
invoice does not exist: 422 `Payment was not found` on every call. Timing faults on the first refund call
(sandbox/core.py): DELAYED_EXECUTION -> no answer, the refund is recorded `execute_delay_seconds` after
receipt (a call sent meanwhile refunds the invoice; the late one is then refused: one refund per invoice);
TRICKLED_ANSWER -> `{"state":0,"result":[]}` trickles a byte per `trickle_interval`, recorded once it is out;
ANSWER_LOST -> recorded, then the connection closes unanswered. PARTIAL and ACTION_REQUIRED have no
Cryptomus counterpart (a refund returns the whole invoice and needs no person): they behave as NORMAL.

Faults: `outage` -> 503 with an empty body on every call; `rate_limit` keyed by the merchant uuid -> 429 in
the Laravel shape (`{"state":1,"message":"Too Many Attempts."}` + Retry-After). Drift (`status_override`,
amount) shows in `payment/info`. Payment info has no refund destination field: destination drift is invisible.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import base58
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from config.accounts import Account
from providers.cryptomus import NAME, php_json_decode, sign_body
from sandbox.core import LedgerEntry, Phase, SandboxState, Scenario, marked_amount, scenario_for

DEFAULT_AMOUNT = Decimal("15.00")
CURRENCY = "USDT"
ALREADY_REFUNDED = "You can make a refund only once"
NOT_FOUND = "Payment was not found"
UNDOCUMENTED_STATUS = "refund_hold"
NETWORK = "tron"
COMMISSION = Decimal("0.02")  # the merchant's fee: merchant_amount = amount less it
INVOICE_LIFETIME = 3600  # seconds from creation to `expired_at`
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ORDER_ID = re.compile(r"[\w-]{1,128}")
_NAMESPACE = uuidlib.UUID("0f8a3c5e-6c0b-4c1e-9a57-1c2d3e4f5a6b")
# Laravel `boolean` plus the strings the doc's curl example sends.
_BOOLEANS = (True, False, "1", "0", "true", "false")


@dataclass(frozen=True)
class Invoice:
    uuid: str
    order_id: str | None
    amount: Decimal
    scenario: Scenario


def _fail(status: int, message: str | None = None, *, errors: dict[str, list[str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"state": 1}
    if message is not None:
        body["message"] = message
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def _rate_limited(seconds: float) -> JSONResponse:
    response = _fail(429, "Too Many Attempts.")
    response.headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    return response


def _tron_address(seed: str) -> str:
    """A well-formed TRON address (base58check, version 0x41), the same for the same seed."""
    return base58.b58encode_check(b"\x41" + hashlib.sha256(seed.encode()).digest()[:20]).decode("ascii")


def _timestamp(epoch: float) -> str:
    """Cryptomus's `created_at` / `updated_at` form: ISO 8601 seconds with the UTC offset."""
    return datetime.fromtimestamp(int(epoch), UTC).isoformat()


def _reference_errors(data: dict[str, Any]) -> dict[str, list[str]]:
    """Laravel-style validation of `uuid` / `order_id` (one of them is required)."""
    errors: dict[str, list[str]] = {}
    uuid, order_id = data.get("uuid"), data.get("order_id")
    if uuid in (None, "") and order_id in (None, ""):
        return {"uuid": ["validation.required_without"], "order_id": ["validation.required_without"]}
    if uuid not in (None, "") and not (isinstance(uuid, str) and _UUID.fullmatch(uuid)):
        errors["uuid"] = ["validation.uuid"]
    if order_id not in (None, "") and not (isinstance(order_id, str) and _ORDER_ID.fullmatch(order_id)):
        errors["order_id"] = ["validation.alpha_dash"]
    return errors


def routes(state: SandboxState) -> list[BaseRoute]:
    # (merchant, order_id) -> invoice uuid and back, learnt when a call names both.
    uuid_by_order: dict[tuple[str, str], str] = {}
    order_by_uuid: dict[tuple[str, str], str] = {}
    created_at: dict[str, float] = {}  # invoice uuid -> when the sandbox first saw it (its creation)

    def invoice(merchant: str, data: dict[str, Any]) -> Invoice | None:
        """The invoice a call names; None for a uuid alone that this merchant never issued."""
        order_id = str(data["order_id"]) if data.get("order_id") else None
        if data.get("uuid"):
            invoice_uuid = str(data["uuid"]).lower()
            if order_id:
                uuid_by_order[(merchant, order_id)] = invoice_uuid
                order_by_uuid[(merchant, invoice_uuid)] = order_id
            order_id = order_id or order_by_uuid.get((merchant, invoice_uuid))
            if order_id is None:
                return None  # live: "Payment was not found"
        else:
            assert order_id is not None  # validated: one of uuid / order_id
            invoice_uuid = uuid_by_order.get((merchant, order_id)) or str(
                uuidlib.uuid5(_NAMESPACE, f"{merchant}:{order_id}")
            )
            order_by_uuid[(merchant, invoice_uuid)] = order_id  # now known by its uuid too
        created_at.setdefault(invoice_uuid, time.time())
        return Invoice(
            invoice_uuid,
            order_id,
            marked_amount(DEFAULT_AMOUNT, order_id, invoice_uuid),
            scenario_for(None, order_id, invoice_uuid),
        )

    def raw_status(entry: LedgerEntry | None) -> str:
        if entry is None:
            return "paid"
        if entry.status_override:
            return entry.status_override
        phase = state.phase(entry)
        if phase == Phase.PENDING:
            return "refund_process"
        if entry.scenario == Scenario.UNDOCUMENTED_STATUS:
            return UNDOCUMENTED_STATUS
        if phase == Phase.PROCESSING:
            return "refund_process"
        return "refund_fail" if entry.scenario == Scenario.FAILED else "refund_paid"

    def payment(inv: Invoice, entry: LedgerEntry | None) -> dict[str, Any]:
        amount = entry.amount if entry is not None and entry.amount is not None else format(inv.amount, "f")
        status = raw_status(entry)
        created = created_at.setdefault(inv.uuid, entry.created_at if entry is not None else time.time())
        merchant_amount = (Decimal(amount) * (1 - COMMISSION)).quantize(Decimal("0.00000001"))
        return {
            "uuid": inv.uuid,
            "order_id": inv.order_id,
            "amount": amount,
            "payment_amount": amount,
            "payer_amount": amount,
            "discount_percent": 0,
            "discount": "0.00000000",
            "payer_currency": CURRENCY,
            "currency": entry.currency if entry is not None and entry.currency else CURRENCY,
            "merchant_amount": format(merchant_amount, "f"),
            "network": NETWORK,
            "address": _tron_address(f"deposit:{inv.uuid}"),
            "from": _tron_address(f"payer:{inv.uuid}"),
            "txid": uuidlib.uuid5(_NAMESPACE, inv.uuid).hex * 2,
            "payment_status": "paid",
            "url": f"https://pay.cryptomus.com/pay/{inv.uuid}",
            "expired_at": int(created) + INVOICE_LIFETIME,
            "status": status,
            "is_final": status != "refund_process",
            "additional_data": None,
            "created_at": _timestamp(created),
            "updated_at": _timestamp(max(created, entry.created_at) if entry is not None else created),
        }

    async def authenticate(request: Request) -> tuple[Account, dict[str, Any]] | Response:
        """The calling account and the parsed body, or the error answer."""
        if state.config.outage.get(NAME):
            return Response(status_code=503)
        raw = await request.body()
        merchant, sign = request.headers.get("merchant", ""), request.headers.get("sign", "")
        account = next((a for a in state.accounts_for(NAME) if a.option("merchant") == merchant), None)
        expected = sign_body(raw, account.secret("api_key")) if account is not None else ""
        if account is None or not hmac.compare_digest(sign.lower().encode(), expected.encode()):
            state.count(NAME, "auth_failures")
            return _fail(401, "Invalid Sign.")
        if (wait := state.take_rate_token(merchant)) is not None:
            state.count(NAME, "rate_limited")
            return _rate_limited(wait)
        try:
            data = php_json_decode(raw) if raw.strip() else {}
        except ValueError:
            return _fail(422, "Invalid JSON")
        if data == []:  # the PHP SDK's empty parameter array
            data = {}
        if not isinstance(data, dict):
            return _fail(422, "Invalid JSON")
        return account, data

    async def refund(request: Request) -> Response:
        auth = await authenticate(request)
        if isinstance(auth, Response):
            return auth
        account, data = auth
        merchant = str(account.option("merchant"))
        errors = _reference_errors(data)
        address = data.get("address")
        if not isinstance(address, str) or not address:
            errors["address"] = ["validation.required"]
        if "is_subtract" not in data:
            errors["is_subtract"] = ["validation.required"]
        elif not isinstance(data["is_subtract"], bool | int | str) or data["is_subtract"] not in _BOOLEANS:
            errors["is_subtract"] = ["validation.boolean"]
        if errors:
            return _fail(422, errors=errors)
        inv = invoice(merchant, data)
        if inv is None or inv.scenario == Scenario.REJECTED:
            return _fail(422, NOT_FOUND)
        if state.find(NAME, merchant, inv.uuid) is not None:
            state.count_create_call(NAME, merchant, inv.uuid)
            return _fail(422, ALREADY_REFUNDED)
        if inv.scenario == Scenario.RATE_LIMITED and state.first_time(NAME, merchant, inv.uuid, "rate"):
            state.count(NAME, "rate_limited")
            return _rate_limited(1)
        if inv.scenario == Scenario.SERVER_ERROR and state.first_time(NAME, merchant, inv.uuid, "500"):
            return JSONResponse({"message": "Server Error"}, status_code=500)
        # No Cryptomus counterpart: a refund returns the whole invoice and waits for no person.
        recorded = Scenario.NORMAL if inv.scenario in (Scenario.PARTIAL, Scenario.ACTION_REQUIRED) else inv.scenario

        def commit() -> Response:
            _, created = state.record_create(
                NAME,
                merchant,
                inv.uuid,
                provider_refund_id=inv.order_id or inv.uuid,
                scenario=recorded,
                amount=inv.amount,
                destination=str(address),
                currency=CURRENCY,
            )
            if not created:  # a concurrent twin, or a call sent before a late execution; counted all the same
                return _fail(422, ALREADY_REFUNDED)
            return JSONResponse({"state": 0, "result": []})

        late = await state.timing_fault(
            inv.scenario, NAME, merchant, inv.uuid, commit, lambda: JSONResponse({"state": 0, "result": []})
        )
        if late is not None:
            return late
        answer = commit()
        if (
            answer.status_code == 200
            and inv.scenario == Scenario.TIMEOUT_AFTER_COMMIT
            and state.first_time(NAME, merchant, inv.uuid, "hang")
        ):
            await state.hang()
        return answer

    async def info(request: Request) -> Response:
        auth = await authenticate(request)
        if isinstance(auth, Response):
            return auth
        account, data = auth
        merchant = str(account.option("merchant"))
        if errors := _reference_errors(data):
            return _fail(422, errors=errors)
        inv = invoice(merchant, data)
        if inv is None:
            return _fail(422, NOT_FOUND)
        entry = state.find(NAME, merchant, inv.uuid)
        if entry is None and inv.scenario == Scenario.REJECTED:
            return _fail(422, NOT_FOUND)
        return JSONResponse({"state": 0, "result": payment(inv, entry)})

    async def history(request: Request) -> Response:
        """The merchant's refunded invoices (enough for reconciliation; one page)."""
        auth = await authenticate(request)
        if isinstance(auth, Response):
            return auth
        account, _ = auth
        merchant = str(account.option("merchant"))
        entries = [e for e in list(state.ledger.values()) if e.provider == NAME and e.key_id == merchant]
        items = []
        for e in sorted(entries, key=lambda e: e.created_at, reverse=True):
            order_id = e.provider_refund_id if e.provider_refund_id != e.refund_key else None
            # The amount shown comes from the ledger entry (drift included), not from the invoice.
            inv = Invoice(e.refund_key, order_id, DEFAULT_AMOUNT, Scenario(e.scenario))
            items.append(payment(inv, e))
        paginate = {
            "count": len(items),
            "hasPages": False,
            "nextCursor": None,
            "previousCursor": None,
            "perPage": 15,
        }
        return JSONResponse({"state": 0, "result": {"items": items, "paginate": paginate}})

    return [
        Route("/v1/payment/refund", refund, methods=["POST"]),
        Route("/v1/payment/info", info, methods=["POST"]),
        Route("/v1/payment/list", history, methods=["POST"]),
    ]
