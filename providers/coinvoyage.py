"""CoinVoyage adapter: a refund is a REFUND PayOrder created with `POST /pay-orders/{id}/refund`.

Pure: builds `Request`s and parses `Response`s, no I/O. Wire format: shared/providers/coinvoyage.md.

Headers (coinvoyage.md §1): `X-API-KEY: <api_key>` on every call. Writes (the refund create) and the list
(`GET /pay-orders`, privileged) also carry the signature header `Authorization: APIKey=<key>,signature=<sig>,
timestamp=<s>`; a single pay-order read (`GET /pay-orders/{id}`) is authenticated by `X-API-KEY` alone (openapi
2.2.0 read security), so it is not signed. The signature header's name is the account option
`signature_header` (default `Authorization`, spec §9: openapi 2.2.0 names the parameter
`Authorization-Signature`, which looks like a generator artefact; the prose docs and the SDK say `Authorization`).

Signing (coinvoyage.md §2, vectors README §6): the timestamp is Unix **seconds** (the worker's nonce,
`NoncePolicy.TIMESTAMP` / `NonceUnit.S`). The account option `signature_scheme` picks the recipe:
- `hmac_sha256_method_path_timestamp` (default, current docs): hex HMAC-SHA256(api_secret,
  METHOD + PATH + timestamp); the body is not signed;
- `sha512_key_secret_timestamp_legacy` (older docs): hex SHA-512(api_key + api_secret + timestamp).
Any other value is a configuration error.

Assumptions taken from the spec's "Unknown / assumptions" section (§9) and the lead's decisions:
- Which recipe the live v2 API expects is unconfirmed: both are implemented, chosen per account.
- PATH is the path relative to the base URL (no `/v2`), exactly as sent: percent-encoded, and with the
  query string when there is one (the `list_payorders` vector signs `/pay-orders?limit=...`).
- The refund path is inferred (`/pay-orders/{payorder_id}/refund`); it is the account option `refund_path`.
- No idempotency key exists: each create makes a new REFUND PayOrder. refundq's refund id travels in
  `metadata.refundq_refund_id`, and the lookup lists pay-orders (`GET /pay-orders?limit=100`, the
  documented maximum page) and matches on it, paging with `offset` (LookupNextPage) until it finds the
  order, reaches the end of the list, or reaches orders older than the refund (minus 10 minutes of clock
  skew). The end of the list: a short page, or `offset + len(data) >= total_count` (the list's total,
  read from `pagination.total_count` or a top-level `total_count`); a `total_count` saying more orders
  remain beats a short page (the next page is asked for, never "absent" on a contradiction).
  Assumption: the list is newest first. "Absent" (which allows a resend) is never said on a guess.
  `limit`/`offset` are the only documented list parameters, so
  no server-side filter is sent; REFUND orders are picked client-side.
- The request body is openapi 2.2.0 `RefundRequest` (spec §1, corrected):
  `{"intent": {"amount": {"fiat": {"amount", "unit"}} | {"token_amount"}, "asset": {"address", "chain_id"},
  "receiving_address"}, "metadata": {"refundq_refund_id": <refund id>}}`. Amounts are JSON numbers written
  from the Decimal text, never through float.
- A second refund of a pay-order is answered 422 "PayOrder not completed or already refunded". The answer
  cannot tell whether the existing refund is ours (an earlier send of this refund whose answer was lost, or
  that the lookup had not seen yet) or someone else's, or whether the pay-order was never completed. So a
  422 on a create is AMBIGUOUS, like CoinCorner's "already refunded": the worker looks the refund up by
  `metadata.refundq_refund_id` before anything else and tracks the order when it is ours. When the lookup
  proves it absent, a resend gets the same 422 and the refund reaches `max_attempts` / its deadline and
  goes to an operator - it is never marked rejected while a refund order of ours might exist. A 422 on a
  read is REJECTED like any other 4xx.
- Error codes are not catalogued: 401/403 -> AUTH, 429 -> RATE_LIMITED, 422 on a create -> AMBIGUOUS (above),
  503 with an empty body -> RETRYABLE, other 5xx -> AMBIGUOUS on a create (RETRYABLE on reads), other 4xx ->
  REJECTED. Both error
  shapes seen in the docs are read: `{error: {path, statusCode, status, message}}` (SDK) and
  `{error, message, code}` (openapi.json).
- A REFUND order is a payment the merchant makes: `AWAITING_PAYMENT` is ACTION_REQUIRED with the
  order's `hosted_url` in `detail["action_url"]`. `PARTIAL_PAYMENT` stays PROCESSING until the payment
  deadline, when the order turns `EXPIRED` (FAILED).
- Webhooks: `CoinVoyage-Webhook-Signature` = base64 HMAC-SHA256(webhook_secret, raw body), compared in
  constant time; the payload's `status` is mapped when present, else the event type when it names one.

Amounts (spec §6): a pay-order reports `fulfillment.amount` = `{raw_amount, ui_amount, ui_amount_display,
value_usd}` in **token units** of `fulfillment.asset` (`id, name, ticker, decimals`, ...). The token amount is
`raw_amount` / 10**`decimals` (exact, as §6 recommends; `ui_amount_display` only when those are missing). What
the worker's integrity check compares (`detail["amount"]`/`["currency"]`) is only ever in the refund's own unit:
- a token refund (`amount_kind` "token"): the token amount, and the asset's ticker as the currency;
- a fiat refund in USD: `value_usd`, rounded to cents (a fiat refund has 2 places), currency "USD".
  Assumption (the spec lists `value_usd` without saying whether it is the order's quote or a live valuation):
  a fiat-intent REFUND order is priced once, when it is created, so its `value_usd` is the requested amount;
- a fiat refund in another currency: nothing is comparable, so no amount or currency is reported (the
  destination still is).
The token amount, ticker and `value_usd` are always in `detail` (`token_amount`, `token`, `value_usd`) for the
record. Comparing `ui_amount_display` with a fiat request (as before) would flag every fiat refund as drift.

Statuses: a REFUND pay-order is a refund record, so `STATUS_TABLE` holds REFUND entries only (one per
documented PayOrder status, spec §1 "PayOrder statuses"); poll, lookup, submit and webhooks all read it.

Proof of absence (`parse_lookup` returns None): only a complete scan - no REFUND pay-order carrying our refund id
on a short page (the list's end) or on a page that reaches orders older than our refund (minus the clock skew).
More than one REFUND pay-order with our id is a double create: the first is returned with the others' ids in
`StatusResult.others`. CoinVoyage has no idempotency key, so a resend after a wrong "absent" pays twice: the
settle default is long, `settle_seconds` = 300 (the worker applies it after an ambiguous send; an account may
override it with the option `settle_seconds`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypedDict
from urllib.parse import quote

from config.accounts import Account, AccountConfigError
from providers.addresses import check_address
from providers.base import (
    ErrorKind,
    FieldError,
    LookupNextPage,
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
    json_dumps,
    json_loads,
    read_status,
)
from providers.readings import refund_status

if TYPE_CHECKING:
    from providers.base import Adapter

NAME = "coinvoyage"

SCHEME_HMAC = "hmac_sha256_method_path_timestamp"
SCHEME_LEGACY = "sha512_key_secret_timestamp_legacy"
SCHEMES = (SCHEME_HMAC, SCHEME_LEGACY)

DEFAULT_REFUND_PATH = "/pay-orders/{payorder_id}/refund"
LOOKUP_PAGE_SIZE = 100  # the documented maximum page size
LOOKUP_PATH = f"/pay-orders?limit={LOOKUP_PAGE_SIZE}"
# A pay-order older than our refund by more than this cannot be ours, even with skewed clocks.
LOOKUP_CLOCK_SKEW = timedelta(minutes=10)
METADATA_KEY = "refundq_refund_id"
WEBHOOK_HEADER = "CoinVoyage-Webhook-Signature"
API_KEY_HEADER = "X-API-KEY"
DEFAULT_SIGNATURE_HEADER = "Authorization"
MAX_DECIMALS = 36  # a token's `decimals` beyond this is not believed

FIAT_PLACES = 2
TOKEN_PLACES = 18
_MAX_SECONDS = 10**11  # a Unix time in seconds stays below this until the year 5138; ms are far above

# --- signing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    timestamp: str
    signed_text: str  # METHOD+PATH+timestamp (HMAC) or key+secret+timestamp (legacy): diagnostics only
    signature: str
    header: str


def seconds_from_ms(now_ms: int) -> int:
    """The documented `Math.floor(Date.now() / 1000)`."""
    return now_ms // 1000


def sign_request(
    scheme: str, api_key: str, api_secret: str, timestamp: int, method: str = "", path: str = ""
) -> Signed:
    """The Authorization value for one request. `timestamp` is Unix seconds; `path` is relative to the
    base URL, exactly as sent (query included). The legacy scheme ignores method and path."""
    ts = str(timestamp)
    if scheme == SCHEME_HMAC:
        if not method or not path:
            raise ValueError(f"{scheme}: method and path are signed and must not be empty")
        text = method + path + ts
        signature = hmac.new(api_secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    elif scheme == SCHEME_LEGACY:
        text = api_key + api_secret + ts
        signature = hashlib.sha512(text.encode()).hexdigest()
    else:
        raise ValueError(f"unknown CoinVoyage signature scheme {scheme!r} (expected one of {SCHEMES})")
    return Signed(ts, text, signature, f"APIKey={api_key},signature={signature},timestamp={ts}")


def parse_authorization(value: str) -> dict[str, str]:
    """`APIKey=..,signature=..,timestamp=..` -> its fields (the sandbox verifies with them)."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        name, sep, val = part.strip().partition("=")
        if sep:
            fields[name] = val
    return fields


