"""Cryptomus: refund of a paid invoice (spec: shared/providers/cryptomus.md).

Wire format
- Every call is `POST <base_url>/v1/payment/...` with a JSON body and the headers `merchant: <merchant uuid>`,
  `sign: md5(base64(body) + api_key)` (lowercase hex) and `Content-Type: application/json`.
- The body is PHP-style JSON (`json_encode($x, JSON_UNESCAPED_UNICODE)`, vectors README §3): compact, raw
  UTF-8, `/` written `\\/`, an empty object written `[]`. `php_json_encode` and `sign_body` are public and
  pure: the sandbox verifies with them and the vector checks call them.
- Refund: `v1/payment/refund` {uuid|order_id, address, is_subtract}; the answer `{"state":0,"result":[]}`
  carries no refund id and no amount. Status and lookup: `v1/payment/info` {uuid|order_id}; the refund shows
  as the invoice `status` refund_process / refund_paid / refund_fail.
- No nonce, no timestamp (nonce_policy NONE), no idempotency key: one refund per invoice is enforced by the
  worker (`exclusive_key`) and by Cryptomus itself.

Statuses: ONE table, `STATUS_TABLE` (invoice status -> Reading, contract in `providers.base.Reading`), read by
`parse_status`, `parse_lookup` and webhooks alike: refund_* REFUND; paid / paid_over NO_REFUND (a poll says
PENDING "not visible yet"); the payment still in progress (process, check, confirm_check,
wrong_amount_waiting) UNSURE; the final non-paid states (wrong_amount, fail, cancel, system_fail, locked)
CONTRADICTS -> NEEDS_ATTENTION, never REJECTED.

Proof of absence (`parse_lookup` returns None): a payment/info answer `paid` or `paid_over` for our invoice
(spec §3: a refund shows as refund_*), or the documented 422 `Payment was not found` [S2]: no invoice, so no
refund on it (a resend is then refused the same way, and the refund ends `rejected` on that answer).
Cryptomus takes one refund per invoice (spec §3, [S4]), so a resend after a wrong "absent" is refused rather
than paid twice: `settle_seconds` = 30 (the worker applies it after an ambiguous send; an account may override
it with the option `settle_seconds`).

Assumptions (spec §9 "Unknown", recommended choices, and the lead's decisions)
- The text of "refund already requested" is undocumented: any failure message that mentions a refund made
  "already" / "only once" is AMBIGUOUS (the worker looks the invoice up before anything else); every other 4xx
  message (not found, validation, "You are forbidden") is REJECTED. "Invalid Sign." is AUTH.
- 429 is undocumented: RATE_LIMITED, honouring `Retry-After` (seconds). 503 with an empty body is RETRYABLE;
  any other 5xx (or an unparsable 2xx) on submit is AMBIGUOUS, on reads RETRYABLE.
- We always send PHP-style JSON, since the server seems to re-encode before checking the sign ([S8]).
- `is_subtract` is sent as a JSON boolean (the SDKs do; the doc's curl sends the string "true").
- Partial refunds do not exist (no amount in the call): `spec.amount` is what the merchant expects back (the
  invoice amount); the invoice `amount` is reported in `detail["amount"]` for the worker's integrity check.
- The payment states still in progress cannot tell whether a refund of ours exists (see STATUS_TABLE): polls
  and lookups raise ProviderError(UNSURE) and the worker asks again; a webhook in such a state is a hint only
  (RefundStatus.UNKNOWN: poll for the truth).
- `provider_refund_id` is the invoice uuid given by the producer, else the order_id (stable for the refund's
  life); the invoice uuid reported by Cryptomus goes in `detail["invoice_uuid"]`.
- Payment info carries no refund destination, so `detail["destination"]` is never set.
- Webhooks carry `sign` in the body: verified by re-encoding PHP-style (never over the raw bytes).

The original payment (`build_payment` / `parse_payment`): the refundable amount is the invoice `amount` (in its
`currency`) that `v1/payment/info` reports, the same signed request as a poll. The refund call carries no amount and
returns the whole invoice, so a refund must EQUAL that amount (PaymentRule.WHOLE). The reading is keyed by the
invoice uuid Cryptomus reports (`invoice:<uuid>`), also when the refund names only the order_id. `Payment was not
found` (422) is REJECTED there: no invoice, nothing to refund. An unreadable amount is UNSURE: never guessed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NotRequired, TypedDict

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
    json_or_none,
    parse_plain_decimal,
    read_status,
)
from providers.readings import read_result

if TYPE_CHECKING:
    from providers.base import Adapter

NAME: Final = "cryptomus"
REFUND_PATH: Final = "v1/payment/refund"
INFO_PATH: Final = "v1/payment/info"
LIST_PATH: Final = "v1/payment/list"
CONTENT_TYPE: Final = "application/json"
MAX_PLACES: Final = 8
ALLOWED_FIELDS: Final = frozenset({"order_id", "uuid", "is_subtract", "network"})
#: raw status of a successful refund call, which has no status of its own
SUBMITTED_RAW_STATUS: Final = "state:0"


# --- PHP-style JSON -------------------------------------------------------------------------------

_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
# PHP >= 7.1 escapes U+2028/U+2029 even with JSON_UNESCAPED_UNICODE (unless JSON_UNESCAPED_LINE_TERMINATORS).
_NEEDS_ESCAPE: Final = re.compile('["\\\\/\x00-\x1f\u2028\u2029]')
_INT64: Final = range(-(2**63), 2**63)


def _php_string(text: str) -> str:
    def escape(m: re.Match[str]) -> str:
        ch = m.group()
        return _ESCAPES.get(ch) or f"\\u{ord(ch):04x}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def _php_float(value: float) -> str:
    """PHP `json_encode` of a double with serialize_precision -1 (php_gcvt, mode 0): shortest round-trip
    digits, exponent form `1.0e+25` when the decimal point is beyond 17 digits or before -3, and no `.0` for
    whole numbers (no JSON_PRESERVE_ZERO_FRACTION)."""
    if not math.isfinite(value):
        raise ValueError("PHP json_encode cannot encode INF or NAN")
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    assert isinstance(exponent, int)
    decpt = len(digits) + exponent  # position of the decimal point relative to the digits, as zend_dtoa gives it
    if decpt > 17 or decpt < -3:
        exp = decpt - 1
        return f"{sign}{digits[0]}.{digits[1:] or '0'}e{'-' if exp < 0 else '+'}{abs(exp)}"
    if decpt <= 0:
        return f"{sign}0.{'0' * -decpt}{digits}"
    if len(digits) <= decpt:
        return sign + digits + "0" * (decpt - len(digits))
    return f"{sign}{digits[:decpt]}.{digits[decpt:]}"


def _is_php_list(keys: Sequence[str]) -> bool:
    # A PHP array whose keys are exactly 0..n-1 in order is encoded as a JSON list (the empty array included).
    return all(k == str(i) for i, k in enumerate(keys))


def php_json_encode(value: Any) -> str:
    """PHP `json_encode($value, JSON_UNESCAPED_UNICODE)` of the PHP value `value` stands for (as json_decode
    with assoc=true would give it): objects keep their key order; `{}` and objects keyed "0".."n-1" are PHP
    lists."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _php_float(value)
    if isinstance(value, str):
        return _php_string(value)
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        if _is_php_list(keys):
            return "[" + ",".join(php_json_encode(v) for v in value.values()) + "]"
        return (
            "{"
            + ",".join(f"{_php_string(k)}:{php_json_encode(v)}" for k, v in zip(keys, value.values(), strict=True))
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(php_json_encode(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as PHP JSON")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _php_int(text: str) -> int | float:
    # PHP json_decode turns an integer beyond int64 into a double.
    number = int(text)
    return number if number in _INT64 else float(text)


def php_json_decode(raw: bytes | str) -> Any:
    """json_decode($raw, true) as PHP sees the values (big integers become doubles; NaN/Infinity refused)."""
    return json.loads(raw, parse_int=_php_int, parse_constant=_reject_constant)


# --- signing --------------------------------------------------------------------------------------


def sign_body(body: bytes | str, api_key: str) -> str:
    """`md5(base64(body) + api_key)`, lowercase hex, over the exact body bytes (empty: `md5(api_key)`)."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return hashlib.md5(base64.b64encode(raw) + api_key.encode("utf-8"), usedforsecurity=False).hexdigest()


def signed_request(url: str, merchant: str, api_key: str, body: bytes) -> Request:
    """A signed POST of exactly `body`."""
    headers = {
        "merchant": merchant,
        "sign": sign_body(body, api_key),
        "Content-Type": CONTENT_TYPE,
        # Laravel answers errors as JSON (not a redirect) only to clients that ask for JSON.
        "Accept": CONTENT_TYPE,
    }
    return Request("POST", url, headers, body)


def json_request(url: str, merchant: str, api_key: str, data: Mapping[str, Any]) -> Request:
    """A signed POST whose body is `data` encoded PHP-style (what the official SDK sends)."""
    return signed_request(url, merchant, api_key, php_json_encode(data).encode("utf-8"))


def webhook_signature(raw_body: bytes | str, api_key: str) -> tuple[str | None, str, str]:
    """(sign found in the body, sign computed, the PHP-style JSON that was hashed). Raises ValueError when the
    body is not a JSON object."""
    payload = php_json_decode(raw_body)
    if not isinstance(payload, dict):
        raise ValueError("webhook body is not a JSON object")
    given = payload.pop("sign", None)
    signed = php_json_encode(payload)
    return (given if isinstance(given, str) else None), sign_body(signed, api_key), signed


def verify_webhook_signature(raw_body: bytes | str, api_key: str) -> bool:
    try:
        given, computed, _ = webhook_signature(raw_body, api_key)
    except (ValueError, UnicodeError):
        return False
    return given is not None and hmac.compare_digest(given.lower().encode(), computed.encode())


# --- typed wire structs ---------------------------------------------------------------------------


class RefundBody(TypedDict):
    uuid: NotRequired[str]
    order_id: NotRequired[str]
    address: str
    is_subtract: bool


class InfoBody(TypedDict):
    uuid: NotRequired[str]
    order_id: NotRequired[str]


class PaymentInfo(TypedDict, total=False):
    """`result` of v1/payment/info and of a payment webhook (fields we read; amounts are decimal strings)."""

    uuid: str
    order_id: str
    amount: str
    payment_amount: str | None
    payer_amount: str | None
    payer_currency: str | None
    currency: str
    network: str | None
    status: str
    payment_status: str
    is_final: bool
    txid: str | None


# --- status table ---------------------------------------------------------------------------------

_REFUND = Reading.REFUND
_NO_REFUND = Reading.NO_REFUND
_UNSURE = Reading.UNSURE
_CONTRADICTS = Reading.CONTRADICTS

#: Every documented invoice status (spec §1 "Statuses relevant to refunds", [S3]) -> what it says about our refund.
STATUS_TABLE: Final[Mapping[str, RawStatus]] = MappingProxyType(
    {
        "refund_process": RawStatus(_REFUND, RefundStatus.PROCESSING, "refund being processed"),
        "refund_paid": RawStatus(_REFUND, RefundStatus.COMPLETED, "refund paid"),
        "refund_fail": RawStatus(_REFUND, RefundStatus.FAILED, "refund failed"),
        # Paid and refundable (spec §1): no refund on the invoice (yet).
        "paid": RawStatus(_NO_REFUND, text="paid"),
        "paid_over": RawStatus(_NO_REFUND, text="paid more than the invoice"),
        # The payment is still in progress. Cryptomus refunds paid invoices (spec §1: paid/paid_over are the
        # refundable ones), but what it does with a refund request meanwhile (refuse it, or hold it until the
        # payment settles) is undocumented. So the state neither proves absence (a held request could still pay
        # out after a resend) nor contradicts a refund (the invoice may yet become paid): ask again later.
        "process": RawStatus(_UNSURE, text="payment in progress"),
        "check": RawStatus(_UNSURE, text="payment being checked"),
        "confirm_check": RawStatus(_UNSURE, text="payment awaiting confirmations"),
        "wrong_amount_waiting": RawStatus(_UNSURE, text="underpaid, waiting for the rest"),
        # Final states of an invoice that was not (fully) paid: no refund of ours can be on it, yet we may have
        # sent one. A person reconciles; never REJECTED, which would claim no money moved.
        "wrong_amount": RawStatus(_CONTRADICTS, text="underpaid (final)"),
        "fail": RawStatus(_CONTRADICTS, text="payment failed"),
        "cancel": RawStatus(_CONTRADICTS, text="cancelled"),
        "system_fail": RawStatus(_CONTRADICTS, text="system error"),
        "locked": RawStatus(_CONTRADICTS, text="locked (AML)"),
    }
)


# --- error table ----------------------------------------------------------------------------------

_AUTH_MESSAGES: Final = re.compile(r"invalid sign", re.IGNORECASE)
PAYMENT_NOT_FOUND: Final = "Payment was not found"  # documented [S2]: the invoice does not exist
# Undocumented (§9): any wording telling the refund was already made / can be made only once.
_ALREADY_MESSAGES: Final = re.compile(r"already|only once", re.IGNORECASE)


def _retry_after(resp: Response) -> float | None:
    value = resp.header("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: let the worker's backoff decide
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _message(body: Any) -> str | None:
    """The provider's failure text: `message`, else the flattened `errors` object."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("message"), str) and body["message"]:
        return str(body["message"])[:300]
    errors = body.get("errors")
    if isinstance(errors, dict) and errors:
        parts = [f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in errors.items()]
        return "; ".join(parts)[:300]
    return None


def classify_error(resp: Response, *, submit: bool) -> ProviderError:
    """The ProviderError for a failed answer. `submit`: the call may have executed a refund."""
    code = resp.status_code
    body = json_or_none(resp.body)
    message = _message(body)
    unsure = ErrorKind.AMBIGUOUS if submit else ErrorKind.RETRYABLE

    def err(kind: ErrorKind, text: str, retry_after: float | None = None) -> ProviderError:
        return ProviderError(kind, text, retry_after=retry_after, http_status=code)

    if code == 429:
        return err(ErrorKind.RATE_LIMITED, message or "rate limited", _retry_after(resp))
    if code == 503 and not resp.body.strip():
        return err(ErrorKind.RETRYABLE, "service unavailable (empty 503)", _retry_after(resp))
    if code >= 500:
        return err(unsure, message or f"server error {code}")
    if message and _AUTH_MESSAGES.search(message):
        return err(ErrorKind.AUTH, message)
    if message and _ALREADY_MESSAGES.search(message):
        return err(ErrorKind.AMBIGUOUS, message)
    if code in (401, 403) and not message:
        return err(ErrorKind.AUTH, f"HTTP {code}")
    if 400 <= code < 500:
        return err(ErrorKind.REJECTED, message or f"HTTP {code}")
    if 200 <= code < 300 and isinstance(body, dict) and body.get("state") not in (0, None):
        return err(ErrorKind.REJECTED, message or f"state {body.get('state')!r}")
    return err(unsure, f"unexpected answer (HTTP {code})")


def _result(resp: Response, *, submit: bool) -> Any:
    """`result` of a successful envelope, else raise the classified error."""
    body = json_or_none(resp.body)
    if 200 <= resp.status_code < 300 and isinstance(body, dict) and body.get("state") == 0:
        return body.get("result")
    raise classify_error(resp, submit=submit)


# --- adapter --------------------------------------------------------------------------------------


_ASCII_ALPHA_DASH: Final = re.compile(r"[A-Za-z0-9_-]+")


def _is_alpha_dash(text: str) -> bool:
    # Laravel alpha_dash: letters, marks, numbers, "-" and "_".
    if _ASCII_ALPHA_DASH.fullmatch(text):  # the common case, without a per-character loop
        return True
    return bool(text) and all(ch in "-_" or unicodedata.category(ch)[0] in "LMN" for ch in text)


# Network codes (tron, eth, BSC) and currency codes (USDT): short ASCII words. fullmatch, never `$`.
_NETWORK: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_CURRENCY: Final = re.compile(r"[A-Z0-9]{2,16}")
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Cryptomus network codes -> address family (providers.addresses); others are checked generically.
_NETWORK_FAMILY: Final = {
    "tron": "tron",
    "eth": "evm",
    "bsc": "evm",
    "polygon": "evm",
    "arbitrum": "evm",
    "avalanche": "evm",
    "btc": "bitcoin",
    "sol": "solana",
}


def _invoice_ref(spec: RefundSpec) -> InfoBody:
    ref: InfoBody = {}
    if spec.fields.get("uuid"):
        ref["uuid"] = str(spec.fields["uuid"])
    if spec.fields.get("order_id"):
        ref["order_id"] = str(spec.fields["order_id"])
    return ref


def _url(account: Account, path: str) -> str:
    return f"{account.base_url.rstrip('/')}/{path}"


class CryptomusAdapter:
    name = NAME
    nonce_policy = NoncePolicy.NONE
    nonce_unit = NonceUnit.S  # unused: no nonce
    status_table: Mapping[str, RawStatus] = STATUS_TABLE
    # One refund per invoice at Cryptomus: a resend after a wrong "absent" is refused, not paid twice.
    settle_seconds: float = 30.0
    # One of uuid / order_id is required (validate() says so); neither is required on its own.
    required_fields: tuple[str, ...] = ()
    one_of_fields: tuple[str, ...] = ("uuid", "order_id")

    # --- validation ---

    def validate(self, spec: RefundSpec, account: Account) -> list[FieldError]:
        errors: list[FieldError] = []
        fields = spec.fields
        for name in sorted(set(fields) - ALLOWED_FIELDS):
            errors.append(FieldError(f"fields.{name}", f"unknown field (allowed: {', '.join(sorted(ALLOWED_FIELDS))})"))
        order_id, uuid = fields.get("order_id"), fields.get("uuid")
        if order_id is None and uuid is None:
            errors.append(FieldError("fields.order_id", "order_id or uuid is required"))
        if order_id is not None and not (
            isinstance(order_id, str) and 1 <= len(order_id) <= 128 and _is_alpha_dash(order_id)
        ):
            errors.append(FieldError("fields.order_id", "must be 1 to 128 letters, digits, '-' or '_'"))
        if uuid is not None and not (isinstance(uuid, str) and _UUID.fullmatch(uuid)):
            errors.append(FieldError("fields.uuid", "must be an invoice uuid (8-4-4-4-12 hex digits)"))
        if "is_subtract" in fields and not isinstance(fields["is_subtract"], bool):
            errors.append(FieldError("fields.is_subtract", "must be true or false"))
        network = fields.get("network")
        if network is not None and not (isinstance(network, str) and _NETWORK.fullmatch(network)):
            errors.append(
                FieldError(
                    "fields.network", "must be a network code of 1 to 32 letters, digits, '-' or '_' (e.g. tron)"
                )
            )
        if not _CURRENCY.fullmatch(spec.currency):
            errors.append(
                FieldError("currency", "must be a currency code of 2 to 16 upper-case letters or digits (USDT)")
            )
        family = _NETWORK_FAMILY.get(network.lower()) if isinstance(network, str) else None
        if (rule := check_address(spec.destination, family)) is not None:
            errors.append(FieldError("destination", rule))
        errors += check_amount(spec.amount, max_places=MAX_PLACES)
        if not isinstance(account.option("merchant"), str) or not account.option("merchant"):
            errors.append(FieldError("account.merchant", "option is required (merchant uuid)"))
        if "api_key" not in account.secrets:
            errors.append(FieldError("account.api_key", "secret is required (payment API key)"))
        if not isinstance(account.option("is_subtract", True), bool):
            errors.append(FieldError("account.is_subtract", "option must be true or false"))
        return errors

    def exclusive_key(self, spec: RefundSpec) -> str | None:
        # One refund per invoice; uuid identifies the invoice when both are given (as the API does).
        uuid, order_id = spec.fields.get("uuid"), spec.fields.get("order_id")
        if uuid:
            return f"invoice:{str(uuid).lower()}"
        return f"invoice:{order_id}" if order_id else None

    # -- the original payment: payment/info reports the invoice's amount and currency; the refund
    # call carries no amount and returns the whole invoice --

    payment_rule: PaymentRule = PaymentRule.WHOLE
    reads_payment: bool = True

    def payment_key(self, spec: RefundSpec) -> str:
        return self.exclusive_key(spec) or ""

    def build_payment(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        return self.build_status(spec, account, nonce)  # payment/info of the invoice

    def parse_payment(self, spec: RefundSpec, account: Account, resp: Response) -> PaymentReading:
        """The invoice `amount` / `currency`, keyed by the uuid Cryptomus reports. REJECTED for an unknown
        invoice."""
        ref = _invoice_ref(spec)
        named = ", ".join(f"{k} {v}" for k, v in ref.items())
        if resp.status_code == 422 and _message(json_or_none(resp.body)) == PAYMENT_NOT_FOUND:
            raise ProviderError(
                ErrorKind.REJECTED, f"{NAME}: invoice ({named}) not found: {PAYMENT_NOT_FOUND}", http_status=422
            )
        info = self._info(resp)
        uuid, order_id = info.get("uuid"), info.get("order_id")
        if (
            not isinstance(uuid, str)
            or not _UUID.fullmatch(uuid)
            or ("uuid" in ref and uuid.lower() != ref["uuid"].lower())
            or ("order_id" in ref and order_id is not None and str(order_id) != ref["order_id"])
        ):
            # Keyed by what the answer says: an answer about another invoice would set its ceiling.
            raise ProviderError(
                ErrorKind.RETRYABLE,
                f"{NAME}: payment info is not about invoice ({named})",
                http_status=resp.status_code,
            )
        amount, currency = _paid_amount(info.get("amount")), info.get("currency")
        if amount is None or not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            shown = {k: info.get(k) for k in ("amount", "currency")}
            raise ProviderError(
                ErrorKind.UNSURE,
                f"{NAME}: invoice {uuid} has no readable amount: {shown}",
                http_status=resp.status_code,
            )
        fields = ("uuid", "order_id", "amount", "currency", "status", "payment_status")
        detail = {name: info.get(name) for name in fields}
        return PaymentReading(key=f"invoice:{uuid.lower()}", amount=amount, currency=currency, detail=detail)

    # --- requests ---

    def _is_subtract(self, spec: RefundSpec, account: Account) -> bool:
        value = spec.fields.get("is_subtract", account.option("is_subtract", True))
        if not isinstance(value, bool):  # never guess: bool("false") is True
            raise ValueError("cryptomus: is_subtract must be true or false (see validate())")
        return value

    def refund_body(self, spec: RefundSpec, account: Account) -> RefundBody:
        # Invoice reference first, as the official SDK's vectors do; key order does not matter to the API.
        return {
            **_invoice_ref(spec),
            "address": spec.destination,
            "is_subtract": self._is_subtract(spec, account),
        }

    def _post(self, account: Account, path: str, data: Mapping[str, Any]) -> Request:
        return json_request(_url(account, path), account.require("merchant"), account.secret("api_key"), data)

    def build_submit(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        return self._post(account, REFUND_PATH, self.refund_body(spec, account))

    def build_status(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        return self._post(account, INFO_PATH, _invoice_ref(spec))

    def build_lookup(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        return self._post(account, INFO_PATH, _invoice_ref(spec))

    # --- answers ---

    def _refund_id(self, spec: RefundSpec) -> str | None:
        ref = _invoice_ref(spec)
        return ref.get("uuid") or ref.get("order_id")

    def parse_submit(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult:
        _result(resp, submit=True)  # `[]` on success: no refund id, no status
        return StatusResult(RefundStatus.PENDING, SUBMITTED_RAW_STATUS, provider_refund_id=self._refund_id(spec))

    def _info(self, resp: Response) -> PaymentInfo:
        result = _result(resp, submit=False)
        if not isinstance(result, dict) or not isinstance(result.get("status"), str):
            raise ProviderError(ErrorKind.RETRYABLE, "payment info without a status", http_status=resp.status_code)
        info: PaymentInfo = result  # type: ignore[assignment]
        return info

    def _read(
        self, info: Mapping[str, Any], refund_id: str | None, *, lookup: bool, http_status: int | None = None
    ) -> StatusResult | None:
        """One invoice state read through STATUS_TABLE (poll, lookup and webhook read it alike)."""
        raw = str(info["status"])
        entry = read_status(STATUS_TABLE, NAME, raw)
        return read_result(
            entry,
            raw,
            NAME,
            lookup=lookup,
            what=f"invoice status is {raw}",
            provider_refund_id=refund_id,
            detail=_detail(info),
            http_status=http_status,
        )

    def parse_status(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult:
        result = self._read(self._info(resp), self._refund_id(spec), lookup=False, http_status=resp.status_code)
        assert result is not None  # a poll always says something: only a lookup reads NO_REFUND as None
        return result

    def parse_lookup(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult | None:
        """None for `paid` / `paid_over` (the invoice shows no refund) and for an invoice Cryptomus does
        not know (an unknown status never is)."""
        if resp.status_code == 422 and _message(json_or_none(resp.body)) == PAYMENT_NOT_FOUND:
            return None
        return self._read(self._info(resp), self._refund_id(spec), lookup=True, http_status=resp.status_code)

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, account: Account) -> StatusResult:
        if not verify_webhook_signature(body, account.secret("api_key")):
            raise ProviderError(ErrorKind.AUTH, "cryptomus webhook: sign does not verify")
        payload = php_json_decode(body)
        if not isinstance(payload.get("status"), str):
            raise ProviderError(ErrorKind.REJECTED, "cryptomus webhook without a status")
        refund_id = payload.get("uuid") or payload.get("order_id")
        refund_ref = str(refund_id) if refund_id else None
        entry = read_status(STATUS_TABLE, NAME, payload["status"])
        if entry.reading is Reading.UNSURE:
            # A webhook is a hint: it cannot fail the refund, it only asks the worker to poll.
            reason = f"invoice status is {payload['status']}: poll for the truth"
            return StatusResult(RefundStatus.UNKNOWN, payload["status"], refund_ref, reason=reason)
        result = self._read(payload, refund_ref, lookup=False)
        assert result is not None
        return result


def _paid_amount(value: Any) -> Decimal | None:
    """A positive invoice amount: a plain decimal string as Cryptomus writes amounts (spec §6), else None (a JSON
    number has been through float already)."""
    if not isinstance(value, str):
        return None
    try:
        amount = parse_plain_decimal(value)
    except ValueError:
        return None
    return amount if amount > 0 else None


def _detail(info: Mapping[str, Any]) -> dict[str, Any]:
    """What payment info reports, for the worker's integrity checks and the log."""
    return {
        key: info[name]
        for key, name in (
            ("amount", "amount"),
            ("currency", "currency"),
            ("invoice_uuid", "uuid"),
            ("order_id", "order_id"),
            ("payment_status", "payment_status"),
            ("payer_amount", "payer_amount"),
            ("payer_currency", "payer_currency"),
            ("network", "network"),
            ("txid", "txid"),
        )
        if info.get(name) is not None
    }


ADAPTER = CryptomusAdapter()
if TYPE_CHECKING:
    _conforms: Adapter = ADAPTER  # mypy checks the adapter against the protocol here
