"""Cobo WaaS 2.0 Payments refunds (spec: shared/providers/cobo.md).

Pure: builds signed `Request`s and parses `Response`s, no I/O.

Signing (cobo.md §2): `METHOD|PATH|timestamp_ms|urlencode(query)|body`, double SHA-256, Ed25519 with the
32-byte seed `api_private_key`; headers `Biz-Api-Key` (public key hex), `Biz-Api-Nonce` (timestamp ms),
`Biz-Api-Signature`. The signed PATH is always "/v2" + the endpoint path, whatever prefix the account's
`base_url` carries (the sandbox mounts Cobo under `/cobo/v2`). Every 2xx answer must carry a valid
`Biz-Resp-Signature` over `raw_body|Biz-Timestamp` under the account option `response_public_key`, as the SDK
insists; webhooks are signed the same way with the same key.

Assumptions taken from cobo.md §9 (Unknown):
- Nonce monotonicity / skew window: unknown. The worker sends the current clock in ms (TIMESTAMP policy);
  a 2023 (signature / timestamp refused) is AUTH as decided for refundq, never looped on.
- Query-parameter order: we sign exactly the query string we send (URL order, empty values dropped).
- Request field names: `payable_amount` and `order_id` (the SDK names), not the brief's
  `amount`/`payin_order_id`.
- `PartiallyCompleted` is final with no documented follow-up: mapped to PARTIALLY_COMPLETED for a person.
- Cancel result status is undocumented: not used by the adapter.
- Webhooks are hints; polling is the truth. `verify_webhook` checks the signature, then maps the refund.

Reads (`parse_status`, `parse_lookup`) never execute anything, so every answer that would be AMBIGUOUS for a
create (5xx, unsigned 2xx) is RETRYABLE there.

Settled amount and fee (`StatusResult.settled_amount` / `fee`): a Completed or PartiallyCompleted refund settles the
sum of its `Completed` transactions' `amount` (None without transactions, or when one amount is unreadable: never a
guess); `fee` is the refund's `commission_fee` when it is a number. `detail["amount"]` stays the refund's requested
`amount`, which the worker's integrity check compares with ours.

Statuses: Cobo answers with refund records only, so `STATUS_TABLE` holds REFUND entries only (one per documented
status, spec §1 "Refund statuses"); poll, lookup, submit and webhooks all read it.

Proof of absence (`parse_lookup` returns None): only a signed 2xx answer to `GET /payments/refunds?request_id=<ours>`
whose `data` holds no refund with our request_id (spec §3: "empty data => not created, safe to resend"). The same
answer on a poll (no provider refund id yet) is PENDING "not visible yet", never REJECTED. `request_id` is Cobo's
idempotency key (a resend with it is refused as a duplicate, 12009/30001/2040 -> AMBIGUOUS), so the settle default
is short: `settle_seconds` = 10 (the worker applies it after an ambiguous send; an account may override it with the
option `settle_seconds`). A retry of a refund (`refundq refund retry`, `batch retry`) sends the first attempt's id as
`request_id` (`RefundSpec.request_id`): Cobo then refuses it as a duplicate whenever it holds the first attempt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, TypedDict
from urllib.parse import quote, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from config.accounts import Account
from providers.addresses import check_address, family_for_token
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
    parse_plain_decimal,
    plain_decimal,
    read_status,
)
from providers.readings import refund_status

NAME = "cobo"
SIGNED_PATH_PREFIX = "/v2"
REFUNDS_PATH = "/payments/refunds"

# --- signing -------------------------------------------------------------------------------------


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def public_key_hex(private_key_hex: str) -> str:
    """The `Biz-Api-Key` for a 32-byte Ed25519 seed (hex)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_key_hex))
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def encode_query(params: Mapping[str, Any]) -> str:
    """`urllib.parse.urlencode` in the given order after dropping empty values (the SDK's rule)."""
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def string_to_sign(method: str, path: str, timestamp_ms: int | str, query: str, body: str) -> str:
    return "|".join([method.upper(), path, str(timestamp_ms), query, body])


def sign_request(private_key_hex: str, method: str, path: str, timestamp_ms: int, query: str, body: str) -> str:
    """Hex Ed25519 signature of SHA256(SHA256(string_to_sign)) -> `Biz-Api-Signature`."""
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_key_hex))
    digest = sha256d(string_to_sign(method, path, timestamp_ms, query, body).encode("utf-8"))
    return key.sign(digest).hex()