def webhook_signature(webhook_secret: str, raw_body: bytes) -> str:
    digest = hmac.new(webhook_secret.encode(), raw_body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_webhook_signature(webhook_secret: str, raw_body: bytes, signature: str) -> bool:
    """Over the raw bytes as received, never re-serialised JSON; constant-time compare."""
    expected = webhook_signature(webhook_secret, raw_body).encode("ascii")
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))


# --- JSON with exact decimals -------------------------------------------------------------------


# --- wire types ---------------------------------------------------------------------------------


class FiatAmount(TypedDict):
    amount: Decimal
    unit: str


class RefundAmount(TypedDict, total=False):
    fiat: FiatAmount
    token_amount: Decimal


class Asset(TypedDict):
    address: str | None  # None: the chain's native coin
    chain_id: int


class RefundIntent(TypedDict):
    amount: RefundAmount
    asset: Asset
    receiving_address: str


class RefundBody(TypedDict):
    """openapi 2.2.0 `RefundRequest`: `intent` required, `metadata` free JSON beside it."""

    intent: RefundIntent
    metadata: dict[str, str]


class PayOrder(TypedDict, total=False):
    """The fields of a PayOrder this adapter reads (the API sends many more)."""

    id: str
    mode: str  # DEPOSIT | SALE | REFUND
    status: str
    hosted_url: str
    metadata: dict[str, Any] | None
    fulfillment: dict[str, Any]
    payment: dict[str, Any] | None


