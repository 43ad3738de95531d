"""CoinCorner emulator, mounted under /coincorner: POST /api/RefundOrder, /api/CheckOrder, /api/GetOrder.

Faithful to shared/providers/coincorner.md: form or JSON bodies (ASP.NET model binding, so field names are
case-insensitive: `nonce`, `orderid`, `apikey` bind like `Nonce`, `OrderId`, `APIKey`), auth in the body
(`APIKey`, `Signature`, `Nonce`), errors in the ASP.NET Web API shape `{"Message": "..."}`.

- The account is found by lower(APIKey) among the coincorner accounts; the HMAC signature is verified with the
  production helper (case-insensitive hex, as CoinCorner evidently accepts). Unknown key / wrong signature ->
  401. The nonce must be strictly increasing per key (`state.accept_increasing_nonce`, strict by default for
  coincorner), checked only after the signature so forged calls cannot burn nonces -> 400 "Invalid nonce ...".
- Ledger key id = the lower-cased API key (public); refund key = provider refund id = OrderId.
- One refund per OrderId: a second RefundOrder answers 400 "Order already refunded" (the call is counted).
- CheckOrder: an order without a refund is Complete (2); with one: Pending Refund (-4) until the lifecycle's
  final phase, then Refunded (-5). A drifted status (`status_override`) is reported as the raw OrderStatus.
- RefundOrder answers 200 with an empty body (the help page documents no response).
- Scenarios: RATE_LIMITED (429 + Retry-After, once), SERVER_ERROR (500, once), TIMEOUT_AFTER_COMMIT (creates,
  then hangs, once), SLOW, UNDOCUMENTED_STATUS (OrderStatus -7 after the first phase), REJECTED (400
  "Insufficient balance"); timing faults on the first RefundOrder (sandbox/core.py): DELAYED_EXECUTION (no
  answer, the refund exists `execute_delay_seconds` after receipt; a RefundOrder sent meanwhile refunds the
  order and the late one then finds it refunded), TRICKLED_ANSWER (the empty answer has nothing to trickle, so
  TRICKLE_FILLER whitespace trickles instead; the adapter reads no body), ANSWER_LOST (refunded, connection
  closed unanswered). FAILED, PARTIAL and ACTION_REQUIRED have no CoinCorner counterpart (no failure
  status, no human step is documented) and behave as NORMAL.
- Orders: every OrderId names a paid order (Complete) with an invoice of 1000.00 GBP, unless a marker
  `amt<units>[_<fraction>]` in it sets another amount (`amt25_50` -> 25.50). GetOrder reports it as
  `InvoiceAmount` / `SettleAmount` (JSON numbers keeping their scale, as JSON.NET writes a C# decimal), currency
  GBP. A RefundOrder above the invoice amount answers 400 "Refund amount exceeds the order amount" (the real
  text is undocumented).
- An OrderId containing `missing` names an order CoinCorner does not know: CheckOrder and GetOrder answer 200
  `{"OrderId": null, "OrderStatusText": "N/A", "Error": "Invalid OrderId"}` (the unknown-order answer the
  plugins handle, spec §1), as for an empty OrderId; RefundOrder answers 400 "Invalid OrderId".
- CheckOrder/GetOrder carry no refund amount or address (the real API has none), so amount drift cannot show
  here.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from config.accounts import Account
from providers.base import json_dumps
from providers.coincorner import NAME, STATUS_TEXT, signature_matches
from sandbox.core import LedgerEntry, Phase, SandboxState, Scenario, marked_amount, scenario_for

_NO_COUNTERPART = {Scenario.FAILED, Scenario.PARTIAL, Scenario.ACTION_REQUIRED}
UNDOCUMENTED_STATUS = -7
DEFAULT_INVOICE_AMOUNT = Decimal("1000.00")
INVOICE_CURRENCY = "GBP"
UNKNOWN_ORDER_MARKER = "missing"
# ASP.NET model binding matches field names case-insensitively; these are the names the handlers read.
_FIELD_NAMES = {
    name.lower(): name for name in ("APIKey", "Signature", "Nonce", "OrderId", "Amount", "Address", "RefundType")
}
UNKNOWN_ORDER_ANSWER = {"OrderId": None, "OrderStatusText": "N/A", "Error": "Invalid OrderId"}


def known_order(order_id: str) -> bool:
    return bool(order_id) and UNKNOWN_ORDER_MARKER not in order_id


def _message(text: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"Message": text}, status_code=status, headers=headers)


async def _fields(request: Request) -> dict[str, str] | None:
    """Form or JSON body as strings; None for an unsupported media type or a malformed body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    try:
        if content_type == "application/x-www-form-urlencoded":
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
        elif content_type in ("application/json", "text/json"):
            data = json.loads(raw or b"{}")
            if not isinstance(data, dict):
                return None
            pairs = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in data.items()]
        else:
            return None
    except (UnicodeDecodeError, ValueError):
        return None
    return {_FIELD_NAMES.get(name.lower(), name): value for name, value in pairs}


class _Call:
    """An authenticated call: the account, the key id and the body fields."""

    def __init__(self, account: Account, key_id: str, fields: dict[str, str]) -> None:
        self.account, self.key_id, self.fields = account, key_id, fields


