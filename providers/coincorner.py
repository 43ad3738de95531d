"""CoinCorner Checkout API adapter (spec: shared/providers/coincorner.md). Pure: no I/O.

Wire format: every call is a `POST <base_url>/<Endpoint>` (base_url ends in `/api`) whose body carries the
three auth fields `APIKey` (the lower-cased key), `Signature`, `Nonce` followed by the endpoint's own fields.
We send it form-urlencoded, as the official plugins do; `json_body()` gives the equivalent JSON object.

Signature (spec §2, vectors README §4): `message = str(nonce) + lower(user_id) + lower(api_key)`,
`signature = hex(HMAC-SHA256(lower(api_secret), message))`. Only the nonce protects against replay; the
endpoint fields are not signed. The nonce is given to us by the worker (strictly increasing per API key,
in ms); we sign exactly the nonce we send.

Refunds: `RefundOrder` has no refund id and no documented answer body, so the refund is known by the
merchant's `OrderId` (provider_refund_id = OrderId) and its status is read with `CheckOrder`. One refund per
OrderId.

Statuses: ONE table, `STATUS_TABLE` (raw OrderStatus -> Reading, contract in `providers.base.Reading`), read by
`parse_status`, `parse_lookup` and the webhook alike:
- `-4`/`-5` REFUND (processing / completed);
- `2` Complete NO_REFUND: a paid order without a visible refund. A poll says PENDING "not visible yet";
- `0`/`1`/`-99` (payment still open) UNSURE: ask again later, an operator at the deadline;
- `-1`/`-2` and the unknown-order answer `N/A` CONTRADICTS -> NEEDS_ATTENTION (never REJECTED).

Proof of absence (`parse_lookup` returns None): only a CheckOrder answer `2` (Complete) for our OrderId. Since
CoinCorner allows one refund per OrderId (spec §9), a second RefundOrder after a wrong "absent" is refused
("already refunded", AMBIGUOUS) rather than paid, so the settle default is short: `settle_seconds` = 30 (the worker
applies it after an ambiguous send; an account may override it with the option `settle_seconds`).

Assumptions taken from the spec's "Unknown / assumptions" section (§9), as recommended there:
- no failure status is documented: a refund that stays `-4` or shows `2` past the worker's deadline becomes
  needs_attention (that is the worker's job; a poll maps `2` to PENDING);
- `RefundType` defaults to "1" (the official C# refund sample), overridable per account or per refund;
- error codes, nonce and rate-limit answers are undocumented: we classify by HTTP status and message text
  (see `classify_error`);
- nonce in milliseconds, strictly increasing per API key (NoncePolicy.INCREASING, NonceUnit.MS);
- one refund per OrderId (`exclusive_key`);
- the RefundOrder answer body is never required: a 2xx means "accepted" (PENDING), the body is kept raw -
  unless it is a JSON object in the error shape CheckOrder answers with (`Error`, or `OrderStatusText` "N/A",
  spec §1 / the OpenCart plugin): then it is a refusal, classified like a 400 with that message;
- webhooks are unsigned (spec §5): `verify_webhook` only checks the posted `APIKey` and returns a hint; the
  authoritative state always comes from a signed CheckOrder poll.

CheckOrder reports the ORDER status, never the refunded amount or address, so StatusResult.detail carries no
"amount"/"destination"/"currency" for CoinCorner: integrity checks on those cannot be done from the provider.

The refundable amount (`build_payment` / `parse_payment`) is the order's `InvoiceAmount` in `InvoiceCurrency`, read
with a signed GetOrder (spec §1, [S4]); refunds of one OrderId may add up to at most that (PaymentRule.WITHIN).
GetOrder of an order CoinCorner does not know answers the CheckOrder error shape (`Error`, `OrderStatusText` "N/A"):
before any send that is a refusal (REJECTED), not the NEEDS_ATTENTION a poll makes of it once a refund may exist.
JSON numbers are read as Decimal (ASP.NET writes a C# decimal as a number): money never passes through float.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypedDict
from urllib.parse import parse_qsl, quote_plus

from config.accounts import Account
from providers.addresses import check_address
from providers.base import (
    ErrorKind,
    FieldError,
    NoncePolicy,
    NonceUnit,
    PaymentReading,
    PaymentRule,
    ProviderError,
    RawStatus,
    Reading,
    RefundSpec,
    RefundStatus,
    Request,
    Response,
    StatusResult,
    check_amount,
    json_loads,
    json_or_none,
    parse_plain_decimal,
    plain_decimal,
    read_status,
)
from providers.readings import read_result

if TYPE_CHECKING:
    from providers.base import Adapter

NAME: Final = "coincorner"
FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"

# Endpoint names (last URL segment), also the vector kinds they belong to.
REFUND_ORDER: Final = "RefundOrder"
CHECK_ORDER: Final = "CheckOrder"
GET_ORDER: Final = "GetOrder"

DEFAULT_REFUND_TYPE: Final = "1"  # spec §9: the official C# refund sample posts "1"


# --- typed wire structs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RefundOrderParams:
    """RefundOrder's own fields (spec §1), in body order."""

    OrderId: str
    Amount: str  # plain decimal in the order's invoice currency
    Address: str  # BTC address
    RefundType: str

    def as_params(self) -> dict[str, str]:
        return {
            "OrderId": self.OrderId,
            "Amount": self.Amount,
            "Address": self.Address,
            "RefundType": self.RefundType,
        }