# --- statuses and errors ------------------------------------------------------------------------


def _refund(status: RefundStatus, text: str) -> RawStatus:
    return RawStatus(Reading.REFUND, status, text)


#: Every documented PayOrder status (spec §1 "PayOrder statuses") of a REFUND pay-order: all are refund records.
STATUS_TABLE: Final[Mapping[str, RawStatus]] = MappingProxyType(
    {
        "PENDING": _refund(RefundStatus.PENDING, "created, not ready"),
        # A REFUND order is a payment the merchant makes (spec §1 "Refund flow caveat"): someone must fund it.
        "AWAITING_PAYMENT": _refund(RefundStatus.ACTION_REQUIRED, "ready, waiting for the merchant's funds"),
        "AWAITING_CONFIRMATION": _refund(RefundStatus.PROCESSING, "payment tx seen, confirming"),
        "OPTIMISTIC_CONFIRMED": _refund(RefundStatus.PROCESSING, "optimistically confirmed"),
        "EXECUTING_ORDER": _refund(RefundStatus.PROCESSING, "routing / settling"),
        "PARTIAL_PAYMENT": _refund(RefundStatus.PROCESSING, "paid less than required"),  # until it EXPIRES
        "COMPLETED": _refund(RefundStatus.COMPLETED, "refund delivered"),
        "FAILED": _refund(RefundStatus.FAILED, "failed"),
        "EXPIRED": _refund(RefundStatus.FAILED, "not funded in time"),
        "REFUNDED": _refund(RefundStatus.FAILED, "funds bounced back to the payer"),
    }
)

