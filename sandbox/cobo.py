"""Cobo WaaS 2.0 refund emulator, mounted at `/cobo` (accounts use base_url `.../cobo/v2`).

Faithful to shared/providers/cobo.md where it matters to refundq:
- every call: `Biz-Api-Key` must be the public key of a registered cobo account (else 401 / 2024),
  `Biz-Api-Signature` must verify over `METHOD|/v2/...|nonce|raw query|raw body` (else 401 / 2023), the
  `Biz-Api-Nonce` (ms) must be fresh and unseen (`state.accept_timestamp`; else 401 / 2023), missing headers
  401 / 2022; `state.take_rate_token(api key)` -> 429 / 2010 with Retry-After; an outage -> 503, empty body;
- `request_id` is unique per API key: a second create answers 400 / 12009 (counted in the ledger);
- every 2xx answer is signed with the sandbox's own key (`[sandbox] cobo_response_private_key`):
  `Biz-Timestamp`, `Biz-Resp-Signature` over `raw_body|Biz-Timestamp`. Error answers are not signed
  (the SDK only verifies 2xx). Without that key 2xx answers go out unsigned, and clients must refuse them;
- lifecycle on `state.phase`: Pending -> Processing -> Completed / Failed / PartiallyCompleted; a refund
  without `to_address` (or the ACTION_REQUIRED scenario until funded) stays PendingConfirmation until a
  `PUT /v2/payments/refunds/{id}` gives an address; amount / to_address / token_id come from the ledger entry.
- transactions (from Processing on) carry the fields the official SDK requires: tx_id, tx_hash, token_id,
  from_address (a fixed sandbox refund wallet per chain), to_address, amount, status, created_timestamp,
  updated_timestamp. One transaction (Broadcasting, then Completed / Failed with the refund), except
  PartiallyCompleted: two, a `Completed` one carrying 60% of the amount rounded DOWN to cents and a `Failed`
  one carrying the rest (80.00 -> 48.00 completed + 32.00 failed; 0.01 -> 0.00 + 0.01).

Scenarios: all thirteen have a counterpart. RATE_LIMITED -> 429 / 2010, SERVER_ERROR -> 500 / 1000, REJECTED ->
400 / 12007 "Insufficient balance", UNDOCUMENTED_STATUS -> "Frozen" after the first phase, ACTION_REQUIRED
-> PendingConfirmation until `POST /_sandbox/fund/cobo/<request_id>` or an address PUT. Timing faults (first
create only, sandbox/core.py): DELAYED_EXECUTION -> no answer, the refund appears `execute_delay_seconds` after
receipt (a create with the same request_id arriving before that creates it; the late one is then a
duplicate); TRICKLED_ANSWER -> the signed 201 trickles a byte per `trickle_interval`, the refund is created
once it is out; ANSWER_LOST -> created, then the connection closes unanswered. The scenario marker is read
from `order_id` and `request_id`, else the amount's cents.
Cancel (undocumented result, cobo.md §9): allowed while Pending / PendingConfirmation, then Failed with
failed_reason "Cancelled by merchant".
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from functools import partial
from typing import Any

import base58
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from providers import cobo
from providers.addresses import family_for_token
from providers.base import decimal_places
from sandbox.core import LedgerEntry, Phase, SandboxState, Scenario, scenario_for

PROVIDER = "cobo"
MOUNT = "/cobo"
UNDOCUMENTED_STATUS = "Frozen"
CANCELLED_REASON = "Cancelled by merchant"
PARTIAL_SHARE = Decimal("0.6")  # of a PartiallyCompleted refund's amount, paid by its Completed transaction


def error(status_code: int, code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Cobo's error shape (cobo.md §4)."""
    body = {"error_code": code, "error_message": message, "error_id": uuid.uuid4().hex}
    return JSONResponse(body, status_code=status_code, headers=headers)


def partial_split(amount: Decimal) -> tuple[Decimal, Decimal]:
    """(completed, failed) parts of a PartiallyCompleted refund: PARTIAL_SHARE of it, rounded down to cents."""
    completed = (amount * PARTIAL_SHARE).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
    return completed, amount - completed