def routes(state: SandboxState) -> list[BaseRoute]:
    async def authenticate(request: Request) -> _Call | Response:
        if state.config.outage.get(NAME):
            return Response(status_code=503)  # a gateway in front of the API: empty body
        fields = await _fields(request)
        if fields is None:
            return _message("The request entity's media type is not supported for this resource.", 415)
        api_key = fields.get("APIKey", "").lower()
        account = next((a for a in state.accounts_for(NAME) if a.secret("api_key").lower() == api_key), None)
        if not api_key or account is None:
            return _message("Authorization has been denied for this request.", 401)
        nonce_text = fields.get("Nonce", "")
        if not nonce_text.isdigit():
            return _message("Invalid nonce: must be an integer", 400)
        nonce = int(nonce_text)
        user_id = str(account.option("user_id", ""))
        if not signature_matches(fields.get("Signature", ""), nonce, user_id, api_key, account.secret("api_secret")):
            return _message("Authorization has been denied for this request. Invalid signature.", 401)
        wait = state.take_rate_token(api_key)
        if wait is not None:
            return _message("Too many requests", 429, {"Retry-After": str(max(1, math.ceil(wait)))})
        if not state.accept_increasing_nonce(NAME, api_key, nonce):
            return _message("Invalid nonce: the nonce must be greater than the last nonce used", 400)
        return _Call(account, api_key, fields)

    async def refund_order(request: Request) -> Response:
        call = await authenticate(request)
        if isinstance(call, Response):
            return call
        missing = [f for f in ("OrderId", "Amount", "Address", "RefundType") if not call.fields.get(f)]
        if missing:
            model_state = {f"model.{f}": [f"The {f} field is required."] for f in missing}
            return JSONResponse({"Message": "The request is invalid.", "ModelState": model_state}, status_code=400)
        order_id = call.fields["OrderId"]
        try:
            amount = Decimal(call.fields["Amount"])
        except InvalidOperation:
            amount = Decimal("NaN")
        if not amount.is_finite() or amount <= 0:
            return _message("Invalid amount", 400)
        if not known_order(order_id):
            return _message("Invalid OrderId", 400)
        if amount > marked_amount(DEFAULT_INVOICE_AMOUNT, order_id):
            return _message("Refund amount exceeds the order amount", 400)
        if state.find(NAME, call.key_id, order_id) is not None:
            state.count_create_call(NAME, call.key_id, order_id)
            return _message("Order already refunded", 400)

        scenario = scenario_for(amount, order_id)
        if scenario in _NO_COUNTERPART:
            scenario = Scenario.NORMAL
        if scenario is Scenario.REJECTED:
            return _message("Insufficient balance", 400)
        if scenario is Scenario.RATE_LIMITED and state.first_time(NAME, call.key_id, order_id, "429"):
            return _message("Too many requests", 429, {"Retry-After": "1"})
        if scenario is Scenario.SERVER_ERROR and state.first_time(NAME, call.key_id, order_id, "500"):
            return _message("An error has occurred.", 500)

        def commit() -> Response:
            _, created = state.record_create(
                NAME,
                call.key_id,
                order_id,
                provider_refund_id=order_id,
                scenario=scenario,
                amount=amount,
                destination=call.fields["Address"],
            )
            # Refunded meanwhile (a concurrent twin, or a create sent before a late execution): one per order.
            return Response(status_code=200) if created else _message("Order already refunded", 400)

        late = await state.timing_fault(
            scenario, NAME, call.key_id, order_id, commit, lambda: Response(status_code=200)
        )
        if late is not None:
            return late
        answer = commit()
        if (
            answer.status_code == 200
            and scenario is Scenario.TIMEOUT_AFTER_COMMIT
            and state.first_time(NAME, call.key_id, order_id, "hang")
        ):
            await state.hang()
        return answer

    def order_status(entry: LedgerEntry | None) -> int | str:
        if entry is None:
            return 2  # any order is paid (Complete) until a refund exists
        if entry.status_override is not None:
            raw = entry.status_override
            return int(raw) if raw.lstrip("-").isdigit() else raw
        phase = state.phase(entry)
        if entry.scenario == Scenario.UNDOCUMENTED_STATUS and phase is not Phase.PENDING:
            return UNDOCUMENTED_STATUS
        return -5 if phase is Phase.FINAL else -4

    async def check_order(request: Request) -> Response:
        call = await authenticate(request)
        if isinstance(call, Response):
            return call
        order_id = call.fields.get("OrderId", "")
        if not known_order(order_id):
            return JSONResponse(UNKNOWN_ORDER_ANSWER)
        status = order_status(state.find(NAME, call.key_id, order_id))
        text = STATUS_TEXT.get(str(status), "Unknown")
        return JSONResponse({"OrderId": order_id, "OrderStatus": status, "OrderStatusText": text})

    async def get_order(request: Request) -> Response:
        call = await authenticate(request)
        if isinstance(call, Response):
            return call
        order_id = call.fields.get("OrderId", "")
        if not known_order(order_id):
            return JSONResponse(UNKNOWN_ORDER_ANSWER)
        amount = marked_amount(DEFAULT_INVOICE_AMOUNT, order_id)
        body: dict[str, Any] = {
            "OrderId": order_id,
            "PaymentAddress": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",  # BIP-173 test vector: a valid checksum
            "InvoiceAmount": amount,
            "InvoiceCurrency": INVOICE_CURRENCY,
            "SettleAmount": amount,
            "SettleCurrency": INVOICE_CURRENCY,
        }
        # JSON.NET writes a C# decimal as a number keeping its scale (25.50): json_dumps writes Decimal so.
        return Response(json_dumps(body), media_type="application/json")

    return [
        Route("/api/RefundOrder", refund_order, methods=["POST"]),
        Route("/api/CheckOrder", check_order, methods=["POST"]),
        Route("/api/GetOrder", get_order, methods=["POST"]),
    ]