STATUS_REASONS: dict[str, str] = {
    "AWAITING_PAYMENT": "the merchant must fund the refund pay-order (open action_url)",
    "PARTIAL_PAYMENT": "the refund pay-order is partly funded; it expires at its payment deadline",
    "FAILED": "CoinVoyage reported the refund pay-order FAILED",
    "EXPIRED": "the refund pay-order EXPIRED: it was not funded before its deadline",
    "REFUNDED": "the refund pay-order was REFUNDED: its funds bounced back to the payer",
}

# Webhook event types without a `status` member, and the raw status each one implies.
EVENT_STATUS: dict[str, str] = {
    "payorder_created": "PENDING",
    "payorder_confirming": "AWAITING_CONFIRMATION",
    "payorder_executing": "EXECUTING_ORDER",
    "payorder_completed": "COMPLETED",
    "payorder_refunded": "REFUNDED",
}


def map_status(raw: str) -> RefundStatus:
    """A REFUND pay-order's raw status through STATUS_TABLE (UnmappedStatusError when undocumented)."""
    return refund_status(read_status(STATUS_TABLE, NAME, raw), NAME, raw)


def _retry_after(resp: Response) -> float | None:
    value = resp.header("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: let the worker's back-off decide
    return seconds if seconds is not None and seconds >= 0 else None


def _error_message(data: Any) -> tuple[str | None, str]:
    """(code, message) from either documented error shape; the provider's text, never our secrets."""
    if not isinstance(data, dict):
        return None, "no error body"
    error = data.get("error")
    if isinstance(error, dict):
        return _text(error.get("status")), _text(error.get("message")) or "no message"
    return _text(error), _text(data.get("message")) or "no message"


def _text(value: Any) -> str | None:
    return str(value)[:300] if value is not None and value != "" else None


def classify_error(resp: Response, *, submit: bool) -> ProviderError:
    """The error table. `submit`: a 5xx may have executed the create, so it is AMBIGUOUS there."""
    status = resp.status_code
    code, message = _error_message(json_loads(resp.body))
    message = f"CoinVoyage: {message}"
    if status in (401, 403):
        kind = ErrorKind.AUTH
    elif status == 429:
        kind = ErrorKind.RATE_LIMITED
    elif status == 422 and submit:
        # "PayOrder not completed or already refunded": possibly by an earlier send of ours -> look it up.
        kind = ErrorKind.AMBIGUOUS
    elif status == 503 and not resp.body.strip():
        kind = ErrorKind.RETRYABLE  # a gateway refused it before the API saw it
    elif 400 <= status < 500:
        kind = ErrorKind.REJECTED
    else:
        kind = ErrorKind.AMBIGUOUS if submit else ErrorKind.RETRYABLE
    retry = _retry_after(resp) if kind == ErrorKind.RATE_LIMITED else None
    return ProviderError(kind, message, code=code, retry_after=retry, http_status=status)


# --- the adapter --------------------------------------------------------------------------------

_FIELDS = ("payorder_id", "chain_id", "asset_address", "amount_kind")
_CURRENCY = re.compile(r"[A-Z]{3}")  # fullmatch: `$` takes a trailing newline
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token


def _scheme(account: Account) -> str:
    scheme = account.option("signature_scheme", SCHEME_HMAC)
    if scheme not in SCHEMES:
        raise AccountConfigError(f"account {account.name!r}: unknown signature_scheme {scheme!r}")
    return str(scheme)


def _signature_header(account: Account) -> str:
    return str(account.option("signature_header", DEFAULT_SIGNATURE_HEADER))


def _refund_path(account: Account) -> str:
    return str(account.option("refund_path", DEFAULT_REFUND_PATH))


def _segment(value: str) -> str:
    """A path segment, percent-encoded; the signed path is the encoded one, as sent."""
    return quote(value, safe="")


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool | float):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def token_amount(amount: Mapping[str, Any], asset: Mapping[str, Any]) -> Decimal | None:
    """The amount in token units: `raw_amount` / 10**`decimals` (exact), else `ui_amount_display`/`ui_amount`."""
    raw, decimals = amount.get("raw_amount"), asset.get("decimals")
    if (
        isinstance(raw, str)
        and raw.isascii()
        and raw.isdigit()
        and isinstance(decimals, int)
        and not isinstance(decimals, bool)
        and 0 <= decimals <= MAX_DECIMALS
    ):
        return Decimal(raw).scaleb(-decimals)
    display = amount.get("ui_amount_display")
    return _decimal(display if display not in (None, "") else amount.get("ui_amount"))