def refund_wallet(token_id: str) -> str:
    """The merchant's refund wallet on the token's chain (deterministic, well-formed for the chain)."""
    seed = hashlib.sha256(f"sandbox-refund-wallet:{token_id.split('_', 1)[0]}".encode()).digest()[:20]
    if family_for_token(token_id) == "tron":
        return base58.b58encode_check(b"\x41" + seed).decode("ascii")
    return "0x" + seed.hex()


def routes(state: SandboxState) -> list[BaseRoute]:
    # Registered API keys: the public half of each cobo account's seed.
    keys: dict[str, str] = {}
    for account in state.accounts_for(PROVIDER):
        if "api_private_key" in account.secrets:
            keys[cobo.public_key_hex(account.secret("api_private_key"))] = account.name
    response_key = state.sandbox_secrets.get("cobo_response_private_key")
    # What the ledger does not hold, by provider refund id (ids are unique, so a reset needs no cleanup).
    extras: dict[str, dict[str, Any]] = {}
    cancelled: set[str] = set()

    def signed(payload: Any, status_code: int = 200) -> Response:
        raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = {}
        if response_key:
            timestamp = str(int(time.time() * 1000))
            headers = {
                "Biz-Timestamp": timestamp,
                "Biz-Resp-Signature": cobo.sign_response(response_key, raw, timestamp),
            }
        return Response(raw, status_code=status_code, headers=headers, media_type="application/json")

    async def authenticate(request: Request) -> tuple[str, bytes] | Response:
        """(api key, raw body) of a correctly signed, fresh call; else Cobo's error answer."""
        if state.config.outage.get(PROVIDER):
            return Response(b"", status_code=503)
        api_key = request.headers.get("biz-api-key")
        nonce = request.headers.get("biz-api-nonce")
        signature = request.headers.get("biz-api-signature")
        if not api_key or not nonce or not signature:
            return error(401, 2022, "Missing required headers: Biz-Api-Key, Biz-Api-Nonce, Biz-Api-Signature")
        if api_key.lower() not in keys:
            state.count(PROVIDER, "auth_rejections")
            return error(401, 2024, "API key authentication failed")
        raw = await request.body()
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return error(400, 2006, "Request body is not UTF-8")
        # Cobo verifies the path and query as sent: the raw (still percent-encoded) ones, without our mount.
        raw_path = request.scope.get("raw_path") or request.url.path.encode("utf-8")
        path = raw_path.decode("latin-1").split("?", 1)[0]
        path = path[len(MOUNT) :] if path.startswith(MOUNT + "/") else path
        query = request.scope.get("query_string", b"").decode("latin-1")
        if not nonce.isdigit() or not cobo.verify_request(api_key, request.method, path, nonce, query, body, signature):
            state.count(PROVIDER, "signature_rejections")
            return error(401, 2023, "API signature validation failed")
        why = state.accept_timestamp(PROVIDER, api_key.lower(), int(nonce), signature.lower())
        if why is not None:
            state.count(PROVIDER, "nonce_rejections")
            return error(401, 2023, f"API signature validation failed: {why}")
        wait = state.take_rate_token(api_key.lower())
        if wait is not None:
            return rate_limited(wait)
        return api_key.lower(), raw

    def rate_limited(wait: float) -> Response:
        state.count(PROVIDER, "rate_limited")
        return error(429, 2010, "Rate limit exceeded", {"Retry-After": str(max(1, math.ceil(wait)))})

    def raw_status(entry: LedgerEntry) -> tuple[str, str]:
        """(status, failed_reason) as Cobo would report it now."""
        if entry.status_override:
            return entry.status_override, ""
        if entry.provider_refund_id in cancelled:
            return "Failed", CANCELLED_REASON
        if entry.destination is None:
            return "PendingConfirmation", ""
        if entry.scenario == Scenario.ACTION_REQUIRED and entry.funded_at is None:
            return "PendingConfirmation", ""
        phase = state.phase(entry)
        if phase == Phase.PENDING:
            return "Pending", ""
        if entry.scenario == Scenario.UNDOCUMENTED_STATUS:
            return UNDOCUMENTED_STATUS, ""
        if phase == Phase.PROCESSING:
            return "Processing", ""
        if entry.scenario == Scenario.FAILED:
            return "Failed", "Transaction failed: insufficient gas on the refund wallet"
        if entry.scenario == Scenario.PARTIAL:
            return "PartiallyCompleted", "1 of 2 refund transactions failed"
        return "Completed", ""

    def refund_object(entry: LedgerEntry) -> dict[str, Any]:
        status, failed_reason = raw_status(entry)
        extra = extras.get(entry.provider_refund_id, {})
        token = entry.currency or ""
        return {
            "request_id": entry.refund_key,
            "refund_id": entry.provider_refund_id,
            "order_id": extra.get("order_id", ""),
            "merchant_id": extra.get("merchant_id", ""),
            "token_id": token,
            "chain_id": token.split("_", 1)[0],
            "amount": entry.amount or "",
            "to_address": entry.destination or "",
            "status": status,
            "failed_reason": failed_reason,
            "refund_type": extra.get("refund_type", "Merchant"),
            "created_timestamp": int(entry.created_at),
            "updated_timestamp": int(time.time()),
            "initiator": "API",
            "transactions": transactions(entry, status),
            "charge_merchant_fee": extra.get("charge_merchant_fee", False),
            "merchant_fee_amount": extra.get("merchant_fee_amount", ""),
            "merchant_fee_token_id": extra.get("merchant_fee_token_id", ""),
            "commission_fee": None,
        }

    def transactions(entry: LedgerEntry, status: str) -> list[dict[str, Any]]:
        """The refund's on-chain transfers: none before Processing; PartiallyCompleted splits the amount."""
        if status not in ("Processing", "Completed", "Failed", "PartiallyCompleted"):
            return []
        if status == "PartiallyCompleted" and entry.amount:
            completed, failed = partial_split(Decimal(entry.amount))
            parts = [("Completed", format(completed, "f")), ("Failed", format(failed, "f"))]
        else:
            parts = [({"Processing": "Broadcasting", "Failed": "Failed"}.get(status, "Completed"), entry.amount or "")]
        updated = int(time.time())
        return [
            {
                "tx_id": f"tx-{entry.provider_refund_id}-{n}",
                "tx_hash": "0x" + uuid.uuid5(uuid.NAMESPACE_URL, f"{entry.provider_refund_id}/{n}").hex * 2,
                "token_id": entry.currency or "",
                "from_address": refund_wallet(entry.currency or ""),
                "to_address": entry.destination or "",
                "amount": amount,
                "status": tx_status,
                "created_timestamp": int(entry.created_at),
                "updated_timestamp": updated,
            }
            for n, (tx_status, amount) in enumerate(parts, 1)
        ]

    def by_refund_id(key_id: str, refund_id: str) -> LedgerEntry | None:
        return next(
            (
                e
                for e in list(state.ledger.values())
                if e.provider == PROVIDER and e.key_id == key_id and e.provider_refund_id == refund_id
            ),
            None,
        )

    async def create(request: Request) -> Response:
        auth = await authenticate(request)
        if isinstance(auth, Response):
            return auth
        key_id, raw = auth
        try:
            body = json.loads(raw)
        except ValueError:
            return error(400, 2006, "Request body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, 2006, "Request body must be a JSON object")
        for name in ("request_id", "payable_amount", "token_id", "refund_type"):
            if not body.get(name):
                return error(400, 2003, f"Missing required parameter: {name}")
        request_id = str(body["request_id"])
        try:
            amount = Decimal(str(body["payable_amount"]))
        except InvalidOperation:
            return error(400, 2006, "Invalid parameter: payable_amount")
        if not amount.is_finite() or amount <= 0 or decimal_places(amount.normalize()) > 2:
            return error(400, 2006, "Invalid parameter: payable_amount must be positive, up to two decimals")
        if body["refund_type"] not in ("Merchant", "Psp"):
            return error(400, 2006, "Invalid parameter: refund_type")
        if state.find(PROVIDER, key_id, request_id) is not None:
            state.count_create_call(PROVIDER, key_id, request_id)
            return error(400, 12009, "Duplicate request ID. Use a unique request ID")
        scenario = scenario_for(amount, body.get("order_id"), request_id)
        if scenario == Scenario.RATE_LIMITED and state.first_time(PROVIDER, key_id, request_id, "rate"):
            return rate_limited(1.0)
        if scenario == Scenario.SERVER_ERROR and state.first_time(PROVIDER, key_id, request_id, "500"):
            return error(500, 1000, "Internal error")
        if scenario == Scenario.REJECTED:
            return error(400, 12007, "Insufficient balance")
        refund_id = "R" + uuid.uuid4().hex[:20]
        # The create's optional fields, kept beside the ledger entry and echoed in every refund object.
        extras[refund_id] = {k: body[k] for k in cobo.OPTIONAL_FIELDS if k in body}
        record = partial(
            state.record_create,
            PROVIDER,
            key_id,
            request_id,
            provider_refund_id=refund_id,
            scenario=scenario,
            amount=amount,
            destination=body.get("to_address") or None,
            currency=str(body["token_id"]),
        )

        def commit() -> Response:
            entry, created_now = record()
            if not created_now:  # a concurrent twin won the race, or came in before a late execution
                return error(400, 12009, "Duplicate request ID. Use a unique request ID")
            return signed(refund_object(entry), 201)

        def draft() -> Response:
            return signed(refund_object(record(draft=True)[0]), 201)

        late = await state.timing_fault(scenario, PROVIDER, key_id, request_id, commit, draft)
        if late is not None:
            return late
        answer = commit()
        if (
            answer.status_code == 201
            and scenario == Scenario.TIMEOUT_AFTER_COMMIT
            and state.first_time(PROVIDER, key_id, request_id, "hang")
        ):
            await state.hang()  # committed; the client gives up before this answer
        return answer

    async def list_refunds(request: Request) -> Response:
        auth = await authenticate(request)
        if isinstance(auth, Response):
            return auth
        key_id, _ = auth
        params = request.query_params
        statuses = {s for s in params.get("statuses", "").split(",") if s}
        try:
            limit = min(max(int(params.get("limit") or 10), 1), 50)
        except ValueError:
            return error(400, 2006, "Invalid parameter: limit")
        found = []
        for entry in list(state.ledger.values()):
            if entry.provider != PROVIDER or entry.key_id != key_id:
                continue
            if params.get("request_id") and entry.refund_key != params["request_id"]:
                continue
            refund = refund_object(entry)
            if params.get("merchant_id") and refund["merchant_id"] != params["merchant_id"]:
                continue
            if statuses and refund["status"] not in statuses:
                continue
            found.append(refund)
        page = found[:limit]
        pagination = {"before": "", "after": "", "total_count": len(found)}
        return signed({"data": page, "pagination": pagination})

    async def refunds(request: Request) -> Response:
        return await (create(request) if request.method == "POST" else list_refunds(request))

    async def one_refund(request: Request) -> Response:
        auth = await authenticate(request)
        if isinstance(auth, Response):
            return auth
        key_id, raw = auth
        entry = by_refund_id(key_id, request.path_params["refund_id"])
        if entry is None:
            return error(404, 2028, "Refund not found")
        if request.method == "GET":
            state.count(PROVIDER, f"status_reads:{entry.refund_key}")  # tests: polls per refund
            return signed(refund_object(entry))
        try:  # PUT: set the destination of a refund waiting for one
            body = json.loads(raw)
        except ValueError:
            return error(400, 2006, "Request body is not valid JSON")
        address = body.get("to_address") if isinstance(body, dict) else None
        if not address:
            return error(400, 2003, "Missing required parameter: to_address")
        if raw_status(entry)[0] != "PendingConfirmation":
            return error(400, 2006, "Refund is not waiting for an address")
        entry.destination = str(address)
        entry.funded_at = time.time()
        return signed(refund_object(entry))

    async def cancel(request: Request) -> Response:
        auth = await authenticate(request)
        if isinstance(auth, Response):
            return auth
        key_id, _ = auth
        entry = by_refund_id(key_id, request.path_params["refund_id"])
        if entry is None:
            return error(404, 2028, "Refund not found")
        if raw_status(entry)[0] not in ("Pending", "PendingConfirmation"):
            return error(400, 2006, "Refund can no longer be cancelled")
        cancelled.add(entry.provider_refund_id)
        return signed(refund_object(entry))

    return [
        Route("/v2/payments/refunds", refunds, methods=["POST", "GET"]),
        Route("/v2/payments/refunds/{refund_id}", one_refund, methods=["GET", "PUT"]),
        Route("/v2/payments/refunds/{refund_id}/cancel", cancel, methods=["PUT"]),
    ]