def verify_request(
    public_key: str, method: str, path: str, timestamp_ms: str, query: str, body: str, signature_hex: str
) -> bool:
    """What Cobo does with `Biz-Api-Signature` (the sandbox uses it)."""
    digest = sha256d(string_to_sign(method, path, timestamp_ms, query, body).encode("utf-8"))
    return _ed25519_verify(public_key, signature_hex, digest)


def sign_response(private_key_hex: str, raw_body: bytes, timestamp: str) -> str:
    """`Biz-Resp-Signature` over `raw_body|Biz-Timestamp` (the sandbox signs its answers with it)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_key_hex))
    return key.sign(sha256d(raw_body + b"|" + timestamp.encode("utf-8"))).hex()


def verify_response(public_key: str, raw_body: bytes, timestamp: str, signature_hex: str) -> bool:
    """Responses and webhooks: Ed25519 over SHA256(SHA256(raw_body + "|" + Biz-Timestamp)), raw bytes."""
    return _ed25519_verify(public_key, signature_hex, sha256d(raw_body + b"|" + timestamp.encode("utf-8")))


def _ed25519_verify(public_key: str, signature_hex: str, message: bytes) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
        key.verify(bytes.fromhex(signature_hex), message)
    except (ValueError, InvalidSignature):
        return False
    return True


def signed_request(
    private_key_hex: str,
    method: str,
    url: str,
    path: str,
    timestamp_ms: int,
    query_params: Mapping[str, Any] | None = None,
    body: str = "",
) -> Request:
    """A signed request to `url` (no query) signing `path`; the query sent is exactly the one signed.
    `body` is the exact JSON text sent; "" means no body at all (GET, cancel)."""
    query = encode_query(query_params or {})
    headers = {
        "Biz-Api-Key": public_key_hex(private_key_hex),
        "Biz-Api-Nonce": str(timestamp_ms),
        "Biz-Api-Signature": sign_request(private_key_hex, method, path, timestamp_ms, query, body),
    }
    if body:
        headers["Content-Type"] = "application/json"
    return Request(
        method=method.upper(),
        url=url + (f"?{query}" if query else ""),
        headers=headers,
        body=body.encode("utf-8") if body else None,
    )


# --- wire types ----------------------------------------------------------------------------------


class CreateRefundRequest(TypedDict, total=False):
    request_id: str  # required
    merchant_id: str
    payable_amount: str  # required, <= 2 decimals
    to_address: str
    token_id: str  # required, CHAIN_TOKEN
    refund_type: str  # required, Merchant | Psp
    order_id: str
    charge_merchant_fee: bool
    merchant_fee_amount: str
    merchant_fee_token_id: str


class RefundObject(TypedDict, total=False):
    request_id: str
    refund_id: str
    order_id: str
    merchant_id: str
    token_id: str
    chain_id: str
    amount: str
    to_address: str
    status: str
    failed_reason: str
    refund_type: str
    created_timestamp: int
    updated_timestamp: int
    transactions: list[dict[str, Any]]


class ErrorBody(TypedDict, total=False):
    error_code: int
    error_message: str
    error_id: str


# --- statuses and errors -------------------------------------------------------------------------

ADDRESS_NEEDED = "a destination address is needed (set to_address with PUT /payments/refunds/{refund_id})"

#: Every documented refund status (spec §1 "Refund statuses", the SDK's refund_status.py): all are refund records.
STATUS_TABLE: Final[Mapping[str, RawStatus]] = MappingProxyType(
    {
        "AddressPending": RawStatus(Reading.REFUND, RefundStatus.ACTION_REQUIRED, "refund link opened, no address"),
        "AddressSubmitted": RawStatus(Reading.REFUND, RefundStatus.ACTION_REQUIRED, "refund link address submitted"),
        "PendingConfirmation": RawStatus(Reading.REFUND, RefundStatus.ACTION_REQUIRED, "created without to_address"),
        "Pending": RawStatus(Reading.REFUND, RefundStatus.PENDING, "created, no transaction started"),
        "Processing": RawStatus(Reading.REFUND, RefundStatus.PROCESSING, "a refund transaction is in progress"),
        "Completed": RawStatus(Reading.REFUND, RefundStatus.COMPLETED, "all refund transactions completed"),
        # Final with no documented follow-up: a person decides (spec §9).
        "PartiallyCompleted": RawStatus(
            Reading.REFUND, RefundStatus.PARTIALLY_COMPLETED, "some transactions completed, others failed"
        ),
        "Failed": RawStatus(Reading.REFUND, RefundStatus.FAILED, "all refund transactions failed"),
    }
)
#: raw status of a poll whose list answer holds no refund with our request_id (not a Cobo status)
NOT_LISTED: Final = "not_listed"

_ACTION_REASON = {
    "PendingConfirmation": ADDRESS_NEEDED,
    "AddressPending": "a destination address is needed: the payer has not submitted one via the refund link",
    "AddressSubmitted": "a destination address was submitted via the refund link and awaits confirmation",
}

ERROR_KINDS: dict[int, ErrorKind] = {
    # duplicate request id / key: it may exist already -> the worker looks it up
    12009: ErrorKind.AMBIGUOUS,
    30001: ErrorKind.AMBIGUOUS,
    2040: ErrorKind.AMBIGUOUS,
    # signature / API key refused (stale timestamps and replays answer 2023 too)
    2023: ErrorKind.AUTH,
    2024: ErrorKind.AUTH,
    # missing auth headers: our bug, a configuration problem; never loop on it
    2022: ErrorKind.AUTH,
    2010: ErrorKind.RATE_LIMITED,
    2026: ErrorKind.RATE_LIMITED,
    # the refund itself is refused: balance, parameters, permissions, not found
    12007: ErrorKind.REJECTED,
    30012: ErrorKind.REJECTED,
    2003: ErrorKind.REJECTED,
    1003: ErrorKind.REJECTED,
    2006: ErrorKind.REJECTED,
    1006: ErrorKind.REJECTED,
    2025: ErrorKind.REJECTED,
    4001: ErrorKind.REJECTED,
    2028: ErrorKind.REJECTED,
    # internal error: may have been executed
    1000: ErrorKind.AMBIGUOUS,
    2000: ErrorKind.AMBIGUOUS,
}


def _retry_after(resp: Response) -> float | None:
    value = resp.header("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def classify_error(resp: Response, *, read: bool = False) -> ProviderError:
    """A non-2xx answer as a ProviderError. `read`: a status/lookup call, which cannot have executed
    anything, so AMBIGUOUS becomes RETRYABLE."""
    kind: ErrorKind
    code: int | None = None
    message = f"HTTP {resp.status_code}"
    body = _json(resp.body)
    if isinstance(body, dict) and isinstance(body.get("error_code"), int):
        code = body["error_code"]
        message = str(body.get("error_message") or message)
    if resp.status_code == 429:
        kind = ErrorKind.RATE_LIMITED
    elif resp.status_code == 503 and not resp.body.strip():
        kind = ErrorKind.RETRYABLE  # a gateway answered: Cobo never saw the call
    elif code is not None and code in ERROR_KINDS:
        kind = ERROR_KINDS[code]
    elif resp.status_code >= 500:
        kind = ErrorKind.AMBIGUOUS
    elif resp.status_code in (401, 403):
        kind = ErrorKind.AUTH
    else:
        kind = ErrorKind.REJECTED
    if read and kind is ErrorKind.AMBIGUOUS:
        kind = ErrorKind.RETRYABLE
    return ProviderError(
        kind,
        f"cobo: {message}",
        code=None if code is None else str(code),
        retry_after=_retry_after(resp) if kind is ErrorKind.RATE_LIMITED else None,
        http_status=resp.status_code,
    )


def _json(body: bytes) -> Any:
    # parse_float=Decimal: amounts reported as JSON numbers must never pass through float
    try:
        return json.loads(body, parse_float=Decimal) if body else None
    except ValueError:
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def to_status_result(refund: Mapping[str, Any]) -> StatusResult:
    """A Cobo Refund object onto the unified status; an undocumented status raises UnmappedStatusError."""
    raw = refund.get("status")
    if not isinstance(raw, str):
        raise ProviderError(ErrorKind.UNMAPPED, "cobo: refund without a status")
    status = refund_status(read_status(STATUS_TABLE, NAME, raw), NAME, raw)
    reason: str | None = None
    if status is RefundStatus.FAILED:
        reason = str(refund.get("failed_reason") or "failed")
    elif status is RefundStatus.PARTIALLY_COMPLETED:
        reason = str(refund.get("failed_reason") or "some refund transactions failed")
    elif status is RefundStatus.ACTION_REQUIRED:
        reason = _ACTION_REASON[raw]
    detail: dict[str, Any] = {}
    for ours, theirs in (("amount", "amount"), ("destination", "to_address"), ("currency", "token_id")):
        value = refund.get(theirs)
        if value is not None and value != "":
            detail[ours] = str(value)  # as reported (Decimal keeps the text of a JSON number)
    if refund.get("request_id") is not None:
        detail["request_id"] = str(refund["request_id"])
    refund_id = refund.get("refund_id")
    return StatusResult(
        status=status,
        raw_status=raw,
        provider_refund_id=str(refund_id) if refund_id else None,
        reason=reason,
        detail=detail,
        settled_amount=_settled(refund) if status in _SETTLING else None,
        fee=_decimal(refund.get("commission_fee")),
    )


#: Final statuses that paid something: before them more transactions may still complete; Failed paid nothing.
_SETTLING: Final = frozenset({RefundStatus.COMPLETED, RefundStatus.PARTIALLY_COMPLETED})


def _settled(refund: Mapping[str, Any]) -> Decimal | None:
    """The sum of the Completed transactions' amounts; None without transactions or with an unreadable one:
    a wrong sum would misstate what left the wallet."""
    transactions = refund.get("transactions")
    if not isinstance(transactions, list) or not transactions:
        return None
    total = Decimal(0)
    for tx in transactions:
        if not isinstance(tx, dict):
            return None
        if tx.get("status") == "Completed":
            amount = _decimal(tx.get("amount"))
            if amount is None:
                return None
            total += amount
    return total


# --- the adapter ---------------------------------------------------------------------------------

_TOKEN_ID = re.compile(r"[A-Z][A-Z0-9]*_[A-Z0-9][A-Z0-9_]*")  # fullmatch: `$` takes a trailing newline
REFUND_TYPES = ("Merchant", "Psp")
OPTIONAL_FIELDS = (
    "order_id",
    "merchant_id",
    "refund_type",
    "charge_merchant_fee",
    "merchant_fee_amount",
    "merchant_fee_token_id",
)


def _decimal(value: Any) -> Decimal | None:
    """A money value from spec.fields or a Cobo answer (JSON numbers read as Decimal): Decimal, int or plain
    decimal string; never float. None for anything else, "" included."""
    if isinstance(value, bool | float):
        return None
    if isinstance(value, str):
        try:
            return parse_plain_decimal(value)  # ASCII digits, bounded: no "1e-100000000" to format later
        except ValueError:
            return None
    return Decimal(value) if isinstance(value, Decimal | int) else None


@dataclass(frozen=True)
class CoboAdapter:
    name: str = NAME
    nonce_policy: NoncePolicy = NoncePolicy.TIMESTAMP
    nonce_unit: NonceUnit = NonceUnit.MS
    status_table: Mapping[str, RawStatus] = field(default_factory=lambda: STATUS_TABLE)
    # request_id is Cobo's idempotency key: a resend after a wrong "absent" is refused as a duplicate.
    settle_seconds: float = 10.0
    required_fields: tuple[str, ...] = ()

    # -- validation --

    def validate(self, spec: RefundSpec, account: Account) -> list[FieldError]:
        errors: list[FieldError] = []
        if not spec.refund_id or not spec.refund_id.strip():
            errors.append(FieldError("refund_id", "must not be empty (it is Cobo's request_id)"))
        errors += check_amount(spec.amount, max_places=2, field_name="amount")
        if not _TOKEN_ID.fullmatch(spec.currency or ""):
            errors.append(FieldError("currency", "must be a Cobo token id CHAIN_TOKEN, e.g. ETH_USDT"))
        else:
            problem = check_address(spec.destination, family_for_token(spec.currency))
            if problem:
                errors.append(FieldError("destination", problem))
        fields = spec.fields
        for name in fields:
            if name not in OPTIONAL_FIELDS:
                errors.append(FieldError(name, f"unknown field for cobo (known: {', '.join(OPTIONAL_FIELDS)})"))
        if "order_id" not in fields:
            errors.append(FieldError("order_id", "is required (the Cobo pay-in order this refund returns money from)"))
        for name in ("order_id", "merchant_id"):
            if name in fields and (not isinstance(fields[name], str) or not fields[name].strip()):
                errors.append(FieldError(name, "must be a non-empty string"))
        refund_type = fields.get("refund_type", account.option("refund_type", "Merchant"))
        if refund_type not in REFUND_TYPES:
            errors.append(FieldError("refund_type", "must be Merchant or Psp"))
        if "charge_merchant_fee" in fields:
            if not isinstance(fields["charge_merchant_fee"], bool):
                errors.append(FieldError("charge_merchant_fee", "must be true or false"))
            elif fields["charge_merchant_fee"] and refund_type != "Merchant":
                errors.append(FieldError("charge_merchant_fee", "only allowed with refund_type Merchant"))
        if "merchant_fee_amount" in fields:
            fee = _decimal(fields["merchant_fee_amount"])
            if fee is None:
                errors.append(
                    FieldError("merchant_fee_amount", 'must be a plain decimal string such as "1.50" (never a float)')
                )
            elif not fee > 0:
                errors.append(FieldError("merchant_fee_amount", "must be greater than zero"))
            elif spec.amount.is_finite() and fee >= spec.amount:
                errors.append(FieldError("merchant_fee_amount", "must be less than the refund amount"))
        if "merchant_fee_token_id" in fields and not _TOKEN_ID.fullmatch(str(fields["merchant_fee_token_id"])):
            errors.append(FieldError("merchant_fee_token_id", "must be a Cobo token id CHAIN_TOKEN, e.g. ETH_USDT"))
        return errors

    def exclusive_key(self, spec: RefundSpec) -> str | None:
        return None  # request_id is Cobo's idempotency key; several refunds per order are allowed

    # -- the original payment: Cobo's refund API reports no pay-in amount (spec §1), so the producer
    # says what was paid (`paid_amount`) the first time refundq sees the order --

    payment_rule: PaymentRule = PaymentRule.WITHIN
    reads_payment: bool = False

    def payment_key(self, spec: RefundSpec) -> str:
        return f"order:{spec.fields.get('order_id', '')}"

    def build_payment(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        raise NotImplementedError("cobo reports no pay-in amount")

    def parse_payment(self, spec: RefundSpec, account: Account, resp: Response) -> PaymentReading:
        raise NotImplementedError("cobo reports no pay-in amount")

    # -- requests --

    def create_body(self, spec: RefundSpec, account: Account) -> CreateRefundRequest:
        fields = spec.fields
        body: CreateRefundRequest = {"request_id": spec.request_id}
        merchant_id = fields.get("merchant_id", account.option("merchant_id"))
        if merchant_id:
            body["merchant_id"] = str(merchant_id)
        body["payable_amount"] = plain_decimal(spec.amount)
        body["to_address"] = spec.destination
        body["token_id"] = spec.currency
        body["refund_type"] = str(fields.get("refund_type", account.option("refund_type", "Merchant")))
        if fields.get("order_id"):
            body["order_id"] = str(fields["order_id"])
        if "charge_merchant_fee" in fields:
            body["charge_merchant_fee"] = bool(fields["charge_merchant_fee"])
        if "merchant_fee_amount" in fields:
            fee = _decimal(fields["merchant_fee_amount"])
            body["merchant_fee_amount"] = plain_decimal(fee) if fee is not None else str(fields["merchant_fee_amount"])
        if "merchant_fee_token_id" in fields:
            body["merchant_fee_token_id"] = str(fields["merchant_fee_token_id"])
        return body

    def _request(
        self,
        account: Account,
        method: str,
        endpoint: str,
        nonce: int,
        query: Mapping[str, Any] | None = None,
        body: str = "",
    ) -> Request:
        return signed_request(
            account.secret("api_private_key"),
            method,
            account.base_url.rstrip("/") + endpoint,
            SIGNED_PATH_PREFIX + endpoint,
            nonce,
            query,
            body,
        )

    def build_submit(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        # json.dumps defaults (", "/": " and \\uXXXX) as the SDK sends; the signed text is the sent text
        body = json.dumps(self.create_body(spec, account))
        return self._request(account, "POST", REFUNDS_PATH, nonce, body=body)

    def build_status(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        if not spec.provider_refund_id:
            return self.build_lookup(spec, account, nonce)  # parse_status reads the list shape too
        endpoint = f"{REFUNDS_PATH}/{quote(spec.provider_refund_id, safe='')}"
        return self._request(account, "GET", endpoint, nonce)

    def build_lookup(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        return self._request(account, "GET", REFUNDS_PATH, nonce, query={"request_id": spec.request_id})

    def build_update_address(self, spec: RefundSpec, account: Account, nonce: int, to_address: str) -> Request:
        """Answer PendingConfirmation: give the refund its destination (`PUT /payments/refunds/{id}`)."""
        if not spec.provider_refund_id:
            raise ValueError("cobo: setting an address needs the provider refund id")
        endpoint = f"{REFUNDS_PATH}/{quote(spec.provider_refund_id, safe='')}"
        return self._request(account, "PUT", endpoint, nonce, body=json.dumps({"to_address": to_address}))

    # -- responses --

    def _verified_json(self, resp: Response, account: Account, failure: ErrorKind) -> Any:
        """The body of a 2xx answer, only if Cobo's response signature verifies."""
        timestamp = resp.header("biz-timestamp")
        signature = resp.header("biz-resp-signature")
        public_key = str(account.require("response_public_key"))
        if not timestamp or not signature or not verify_response(public_key, resp.body, timestamp, signature):
            raise ProviderError(
                failure, "cobo: 2xx answer without a valid Biz-Resp-Signature", http_status=resp.status_code
            )
        data = _json(resp.body)
        if not isinstance(data, dict):
            raise ProviderError(failure, "cobo: 2xx answer is not a JSON object", http_status=resp.status_code)
        return data

    def _check_ours(self, spec: RefundSpec, refund: Mapping[str, Any], failure: ErrorKind) -> None:
        if refund.get("request_id") not in (None, spec.request_id):
            raise ProviderError(failure, "cobo: answer is about another request_id")

    def parse_submit(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult:
        if not 200 <= resp.status_code < 300:
            raise classify_error(resp)
        refund = self._verified_json(resp, account, ErrorKind.AMBIGUOUS)
        self._check_ours(spec, refund, ErrorKind.AMBIGUOUS)
        return to_status_result(refund)

    def parse_status(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult:
        if not 200 <= resp.status_code < 300:
            raise classify_error(resp, read=True)
        data = self._verified_json(resp, account, ErrorKind.RETRYABLE)
        if "data" in data and "status" not in data:  # list shape (build_status without a refund id)
            found = self._pick(spec, data)
            if found is None:
                # What a lookup takes for absence is, on a poll, a refund not visible yet: never REJECTED (a
                # list that lags behind the create would otherwise end a paid refund as "rejected").
                reason = "refund not visible yet: no refund with this request_id is listed"
                return StatusResult(RefundStatus.PENDING, NOT_LISTED, reason=reason)
            return found
        self._check_ours(spec, data, ErrorKind.RETRYABLE)
        return to_status_result(data)

    def parse_lookup(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult | None:
        """None only when Cobo's signed list for our request_id holds no refund with it (spec §3)."""
        if not 200 <= resp.status_code < 300:
            raise classify_error(resp, read=True)
        return self._pick(spec, self._verified_json(resp, account, ErrorKind.RETRYABLE))

    def _pick(self, spec: RefundSpec, data: Mapping[str, Any]) -> StatusResult | None:
        items = data.get("data")
        if not isinstance(items, list):
            raise ProviderError(ErrorKind.RETRYABLE, "cobo: list answer without a data array")
        # the server filters by request_id already; filter again so a broader answer cannot mislead us
        ours = [r for r in items if isinstance(r, dict) and r.get("request_id") == spec.request_id]
        return to_status_result(ours[0]) if ours else None

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, account: Account) -> StatusResult:
        timestamp = _header(headers, "Biz-Timestamp")
        signature = _header(headers, "Biz-Resp-Signature")
        public_key = str(account.require("response_public_key"))
        if not timestamp or not signature or not verify_response(public_key, body, timestamp, signature):
            raise ProviderError(ErrorKind.AUTH, "cobo: webhook signature does not verify")
        event = _json(body)
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict) or data.get("data_type") != "PaymentRefund":
            raise ProviderError(ErrorKind.REJECTED, "cobo: webhook is not a PaymentRefund event")
        return to_status_result(data)


ADAPTER = CoboAdapter()