def _reported(order: PayOrder, spec: RefundSpec | None = None) -> dict[str, Any]:
    """Amount and currency in the refund's own unit (see the module docstring), destination, the token
    amount as reported, and links, for integrity checks. Without a spec (no requested unit known), no
    amount or currency is reported."""
    detail: dict[str, Any] = {}
    fulfillment = order.get("fulfillment")
    fulfillment = fulfillment if isinstance(fulfillment, dict) else {}
    payment = order.get("payment")
    payment = payment if isinstance(payment, dict) else {}
    amount = fulfillment.get("amount")
    amount = amount if isinstance(amount, dict) else {}
    asset = fulfillment.get("asset")
    asset = asset if isinstance(asset, dict) else {}
    tokens = token_amount(amount, asset)
    ticker = asset.get("ticker") if isinstance(asset.get("ticker"), str) and asset.get("ticker") else None
    value_usd = _decimal(amount.get("value_usd"))
    if tokens is not None:
        detail["token_amount"] = format(tokens, "f")
    if ticker:
        detail["token"] = ticker
    if value_usd is not None:
        detail["value_usd"] = format(value_usd, "f")
    if spec is not None:
        if spec.fields.get("amount_kind", "fiat") == "token":
            if tokens is not None:
                detail["amount"] = format(tokens, "f")
            if ticker:
                detail["currency"] = ticker
        elif spec.currency.upper() == "USD" and value_usd is not None:
            cents = value_usd.quantize(Decimal(1).scaleb(-FIAT_PLACES), rounding=ROUND_HALF_EVEN)
            detail["amount"] = format(cents, "f")
            detail["currency"] = "USD"
    destination = fulfillment.get("receiving_address") or payment.get("receiving_address")
    if destination:
        detail["destination"] = destination
    for key in ("destination_tx_hash", "refund_tx_hash", "refunded_reason"):
        if payment.get(key):
            detail[key] = payment[key]
    if order.get("hosted_url"):
        detail["hosted_url"] = order["hosted_url"]
    return detail


def to_status(order: PayOrder, spec: RefundSpec | None = None) -> StatusResult:
    """A REFUND PayOrder -> StatusResult (raises UnmappedStatusError on an undocumented status). `spec`:
    the refund it answers, whose unit the reported amount is given in."""
    raw = str(order.get("status"))
    status = map_status(raw)
    detail = _reported(order, spec)
    reason = STATUS_REASONS.get(raw)
    if status == RefundStatus.ACTION_REQUIRED and "hosted_url" in detail:
        detail["action_url"] = detail["hosted_url"]
    if status == RefundStatus.FAILED and detail.get("refunded_reason"):
        reason = f"{reason}: {detail['refunded_reason']}"
    return StatusResult(status, raw, provider_refund_id=str(order["id"]), reason=reason, detail=detail)


