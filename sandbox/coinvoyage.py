"""CoinVoyage emulator, mounted at /coinvoyage: `POST /v2/pay-orders/{id}/refund`,
`GET /v2/pay-orders/{id}`, `GET /v2/pay-orders` (list, `limit` <= 100 and `offset`, newest first).

- Auth (coinvoyage.md §1): every call carries `X-API-KEY`; the account is found by it among the coinvoyage
  accounts (missing or unknown -> 401). `GET /pay-orders/{id}` needs nothing more. The create and the list
  also need the signature header (the account's `signature_header` option, default `Authorization`):
  `APIKey=..,signature=..,timestamp=..`, whose APIKey must be the X-API-KEY; the signature is recomputed
  with the production signer (providers/coinvoyage.py) under that account's `signature_scheme`, over
  METHOD + the path relative to `/v2` as sent (query included) + timestamp. A timestamp outside
  `timestamp_window_ms` or a wrong signature answers 401 in CoinVoyage's error shape
  `{error: {path, statusCode, status, message}}`.
- The create takes openapi 2.2.0 `RefundRequest`: `{"intent": {"amount", "asset", "receiving_address"},
  "metadata"}`; a body without `intent` (the old flat form) answers 400 "intent is required".
- One refund per pay-order: a create for a pay-order that already has a REFUND order (not FAILED, EXPIRED
  or REFUNDED) answers 422 "PayOrder not completed or already refunded", checked when the create
  arrives (a DELAYED_EXECUTION create still pending then is not seen, see below).
- Pay-orders report real amount shapes: `fulfillment.amount` = `{raw_amount, ui_amount, ui_amount_display,
  value_usd}` in token units of `fulfillment.asset` (`id, name, ticker, decimals, address, chain_id`):
  a native Solana refund pays SOL (9 decimals, 150 USD), another chain's native coin ETH (18, 3000 USD), a
  token address USDC (6, 1 USD). A fiat intent is priced once: the token amount is the fiat value / price
  (rounded down to the token's decimals) and `value_usd` the requested fiat value; a token intent reports
  that token amount and its USD value in cents. The list's total is `pagination.total_count`.
  The same header may be sent twice within a second (two polls): CoinVoyage documents no replay rule,
  so none is enforced.
- Any pay-order id that is not one of ours is a paid DEPOSIT order (made up on the fly).
- No idempotency key: every accepted create makes a NEW REFUND pay-order. The ledger key is
  `metadata.refundq_refund_id`; a second create for the same key (on another pay-order, or inside a
  DELAYED_EXECUTION window) increments `created`, so a double create shows as created >= 2.
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
from decimal import ROUND_DOWN, Decimal
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


# (ticker, name, decimals, USD price) of the refunded asset: native on Solana, native elsewhere, a token.
_SOL = ("SOL", "Solana", 9, Decimal(150))
_ETH = ("ETH", "Ether", 18, Decimal(3000))
_USDC = ("USDC", "USD Coin", 6, Decimal(1))
_SOLANA_CHAIN_ID = 30000000000001
_USD_PER_UNIT = {"USD": Decimal(1), "EUR": Decimal("1.08"), "GBP": Decimal("1.27")}
_FINAL_FAILED = {"FAILED", "EXPIRED", "REFUNDED"}
CENT = Decimal("0.01")


def asset_of(chain_id: int, address: str | None) -> tuple[str, str, int, Decimal]:
    if address:
        return _USDC
    return _SOL if chain_id == _SOLANA_CHAIN_ID else _ETH


def amount_shape(order: Order, value: Decimal) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fulfillment.amount, fulfillment.asset) in token units, from the ledger amount `value` (the fiat
    value of a fiat intent, the token amount of a token intent)."""
    ticker, name, decimals, price = asset_of(order.chain_id, order.asset_address)
    unit = Decimal(1).scaleb(-decimals)
    if order.fiat:
        usd = (value * _USD_PER_UNIT.get(order.fiat, Decimal(1))).quantize(CENT)
        tokens = (usd / price).quantize(unit, rounding=ROUND_DOWN)
    else:
        tokens = value.quantize(unit, rounding=ROUND_DOWN)
        usd = (tokens * price).quantize(CENT)
    raw = int(tokens.scaleb(decimals))
    amount = {
        "raw_amount": str(raw),
        "ui_amount": tokens,
        "ui_amount_display": format(tokens.normalize(), "f"),
        "value_usd": usd,
    }
    asset = {
        "id": f"{order.chain_id}:{order.asset_address or 'native'}",
        "name": name,
        "ticker": ticker,
        "decimals": decimals,
        "address": order.asset_address,
        "chain_id": order.chain_id,
    }
    return amount, asset


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

    def authenticate(request: Request, signed: bool) -> Account | Response:
        api_key = request.headers.get(cv.API_KEY_HEADER, "")
        if not api_key:
            return _error(request, 401, f"Missing {cv.API_KEY_HEADER} header")
        account = next(
            (a for a in state.accounts_for(PROVIDER) if hmac.compare_digest(a.secret("api_key"), api_key)),
            None,
        )
        if account is None:
            return _error(request, 401, "Invalid API key")
        if not signed:
            return account
        header = str(account.option("signature_header", cv.DEFAULT_SIGNATURE_HEADER))
        fields = cv.parse_authorization(request.headers.get(header, ""))
        key_in_header, signature, ts = fields.get("APIKey"), fields.get("signature"), fields.get("timestamp")
        if not key_in_header or not signature or not ts or not ts.isdigit():
            return _error(request, 401, f"Missing or malformed {header} header")
        if not hmac.compare_digest(key_in_header, api_key):
            return _error(request, 401, f"The {header} APIKey is not the {cv.API_KEY_HEADER}")
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

    async def guard(request: Request, signed: bool = True) -> tuple[str, Response | None]:
        """(api key, refusal): outage, authentication and the rate limit, in that order. `signed`: the
        call needs the signature header besides X-API-KEY (the create and the list)."""
        if state.config.outage.get(PROVIDER):
            return "", Response(b"", 503)
        account = authenticate(request, signed)
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
        amount, asset = amount_shape(order, Decimal(entry.amount or "0"))
        fulfillment: dict[str, Any] = {"amount": amount, "asset": asset, "receiving_address": entry.destination}
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
                "amount": {
                    "raw_amount": "100000000",
                    "ui_amount": Decimal(100),
                    "ui_amount_display": "100",
                    "value_usd": Decimal(100),
                },
                "asset": {"id": "usdc", "name": "USD Coin", "ticker": "USDC", "decimals": 6},
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
        body = cv.json_loads(await request.body())
        if not isinstance(body, dict):
            return _error(request, 400, "Invalid request body format")
        if not isinstance(body.get("intent"), dict):
            return _error(request, 400, "intent is required")
        intent = body["intent"]
        receiving = intent.get("receiving_address")
        if not isinstance(receiving, str) or not receiving:
            return _error(request, 400, "intent.receiving_address is required")
        asset = _obj(intent.get("asset"))
        chain_id = asset.get("chain_id")
        if not isinstance(chain_id, int) or isinstance(chain_id, bool):
            return _error(request, 400, "intent.asset.chain_id is required")
        amount_obj = _obj(intent.get("amount"))
        fiat = _obj(amount_obj.get("fiat")) or None
        number = fiat.get("amount") if fiat else amount_obj.get("token_amount")
        is_number = isinstance(number, int | Decimal) and not isinstance(number, bool)
        amount = Decimal(number) if is_number and number is not None else None
        if amount is None or amount <= 0:
            return _error(request, 400, "intent.amount.fiat.amount or intent.amount.token_amount is required")
        if parent_id in orders or any(
            o.parent_id == parent_id and live(o) and raw_status(o) not in _FINAL_FAILED for o in orders.values()
        ):
            return _error(request, 422, "PayOrder not completed or already refunded")
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
        key_id, refusal = await guard(request, signed=False)
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
        return _json({"data": page, "pagination": {"limit": limit, "offset": offset, "total_count": len(mine)}})

    return [
        Route(f"{API_PREFIX}/pay-orders", list_orders, methods=["GET"]),
        Route(f"{API_PREFIX}/pay-orders/{{payorder_id}}", get_order, methods=["GET"]),
        Route(f"{API_PREFIX}/pay-orders/{{payorder_id}}/refund", refund, methods=["POST"]),
    ]