@dataclass(frozen=True)
class OrderParams:
    """CheckOrder / GetOrder fields."""

    OrderId: str

    def as_params(self) -> dict[str, str]:
        return {"OrderId": self.OrderId}


class CheckOrderAnswer(TypedDict, total=False):
    OrderId: str
    OrderStatus: int | str
    OrderStatusText: str
    Error: str  # with OrderStatusText "N/A": unknown / invalid order (OpenCart plugin)


class GetOrderAnswer(TypedDict, total=False):
    """GetOrder (spec §1, [S4]): the fields we read; the amounts arrive as JSON numbers (read as Decimal)."""

    OrderId: str
    PaymentAddress: str
    InvoiceAmount: Decimal | int | str
    InvoiceCurrency: str
    SettleAmount: Decimal | int | str
    SettleCurrency: str
    OrderStatusText: str  # with Error: unknown order, as CheckOrder answers it
    Error: str


class ErrorAnswer(TypedDict, total=False):
    Message: str  # ASP.NET Web API error shape
    MessageDetail: str


# --- signing (public: the sandbox verifies with these, the vector checks call them) ---------------


def signing_message(nonce: int, user_id: str, api_key: str) -> str:
    """The signed text: nonce, account id and key concatenated without separators."""
    return f"{int(nonce)}{user_id.lower()}{api_key.lower()}"