def _is_pay_order(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("id"), str) and isinstance(data.get("status"), str)


class CoinVoyageAdapter:
    name = NAME
    nonce_policy = NoncePolicy.TIMESTAMP
    nonce_unit = NonceUnit.S
    status_table: Mapping[str, RawStatus] = STATUS_TABLE
    # No idempotency key at CoinVoyage: a resend after a wrong "absent" pays twice, so believe absence late.
    settle_seconds: float = 300.0
    required_fields: tuple[str, ...] = ("payorder_id", "chain_id")

    # --- validation ---

    def validate(self, spec: RefundSpec, account: Account) -> list[FieldError]:
        errors: list[FieldError] = []
        scheme = account.option("signature_scheme", SCHEME_HMAC)
        if scheme not in SCHEMES:
            errors.append(FieldError("account.signature_scheme", f"must be one of {', '.join(SCHEMES)}"))
        path = _refund_path(account)
        if not path.startswith("/") or "{payorder_id}" not in path:
            errors.append(FieldError("account.refund_path", "must start with / and contain {payorder_id}"))
        if not _HEADER_NAME.fullmatch(_signature_header(account)):
            errors.append(FieldError("account.signature_header", "must be an HTTP header name"))
        errors += [FieldError(k, "unknown field for coinvoyage") for k in spec.fields if k not in _FIELDS]
        for name in self.required_fields:
            if spec.fields.get(name) in (None, ""):
                errors.append(FieldError(name, "is required"))
        payorder_id = spec.fields.get("payorder_id")
        if payorder_id not in (None, "") and (
            not isinstance(payorder_id, str) or any(c.isspace() or not c.isprintable() for c in payorder_id)
        ):
            errors.append(FieldError("payorder_id", "must be a string without whitespace"))
        chain_id = spec.fields.get("chain_id")
        if chain_id is not None and (isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0):
            errors.append(FieldError("chain_id", "must be a positive integer (e.g. 1, 30000000000001)"))
        asset_address = spec.fields.get("asset_address")
        if asset_address is not None:
            rule = check_address(asset_address, None) if isinstance(asset_address, str) else "must be a string"
            if rule:
                errors.append(FieldError("asset_address", f"{rule} (None means the native coin)"))
        kind = spec.fields.get("amount_kind", "fiat")
        if kind == "fiat":
            errors += check_amount(spec.amount, max_places=FIAT_PLACES)
            if not _CURRENCY.fullmatch(spec.currency):
                errors.append(FieldError("currency", "must be a 3-letter fiat code such as USD for a fiat refund"))
        elif kind == "token":
            errors += check_amount(spec.amount, max_places=TOKEN_PLACES)
        else:
            errors.append(FieldError("amount_kind", "must be 'fiat' or 'token'"))
        rule = check_address(spec.destination, None)
        if rule:
            errors.append(FieldError("destination", rule))
        return errors

    def exclusive_key(self, spec: RefundSpec) -> str | None:
        return None  # a pay-order may be refunded in parts; nothing to serialise on

    # -- the original payment: a pay-order reports token units while refunds are usually fiat, so
    # the producer says what was paid in the refund's unit (`paid_amount`) --

    payment_rule: PaymentRule = PaymentRule.WITHIN
    reads_payment: bool = False

    def payment_key(self, spec: RefundSpec) -> str:
        return f"payorder:{spec.fields.get('payorder_id', '')}"

    def build_payment(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        raise NotImplementedError("coinvoyage: the producer gives paid_amount")

    def parse_payment(self, spec: RefundSpec, account: Account, resp: Response) -> PaymentReading:
        raise NotImplementedError("coinvoyage: the producer gives paid_amount")

    # --- requests ---

    def refund_body(self, spec: RefundSpec) -> RefundBody:
        amount: RefundAmount
        if spec.fields.get("amount_kind", "fiat") == "token":
            amount = {"token_amount": spec.amount}
        else:
            amount = {"fiat": {"amount": spec.amount, "unit": spec.currency}}
        return {
            "intent": {
                "amount": amount,
                "asset": {"address": spec.fields.get("asset_address"), "chain_id": int(spec.fields["chain_id"])},
                "receiving_address": spec.destination,
            },
            "metadata": {METADATA_KEY: spec.refund_id},
        }

    def _request(
        self, account: Account, method: str, path: str, nonce: int, body: bytes | None, *, signed: bool = True
    ) -> Request:
        """`X-API-KEY` always; the signature header on writes and the list (`signed`), not on single reads."""
        if not 0 < nonce < _MAX_SECONDS:
            raise ValueError("coinvoyage: the nonce is a Unix timestamp in seconds")
        api_key = account.secret("api_key")
        headers = {API_KEY_HEADER: api_key, "Accept": "application/json"}
        if signed:
            signature = sign_request(_scheme(account), api_key, account.secret("api_secret"), nonce, method, path)
            headers[_signature_header(account)] = signature.header
        if body is not None:
            headers["Content-Type"] = "application/json"
        return Request(method, account.base_url + path, headers, body)

    def build_submit(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        path = _refund_path(account).replace("{payorder_id}", _segment(str(spec.fields["payorder_id"])))
        body = json_dumps(self.refund_body(spec)).encode("utf-8")
        return self._request(account, "POST", path, nonce, body)

    def build_status(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        if not spec.provider_refund_id:
            raise ValueError("coinvoyage: no refund pay-order id yet; use build_lookup")
        path = f"/pay-orders/{_segment(spec.provider_refund_id)}"
        return self._request(account, "GET", path, nonce, None, signed=False)

    def build_lookup(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        offset = spec.lookup_page * LOOKUP_PAGE_SIZE
        return self._request(account, "GET", LOOKUP_PATH + (f"&offset={offset}" if offset else ""), nonce, None)

    # --- answers ---

    def parse_submit(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult:
        if not 200 <= resp.status_code < 300:
            raise classify_error(resp, submit=True)
        data = json_loads(resp.body)
        if not _is_pay_order(data) or data.get("mode", "REFUND") != "REFUND":
            raise ProviderError(
                ErrorKind.AMBIGUOUS,
                "CoinVoyage: 2xx without a REFUND pay-order",
                http_status=resp.status_code,
            )
        echoed = (data.get("metadata") or {}).get(METADATA_KEY) if isinstance(data.get("metadata"), dict) else None
        if echoed is not None and echoed != spec.refund_id:
            raise ProviderError(
                ErrorKind.AMBIGUOUS, "CoinVoyage: the pay-order carries another refund id", http_status=200
            )
        return to_status(data, spec)

    def parse_status(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult:
        if not 200 <= resp.status_code < 300:
            raise classify_error(resp, submit=False)
        data = json_loads(resp.body)
        if (
            not _is_pay_order(data)
            or data.get("mode", "REFUND") != "REFUND"  # a DEPOSIT's COMPLETED is not our refund's
            or (spec.provider_refund_id and data["id"] != spec.provider_refund_id)
        ):
            raise ProviderError(ErrorKind.RETRYABLE, "CoinVoyage: not our REFUND pay-order", http_status=200)
        return to_status(data, spec)

    def parse_lookup(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult | None:
        """None only after a complete scan (see the module docstring); LookupNextPage while a later page may
        hold our order; `others` set when more than one REFUND pay-order carries our refund id."""
        if not 200 <= resp.status_code < 300:
            raise classify_error(resp, submit=False)
        data = json_loads(resp.body)
        orders = data.get("data") if isinstance(data, dict) else None
        if not isinstance(orders, list):
            raise ProviderError(ErrorKind.RETRYABLE, "CoinVoyage: list answer without data[]", http_status=200)
        matches = [
            o
            for o in orders
            if _is_pay_order(o)
            and o.get("mode") == "REFUND"
            and isinstance(o.get("metadata"), dict)
            and o["metadata"].get(METADATA_KEY) == spec.refund_id
        ]
        if not matches:
            # "Absent" allows a resend, and CoinVoyage has no idempotency key: say it only when no
            # later page can hold our order (a short page, or orders older than our refund).
            if _list_ends_here(data, orders, spec.lookup_page) or _older_than(orders, spec.created_at):
                return None
            raise LookupNextPage(spec.lookup_page + 1)
        result = to_status(matches[0], spec)
        if len(matches) > 1:
            # No idempotency key at CoinVoyage: more than one order means a double create. The worker reads
            # `others`; the reason says it to a person too.
            others = tuple(str(o["id"]) for o in matches[1:])
            reason = f"{len(matches)} REFUND pay-orders carry this refund id; others: {', '.join(others)}"
            if result.reason:
                reason = f"{result.reason}; {reason}"
            return dataclasses.replace(result, reason=reason, others=others)
        return result

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, account: Account) -> StatusResult:
        wanted = WEBHOOK_HEADER.lower()
        signature = next((v for k, v in headers.items() if k.lower() == wanted), None)
        if "webhook_secret" not in account.secrets:
            raise ProviderError(ErrorKind.AUTH, "CoinVoyage webhook: no webhook_secret configured")
        if signature is None or not verify_webhook_signature(account.secret("webhook_secret"), body, signature):
            raise ProviderError(ErrorKind.AUTH, "CoinVoyage webhook: signature does not verify")
        event = json_loads(body)
        if not isinstance(event, dict):
            raise ProviderError(ErrorKind.REJECTED, "CoinVoyage webhook: body is not a JSON object")
        payorder_id = event.get("payorder_id")
        raw = event.get("status") or EVENT_STATUS.get(str(event.get("type")))
        if raw is None:
            # An event that names no status: the worker polls the pay-order for the truth.
            return StatusResult(
                RefundStatus.UNKNOWN, str(event.get("type")), payorder_id, reason="event carries no status"
            )
        status = map_status(str(raw))
        reason = STATUS_REASONS.get(str(raw))
        if event.get("message"):
            reason = f"{reason}: {event['message']}" if reason else str(event["message"])
        detail = {k: event[k] for k in ("id", "type", "refund_tx_hash", "refund_address") if event.get(k)}
        return StatusResult(status, str(raw), payorder_id, reason=reason, detail=detail)


ADAPTER = CoinVoyageAdapter()
if TYPE_CHECKING:
    _conforms: Adapter = ADAPTER  # mypy checks the adapter against the protocol here


def total_count(data: Mapping[str, Any]) -> int | None:
    """The list's total: `pagination.total_count`, else a top-level `total_count` (spec §1); None if absent."""
    pagination = data.get("pagination")
    for holder in (pagination if isinstance(pagination, dict) else {}, data):
        value = holder.get("total_count")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _list_ends_here(data: Mapping[str, Any], orders: list[Any], page: int) -> bool:
    """No later page exists: the total says so, else (no total) a short page does. A total saying more
    orders remain wins over a short page (never "absent" on a contradiction)."""
    total = total_count(data)
    if total is not None:
        return page * LOOKUP_PAGE_SIZE + len(orders) >= total
    return len(orders) < LOOKUP_PAGE_SIZE


def _older_than(orders: list[Any], created_at: datetime | None) -> bool:
    """True when the oldest order on a (newest-first) page predates our refund: later pages only
    hold older orders, none of which can be ours."""
    if created_at is None:
        return False
    stamps = [_parse_time(o.get("created_at")) for o in orders if isinstance(o, dict)]
    known = [t for t in stamps if t is not None]
    return bool(known) and min(known) < created_at - LOOKUP_CLOCK_SKEW


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
