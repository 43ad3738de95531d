"""CoinVoyage emulator, mounted at /coinvoyage: `POST /v2/pay-orders/{id}/refund`,
`GET /v2/pay-orders/{id}`, `GET /v2/pay-orders` (list, `limit` <= 100 and `offset`, newest first).

- Auth: every call carries `Authorization: APIKey=..,signature=..,timestamp=..`. The account is found by
  its APIKey among the coinvoyage accounts and the signature is recomputed with the production signer
  (providers/coinvoyage.py) under that account's `signature_scheme`, over METHOD + the path relative to
  `/v2` as sent (query included) + timestamp. A timestamp outside `timestamp_window_ms` or a wrong
  signature answers 401 in CoinVoyage's error shape `{error: {path, statusCode, status, message}}`.
  The same header may be sent twice within a second (two polls): CoinVoyage documents no replay rule,
  so none is enforced.
- Any pay-order id that is not one of ours is a paid DEPOSIT order (made up on the fly).
- No idempotency: every accepted create makes a NEW REFUND pay-order. The ledger key is
  `metadata.refundq_refund_id`; a second create for the same key increments `created`, so a double
  create shows as created >= 2.
- Lifecycle on the clock: PENDING -> EXECUTING_ORDER -> COMPLETED. Scenarios:
  FAILED -> ... -> FAILED; PARTIAL -> PENDING -> PARTIAL_PAYMENT -> EXPIRED (paid short, then the
  deadline passes); SLOW -> 10x slower; RATE_LIMITED -> the first create answers 429 + Retry-After: 1;
  SERVER_ERROR -> the first create answers 500; TIMEOUT_AFTER_COMMIT -> the first create creates, then
  hangs; UNDOCUMENTED_STATUS -> `ON_HOLD` after the first phase; REJECTED -> 400 "Insufficient balance";
  ACTION_REQUIRED -> AWAITING_PAYMENT until `POST /_sandbox/fund/coinvoyage/<pay-order id or refund
  id>`, then AWAITING_CONFIRMATION -> EXECUTING_ORDER -> COMPLETED. Timing faults, on the first create
  (sandbox/core.py): DELAYED_EXECUTION -> no answer; the pay-order is created `execute_delay_seconds` after
  receipt, and a create sent meanwhile makes one too (no idempotency): `created` 2, the double payment a
  client must avoid by not resending before its settle time; TRICKLED_ANSWER -> the pay-order JSON trickles
  a byte per `trickle_interval`, created once it is out; ANSWER_LOST -> created, then the connection closes
  unanswered. Every scenario has a counterpart.
  The scenario comes from a `sbxNN` marker in the refunded pay-order id, else the amount's cents.
- `outage` -> 503 with an empty body to every call; a rate limit on the API key -> 429 + Retry-After;
  drift (`status_override`, amount, destination) shows in every read.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from config.accounts import Account
from providers import coinvoyage as cv
from sandbox.core import LedgerEntry, Phase, SandboxState, Scenario, scenario_for

PROVIDER = "coinvoyage"
API_PREFIX = "/v2"
UNDOCUMENTED = "ON_HOLD"
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


@dataclass
class Order:
    """A REFUND pay-order. Amount, destination and status come from the ledger entry (so drift shows)."""

    id: str
    entry: LedgerEntry
    parent_id: str
    chain_id: int
    asset_address: str | None
    fiat: str | None  # the fiat unit for a fiat refund, None for a token amount
    metadata: dict[str, Any]
    created_at: float = field(default_factory=time.time)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(cv.json_dumps(data), status, headers, media_type="application/json")


def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "error": {
            "path": request.url.path,
            "statusCode": status,
            "status": _REASONS.get(status, "Error"),
            "message": message,
        }
    }
    return _json(body, status, headers)


def _signed_path(request: Request) -> str:
    """The path relative to the base URL (`.../coinvoyage/v2`), as sent, with its query."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.scope["path"]
    prefix = request.scope.get("root_path", "") + API_PREFIX
    path = path[len(prefix) :] if path.startswith(prefix) else path
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def routes(state: SandboxState) -> list[BaseRoute]:
    orders: dict[str, Order] = {}

    def live(order: Order) -> bool:
        # After /_sandbox/reset the ledger is empty: orders whose entry is gone are forgotten too.
        e = order.entry
        return state.ledger.get((e.provider, e.key_id, e.refund_key)) is e

    def authenticate(request: Request) -> Account | Response:
        fields = cv.parse_authorization(request.headers.get("authorization", ""))
        api_key, signature, ts = fields.get("APIKey"), fields.get("signature"), fields.get("timestamp")
        if not api_key or not signature or not ts or not ts.isdigit():
            return _error(request, 401, "Missing or malformed Authorization header")
        account = next(
            (a for a in state.accounts_for(PROVIDER) if hmac.compare_digest(a.secret("api_key"), api_key)),
            None,
        )
        if account is None:
            return _error(request, 401, "Invalid API key")
        if abs(time.time() * 1000 - int(ts) * 1000) > state.config.timestamp_window_ms:
            state.count(PROVIDER, "stale_timestamps")
            return _error(request, 401, "Request timestamp expired")
        try:
            scheme = account.option("signature_scheme", cv.SCHEME_HMAC)
            expected = cv.sign_request(
                scheme, api_key, account.secret("api_secret"), int(ts), request.method, _signed_path(request)
            )
        except ValueError:
            return _error(request, 401, "Unsupported signature scheme")
        if not hmac.compare_digest(expected.signature, signature):
            state.count(PROVIDER, "bad_signatures")
            return _error(request, 401, "Invalid signature")
        return account

    async def guard(request: Request) -> tuple[str, Response | None]:
        """(api key, refusal): outage, authentication and the rate limit, in that order."""
        if state.config.outage.get(PROVIDER):
            return "", Response(b"", 503)
        account = authenticate(request)
        if isinstance(account, Response):
            return "", account
        key_id = account.secret("api_key")
        wait = state.take_rate_token(key_id)
        if wait is not None:
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
            return key_id, _error(request, 429, "Rate limit exceeded", headers)
        return key_id, None

    def raw_status(order: Order) -> str:
        entry = order.entry
        if entry.status_override:
            return entry.status_override
        scenario = entry.scenario
        if scenario == Scenario.ACTION_REQUIRED and entry.funded_at is None:
            return "AWAITING_PAYMENT"
        phase = state.phase(entry)
        if scenario == Scenario.UNDOCUMENTED_STATUS and phase >= Phase.PROCESSING:
            return UNDOCUMENTED
        if phase == Phase.PENDING:
            return "AWAITING_CONFIRMATION" if scenario == Scenario.ACTION_REQUIRED else "PENDING"
        if phase == Phase.PROCESSING:
            return "PARTIAL_PAYMENT" if scenario == Scenario.PARTIAL else "EXECUTING_ORDER"
        return {Scenario.FAILED: "FAILED", Scenario.PARTIAL: "EXPIRED"}.get(Scenario(scenario), "COMPLETED")

    def pay_order(request: Request, order: Order) -> dict[str, Any]:
        entry, status = order.entry, raw_status(order)
        amount = Decimal(entry.amount or "0")
        decimals = 2 if order.fiat else 18
        fulfillment: dict[str, Any] = {
            "amount": {
                "raw_amount": str(int((amount * 10**decimals).to_integral_value())),
                "ui_amount": amount,
                "ui_amount_display": entry.amount,
            },
            "asset": {"address": order.asset_address, "chain_id": order.chain_id, "decimals": decimals},
            "fiat": order.fiat,
            "receiving_address": entry.destination,
        }
        done = status == "COMPLETED"
        return {
            "id": order.id,
            "created_at": _iso(order.created_at),
            "updated_at": _iso(time.time()),
            "organization_id": f"org_{entry.key_id[-8:]}",
            "mode": "REFUND",
            "status": status,
            "fulfillment": fulfillment,
            "payment": {
                "receiving_address": entry.destination,
                "destination_tx_hash": f"0x{order.id.encode().hex()[:64]:0<64}" if done else None,
                "refunded_reason": None,
            },
            "metadata": order.metadata,
            "hosted_url": f"{str(request.base_url).rstrip('/')}/coinvoyage/pay/{order.id}",
        }

    def deposit_order(request: Request, payorder_id: str, key_id: str) -> dict[str, Any]:
        """Any unknown id: a paid DEPOSIT order of this organisation."""
        return {
            "id": payorder_id,
            "created_at": _iso(time.time() - 3600),
            "updated_at": _iso(time.time() - 3500),
            "organization_id": f"org_{key_id[-8:]}",
            "mode": "DEPOSIT",
            "status": "COMPLETED",
            "fulfillment": {
                "amount": {"raw_amount": "100000000", "ui_amount": Decimal(100), "ui_amount_display": "100"},
                "fiat": "USD",
            },
            "payment": None,
            "metadata": None,
            "hosted_url": f"{str(request.base_url).rstrip('/')}/coinvoyage/pay/{payorder_id}",
        }

    async def refund(request: Request) -> Response:
        key_id, refusal = await guard(request)
        if refusal is not None:
            return refusal
        parent_id = request.path_params["payorder_id"]
        if parent_id in orders:
            return _error(request, 422, "PayOrder not completed or already refunded")
        body = cv.json_loads(await request.body())
        if not isinstance(body, dict):
            return _error(request, 400, "Invalid request body format")
        receiving = body.get("receiving_address")
        if not isinstance(receiving, str) or not receiving:
            return _error(request, 400, "receiving address required")
        asset = _obj(body.get("asset"))
        chain_id = asset.get("chain_id")
        if not isinstance(chain_id, int) or isinstance(chain_id, bool):
            return _error(request, 400, "asset.chain_id required")
        amount_obj = _obj(body.get("amount"))
        fiat = _obj(amount_obj.get("fiat")) or None
        number = fiat.get("amount") if fiat else amount_obj.get("token_amount")
        is_number = isinstance(number, int | Decimal) and not isinstance(number, bool)
        amount = Decimal(number) if is_number and number is not None else None
        if amount is None or amount <= 0:
            return _error(request, 400, "amount.fiat.amount or amount.token_amount required")
        unit = str(fiat.get("unit")) if fiat else None
        metadata = _obj(body.get("metadata"))
        order_id = "po_" + secrets.token_hex(10)
        refund_key = str(metadata.get(cv.METADATA_KEY) or order_id)
        scenario = scenario_for(amount, parent_id)

        if scenario == Scenario.REJECTED:
            state.count_create_call(PROVIDER, key_id, refund_key)
            return _error(request, 400, "Insufficient balance")
        if scenario == Scenario.RATE_LIMITED and state.first_time(PROVIDER, key_id, refund_key, "429"):
            return _error(request, 429, "Rate limit exceeded", {"Retry-After": "1"})
        if scenario == Scenario.SERVER_ERROR and state.first_time(PROVIDER, key_id, refund_key, "500"):
            return _error(request, 500, "Internal server error")

        record = partial(
            state.record_create,
            PROVIDER,
            key_id,
            refund_key,
            provider_refund_id=order_id,
            scenario=scenario,
            amount=amount,
            destination=receiving,
            currency=unit,  # a token refund names no ticker in its body, so none is reported
        )

        def order_of(entry: LedgerEntry) -> Order:
            return Order(order_id, entry, parent_id, chain_id, asset.get("address"), unit, dict(metadata))

        def commit() -> Response:
            entry, created_now = record()
            if not created_now:
                # No idempotency at CoinVoyage: this call made a second REFUND order for the same refund.
                with state._lock:
                    entry.created += 1
            order = orders[order_id] = order_of(entry)
            return _json(pay_order(request, order))

        def draft() -> Response:
            return _json(pay_order(request, order_of(record(draft=True)[0])))

        late = await state.timing_fault(scenario, PROVIDER, key_id, refund_key, commit, draft)
        if late is not None:
            return late
        answer = commit()
        if scenario == Scenario.TIMEOUT_AFTER_COMMIT and state.first_time(PROVIDER, key_id, refund_key, "hang"):
            await state.hang()
        return answer

    async def get_order(request: Request) -> Response:
        key_id, refusal = await guard(request)
        if refusal is not None:
            return refusal
        order = orders.get(request.path_params["payorder_id"])
        if order is not None and live(order) and order.entry.key_id == key_id:
            return _json(pay_order(request, order))
        return _json(deposit_order(request, request.path_params["payorder_id"], key_id))

    async def list_orders(request: Request) -> Response:
        key_id, refusal = await guard(request)
        if refusal is not None:
            return refusal
        try:
            limit = int(request.query_params.get("limit", "20"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return _error(request, 400, "Invalid limit or offset query parameter")
        if not 1 <= limit <= 100 or offset < 0:
            return _error(request, 400, "Invalid limit or offset query parameter")
        mine = [o for o in orders.values() if live(o) and o.entry.key_id == key_id]
        mine.sort(key=lambda o: o.created_at, reverse=True)  # newest first
        page = [pay_order(request, o) for o in mine[offset : offset + limit]]
        return _json({"data": page, "pagination": {"limit": limit, "offset": offset, "total": len(mine)}})

    return [
        Route(f"{API_PREFIX}/pay-orders", list_orders, methods=["GET"]),
        Route(f"{API_PREFIX}/pay-orders/{{payorder_id}}", get_order, methods=["GET"]),
        Route(f"{API_PREFIX}/pay-orders/{{payorder_id}}/refund", refund, methods=["POST"]),
    ]