def sign(nonce: int, user_id: str, api_key: str, api_secret: str) -> str:
    """Lowercase hex HMAC-SHA256 keyed with the lower-cased secret."""
    message = signing_message(nonce, user_id, api_key).encode("utf-8")
    return hmac.new(api_secret.lower().encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_matches(given: str, nonce: int, user_id: str, api_key: str, api_secret: str) -> bool:
    """Constant-time check; case-insensitive because CoinCorner evidently accepts upper-case hex (spec §2)."""
    expected = sign(nonce, user_id, api_key, api_secret)
    return hmac.compare_digest(given.lower().encode("utf-8"), expected.encode("utf-8"))


def json_body(api_key: str, api_secret: str, user_id: str, nonce: int, params: Mapping[str, str]) -> dict[str, str]:
    """The body as an object in wire order: APIKey, Signature, Nonce, then `params` (strings, unchanged)."""
    auth = {
        "APIKey": api_key.lower(),
        "Signature": sign(nonce, user_id, api_key, api_secret),
        "Nonce": str(int(nonce)),
    }
    clash = set(auth) & set(params)
    if clash:
        raise ValueError(f"params must not contain auth fields {sorted(clash)}")
    return {**auth, **params}


def form_encode(fields: Mapping[str, str]) -> str:
    """PHP http_build_query: UTF-8; `A-Za-z0-9-_.` kept, space -> '+', every other byte -> %XX (upper-case).
    Python's quote_plus also keeps `~`; PHP does not, so it is encoded too (vectors README §3)."""
    return "&".join(f"{_form_quote(name)}={_form_quote(value)}" for name, value in fields.items())


def _form_quote(text: str) -> str:
    return quote_plus(text, safe="", encoding="utf-8").replace("~", "%7E")


def form_body(api_key: str, api_secret: str, user_id: str, nonce: int, params: Mapping[str, str]) -> str:
    return form_encode(json_body(api_key, api_secret, user_id, nonce, params))


def build_call(account: Account, endpoint: str, params: Mapping[str, str], nonce: int) -> Request:
    """A signed form POST to `<base_url>/<endpoint>`."""
    if nonce < 0:
        raise ValueError("nonce must not be negative")
    body = form_body(
        account.secret("api_key"),
        account.secret("api_secret"),
        str(account.require("user_id")),
        nonce,
        params,
    )
    return Request(
        method="POST",
        url=f"{account.base_url}/{endpoint}",
        headers={"Content-Type": FORM_CONTENT_TYPE, "Accept": "application/json"},
        body=body.encode("ascii"),  # form encoding leaves only ASCII
    )


# --- statuses -------------------------------------------------------------------------------------

#: The raw status we give CheckOrder's unknown-order answer (`OrderStatusText` "N/A" with `Error`, spec §1).
UNKNOWN_ORDER: Final = "N/A"

#: Every documented CheckOrder OrderStatus (spec §1 "Status read-back"), plus the unknown-order answer, as read
#: for a refund we may have sent. 0/1/-1/-2/-99 say the order is unpaid, unconfirmed, cancelled, expired or an open
#: invoice: CoinCorner cannot have accepted a refund on such an order, and an accepted refund cannot take the order
#: back there. Nobody knows what happened to the money (wrong OrderId, drift, a manual change at CoinCorner), so
#: they CONTRADICT our refund (NEEDS_ATTENTION: a person reconciles) and never say REJECTED, which would claim
#: nothing was paid. `1` (payment not final) is read the same way on purpose: a refund of ours cannot be in it.
STATUS_TABLE: Final[Mapping[str, RawStatus]] = MappingProxyType(
    {
        "-5": RawStatus(Reading.REFUND, RefundStatus.COMPLETED, "Refunded"),
        "-4": RawStatus(Reading.REFUND, RefundStatus.PROCESSING, "Pending Refund"),
        # Paid, no refund on it (yet): spec §3 "2 Complete => most likely not created".
        "2": RawStatus(Reading.NO_REFUND, text="Complete"),
        # The order's payment is still open: like Cryptomus's in-progress invoices, it neither proves
        # a refund absent (a request held until payment could still execute) nor contradicts one.
        "0": RawStatus(Reading.UNSURE, text="Awaiting Payment"),
        "1": RawStatus(Reading.UNSURE, text="Pending Confirmation"),
        "-1": RawStatus(Reading.CONTRADICTS, text="Cancelled"),
        "-2": RawStatus(Reading.CONTRADICTS, text="Expired"),
        "-99": RawStatus(Reading.UNSURE, text="Pending (Invoice Order)"),
        # The order is unknown to CoinCorner: no refund of ours can be on it, yet we may have sent one.
        UNKNOWN_ORDER: RawStatus(Reading.CONTRADICTS, text="N/A"),
    }
)
#: OrderStatus -> OrderStatusText (the sandbox answers with these)
STATUS_TEXT: Final[Mapping[str, str]] = MappingProxyType(
    {raw: entry.text for raw, entry in STATUS_TABLE.items() if raw != UNKNOWN_ORDER}
)


# --- errors ---------------------------------------------------------------------------------------

_MAX_MESSAGE = 200


def error_message(body: bytes) -> str:
    """The provider's `Message` (ASP.NET shape) or `Error`, else a short raw excerpt."""
    data = json_or_none(body)
    if isinstance(data, dict):
        for key in ("Message", "Error", "MessageDetail"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value[:_MAX_MESSAGE]
    return body[:_MAX_MESSAGE].decode("utf-8", "replace").strip()


def retry_after(resp: Response) -> float | None:
    value = resp.header("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP-date: let the worker's back-off decide


def answer_error(data: Any) -> bool:
    """True when a 2xx JSON answer is CoinCorner's error shape rather than a result: `OrderStatusText` "N/A"
    or an `Error` without an `OrderStatus` (spec §1: the OpenCart plugin reads CheckOrder that way)."""
    return isinstance(data, dict) and (
        data.get("OrderStatusText") == UNKNOWN_ORDER or ("Error" in data and "OrderStatus" not in data)
    )


def classify_answer_error(resp: Response, *, submit: bool) -> ProviderError:
    """A 2xx answer in the error shape (`answer_error`) is a refusal: classified like a 400 carrying the same
    message, so a nonce, signature or "already refunded" text keeps its meaning."""
    return _classify(resp, 400, submit=submit)


def classify_error(resp: Response, *, submit: bool) -> ProviderError:
    """Map a non-2xx answer onto an ErrorKind (no error catalogue is published: spec §4, §9).

    Order matters: the gateway 503 and 429 first; a message naming the nonce beats the status code (the cure
    is a fresh nonce, not new credentials); then 401/403 or a signature message -> AUTH; "already refunded"
    means a refund exists on our OrderId - one refund per OrderId makes it almost surely ours (a resend after
    a lost answer), so it is AMBIGUOUS (look it up) rather than REJECTED, that could hide a payout.
    """
    return _classify(resp, resp.status_code, submit=submit)


def _classify(resp: Response, status: int, *, submit: bool) -> ProviderError:
    """The rules of `classify_error`, applied as if the answer had HTTP `status`."""
    message = error_message(resp.body)
    text = message.lower()

    def err(kind: ErrorKind, why: str, after: float | None = None) -> ProviderError:
        detail = f"{why}: {message}" if message else why
        return ProviderError(kind, f"{NAME}: {detail}", retry_after=after, http_status=resp.status_code)

    if status == 503 and not resp.body.strip():
        return err(ErrorKind.RETRYABLE, "service unavailable")
    if status == 429:
        return err(ErrorKind.RATE_LIMITED, "rate limited", retry_after(resp))
    if "nonce" in text and "signature" not in text:
        return err(ErrorKind.NONCE, "nonce refused")
    if status in (401, 403) or "signature" in text:
        return err(ErrorKind.AUTH, "credentials refused")
    if 400 <= status < 500:
        if submit and "already refunded" in text:
            return err(ErrorKind.AMBIGUOUS, "a refund already exists on this order")
        return err(ErrorKind.REJECTED, "refused")
    # 5xx (and anything odd): a create may have run; a read is simply retried later.
    return err(ErrorKind.AMBIGUOUS if submit else ErrorKind.RETRYABLE, "server error")


# --- the adapter ----------------------------------------------------------------------------------

# Always fullmatch: `$` would also accept a trailing newline ("ord-1\n").
_CURRENCY = re.compile(r"[A-Z]{3}")
_REFUND_TYPE = re.compile(r"[0-9]{1,3}|[A-Za-z]{1,32}")  # enum value ("1") or member name ("BuyNew")
_ORDER_ID = re.compile(r"\S(?:.{0,98}\S)?")
_KNOWN_FIELDS: Final = frozenset({"order_id", "refund_type"})


def _refund_type(spec: RefundSpec, account: Account) -> str:
    value = spec.fields.get("refund_type", account.option("refund_type", DEFAULT_REFUND_TYPE))
    return str(value)


def _order_answer(resp: Response, spec: RefundSpec) -> tuple[str, CheckOrderAnswer]:
    """The raw OrderStatus of a 200 CheckOrder answer (UNKNOWN_ORDER for the unknown-order answer), or
    ProviderError."""
    data = json_or_none(resp.body)
    if not isinstance(data, dict):
        raise ProviderError(ErrorKind.RETRYABLE, f"{NAME}: CheckOrder answer is not a JSON object", http_status=200)
    answer: CheckOrderAnswer = data  # type: ignore[assignment]
    if answer_error(data):
        refusal = classify_answer_error(resp, submit=False)
        if refusal.kind is not ErrorKind.REJECTED:
            raise refusal  # a nonce or credentials refusal in the body: not an answer about the order
        return UNKNOWN_ORDER, answer
    order_id = data.get("OrderId")
    if order_id is not None and str(order_id) != _order_id(spec):
        raise ProviderError(ErrorKind.RETRYABLE, f"{NAME}: CheckOrder answered for another order", http_status=200)
    raw = data.get("OrderStatus")
    if isinstance(raw, bool) or not isinstance(raw, int | str) or str(raw).strip() == "":
        raise ProviderError(ErrorKind.RETRYABLE, f"{NAME}: CheckOrder answer has no OrderStatus", http_status=200)
    return str(raw).strip(), answer


def _order_id(spec: RefundSpec) -> str:
    return str(spec.fields.get("order_id", spec.provider_refund_id or ""))


def _describe(raw: str, entry: RawStatus, answer: Mapping[str, Any]) -> tuple[str, str]:
    """(OrderStatusText, the state in words for reasons)."""
    text = str(answer.get("OrderStatusText") or entry.text)
    if raw == UNKNOWN_ORDER:
        error = answer.get("Error")
        return text, f"unknown order ({error})" if error else "unknown order"
    return text, f"order status {raw} ({text})"


def _read(raw: str, answer: Mapping[str, Any], order_id: str, *, lookup: bool) -> StatusResult | None:
    """One CheckOrder answer read through STATUS_TABLE (poll and lookup differ only as `Reading` says)."""
    entry = read_status(STATUS_TABLE, NAME, raw)
    text, what = _describe(raw, entry, answer)
    return read_result(
        entry,
        raw,
        NAME,
        lookup=lookup,
        what=what,
        provider_refund_id=order_id,
        detail={"order_status_text": text} if text else {},
        http_status=200,
    )


def _polled(raw: str, answer: Mapping[str, Any], order_id: str) -> StatusResult:
    result = _read(raw, answer, order_id, lookup=False)
    assert result is not None  # a poll always says something: only a lookup reads NO_REFUND as None
    return result


class CoinCornerAdapter:
    name = NAME
    nonce_policy = NoncePolicy.INCREASING
    nonce_unit = NonceUnit.MS
    status_table: Mapping[str, RawStatus] = STATUS_TABLE
    # One refund per OrderId at CoinCorner: a resend after a wrong "absent" is refused, not paid twice.
    settle_seconds: float = 30.0
    required_fields: tuple[str, ...] = ("order_id",)

    def validate(self, spec: RefundSpec, account: Account) -> list[FieldError]:
        errors: list[FieldError] = []
        for unknown in sorted(set(spec.fields) - _KNOWN_FIELDS):
            errors.append(
                FieldError(f"fields.{unknown}", "unknown field for coincorner (known: order_id, refund_type)")
            )
        order_id = spec.fields.get("order_id")
        if order_id is None or order_id == "":
            errors.append(FieldError("fields.order_id", "is required (the CoinCorner OrderId to refund)"))
        elif not isinstance(order_id, str) or not _ORDER_ID.fullmatch(order_id):
            errors.append(FieldError("fields.order_id", "must be a string of 1 to 100 characters, no outer spaces"))
        if not _CURRENCY.fullmatch(spec.currency):
            errors.append(FieldError("currency", "must be a 3-letter upper-case currency code (e.g. GBP, EUR, BTC)"))
        else:
            places = 8 if spec.currency == "BTC" else 2
            errors += check_amount(spec.amount, max_places=places)
        problem = check_address(spec.destination, "bitcoin")
        if problem:
            errors.append(FieldError("destination", problem))
        refund_type = spec.fields.get("refund_type", account.option("refund_type", DEFAULT_REFUND_TYPE))
        if isinstance(refund_type, bool) or not _REFUND_TYPE.fullmatch(str(refund_type)):
            errors.append(FieldError("fields.refund_type", "must be an enum value like 1 or a member name"))
        user_id = account.option("user_id")
        if not isinstance(user_id, str | int) or isinstance(user_id, bool) or str(user_id) == "":
            errors.append(FieldError("account.user_id", "the account option user_id (CoinCorner UserId) is required"))
        return errors

    def exclusive_key(self, spec: RefundSpec) -> str | None:
        return f"order:{_order_id(spec)}"  # one refund per OrderId (spec §9)

    # -- the original payment: GetOrder reports InvoiceAmount / InvoiceCurrency (spec §3) --

    payment_rule: PaymentRule = PaymentRule.WITHIN
    reads_payment: bool = True

    def payment_key(self, spec: RefundSpec) -> str:
        return f"order:{_order_id(spec)}"

    def build_payment(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        return self.build_get_order(_order_id(spec), account, nonce)

    def parse_payment(self, spec: RefundSpec, account: Account, resp: Response) -> PaymentReading:
        """The order's InvoiceAmount / InvoiceCurrency. REJECTED when CoinCorner does not know the order."""
        if resp.status_code != 200:
            raise classify_error(resp, submit=False)
        order_id = _order_id(spec)
        data = json_loads(resp.body)  # numbers as Decimal
        if not isinstance(data, dict):
            raise ProviderError(ErrorKind.RETRYABLE, f"{NAME}: GetOrder answer is not a JSON object", http_status=200)
        answer: GetOrderAnswer = data  # type: ignore[assignment]
        missing: str | None = None
        if answer_error(data):
            refusal = classify_answer_error(resp, submit=False)
            if refusal.kind is not ErrorKind.REJECTED:
                raise refusal  # a nonce or credentials refusal in the body: not an answer about the order
            missing = str(answer.get("Error") or UNKNOWN_ORDER)
        elif answer.get("InvoiceAmount") is None:
            missing = "no InvoiceAmount"
        if missing is not None:
            raise ProviderError(ErrorKind.REJECTED, f"{NAME}: order {order_id} not found: {missing}", http_status=200)
        if answer.get("OrderId") is not None and str(answer["OrderId"]) != order_id:
            raise ProviderError(ErrorKind.RETRYABLE, f"{NAME}: GetOrder answered for another order", http_status=200)
        amount = _invoice_amount(answer.get("InvoiceAmount"))
        currency = answer.get("InvoiceCurrency")
        if amount is None or not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            # The order exists but its amount cannot be read: never guess a ceiling; ask again, then a person.
            shown = {k: answer.get(k) for k in ("InvoiceAmount", "InvoiceCurrency")}
            raise ProviderError(
                ErrorKind.UNSURE, f"{NAME}: order {order_id} has no readable invoice amount: {shown}", http_status=200
            )
        detail = {k: plain_decimal(v) if isinstance(v, Decimal) else v for k, v in data.items()}
        return PaymentReading(key=f"order:{order_id}", amount=amount, currency=currency, detail=detail)

    def refund_params(self, spec: RefundSpec, account: Account) -> RefundOrderParams:
        return RefundOrderParams(
            OrderId=_order_id(spec),
            Amount=plain_decimal(spec.amount),
            Address=spec.destination,
            RefundType=_refund_type(spec, account),
        )

    def build_submit(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        params = self.refund_params(spec, account)
        return build_call(account, REFUND_ORDER, params.as_params(), nonce)

    def parse_submit(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult:
        if not 200 <= resp.status_code < 300:
            raise classify_error(resp, submit=True)
        if answer_error(json_or_none(resp.body)):
            raise classify_answer_error(resp, submit=True)  # a 2xx that says "Error" accepted nothing
        # No documented answer body: keep an excerpt for the log, require nothing from it.
        raw_body = resp.body[:500].decode("utf-8", "replace")
        return StatusResult(
            status=RefundStatus.PENDING,
            raw_status="accepted",
            provider_refund_id=_order_id(spec),
            detail={"raw_body": raw_body} if raw_body else {},
        )

    def build_status(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        return build_call(account, CHECK_ORDER, OrderParams(_order_id(spec)).as_params(), nonce)

    def parse_status(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult:
        if resp.status_code != 200:
            raise classify_error(resp, submit=False)
        raw, answer = _order_answer(resp, spec)
        return _polled(raw, answer, _order_id(spec))

    def build_lookup(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        return self.build_status(spec, account, nonce)  # the refund is known only by its OrderId

    def parse_lookup(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult | None:
        """None only for `2` (Complete): CoinCorner's proof that no refund is on our OrderId."""
        if resp.status_code != 200:
            raise classify_error(resp, submit=False)
        raw, answer = _order_answer(resp, spec)
        return _read(raw, answer, _order_id(spec), lookup=True)

    def build_get_order(self, order_id: str, account: Account, nonce: int) -> Request:
        """Order details (invoice/settle amounts): the payment read (`build_payment`), and operators."""
        return build_call(account, GET_ORDER, OrderParams(order_id).as_params(), nonce)

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, account: Account) -> StatusResult:
        """Callbacks are unsigned (spec §5). Like the official plugins we only check that the posted
        `APIKey` equals our lower-cased key, and the result is a hint: the worker must poll CheckOrder for the
        truth (a callback only triggers a poll)."""
        fields = _webhook_fields(headers, body)
        posted = fields.get("APIKey")
        expected = account.secret("api_key").lower()
        if not isinstance(posted, str) or not hmac.compare_digest(posted.encode("utf-8"), expected.encode("utf-8")):
            raise ProviderError(ErrorKind.AUTH, f"{NAME}: callback APIKey does not match the account")
        order_id = fields.get("OrderId")
        order = str(order_id) if order_id is not None else None
        raw = fields.get("OrderStatus")
        if raw is None or isinstance(raw, bool) or str(raw).strip() == "":
            return StatusResult(status=RefundStatus.PENDING, raw_status="callback", provider_refund_id=order)
        return _polled(str(raw).strip(), fields, order or "")


def _invoice_amount(value: Any) -> Decimal | None:
    """A positive finite InvoiceAmount (JSON number or plain decimal string), else None."""
    if isinstance(value, str):
        try:
            value = parse_plain_decimal(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        return None
    amount = Decimal(value)
    return amount if amount.is_finite() and amount > 0 else None


def _webhook_fields(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """CoinCorner posts JSON (spec §5); accept a form body too, as ASP.NET clients may."""
    data = json_or_none(body)
    if isinstance(data, dict):
        return data
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if data is None and (FORM_CONTENT_TYPE in content_type.lower() or b"=" in body):
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return {}
    return {}


ADAPTER: Final = CoinCornerAdapter()
if TYPE_CHECKING:
    _conforms: Adapter = ADAPTER  # mypy checks the adapter against the protocol here


__all__ = [
    "ADAPTER",
    "STATUS_TABLE",
    "STATUS_TEXT",
    "UNKNOWN_ORDER",
    "CoinCornerAdapter",
    "answer_error",
    "build_call",
    "classify_answer_error",
    "classify_error",
    "form_body",
    "form_encode",
    "json_body",
    "sign",
    "signature_matches",
    "signing_message",
]
