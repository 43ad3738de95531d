"""The provider adapter contract: unified statuses, wire types, errors.

Adapters are pure: they build `Request`s and parse `Response`s. They never do I/O, never
touch the database, Celery or Redis. One transport in `worker/transport.py` sends every
request, so timeouts, pooling, redaction and metrics live in one place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from config.accounts import Account
from config.logging import redact


class RefundStatus(StrEnum):
    # Above the account's approval threshold: held, never sent, until a person approves it.
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    SUBMITTING = "submitting"
    UNKNOWN = "unknown"
    PENDING = "pending"
    PROCESSING = "processing"
    ACTION_REQUIRED = "action_required"
    PARTIALLY_COMPLETED = "partially_completed"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    NEEDS_ATTENTION = "needs_attention"
    CANCELLED = "cancelled"


class NoncePolicy(StrEnum):
    NONE = "none"  # no nonce at all (Cryptomus)
    TIMESTAMP = "timestamp"  # a current clock reading in `nonce_unit` (Cobo ms, CoinVoyage s)
    INCREASING = "increasing"  # strictly increasing per API key, shared by every worker (CoinCorner)


class NonceUnit(StrEnum):
    S = "s"
    MS = "ms"
    US = "us"


class ErrorKind(StrEnum):
    RETRYABLE = "retryable"  # nothing happened at the provider; safe to send again later
    RATE_LIMITED = "rate_limited"  # like retryable, honour retry_after
    NONCE = "nonce"  # the provider refused the nonce; not executed; re-sign with a fresh one
    AUTH = "auth"  # credentials/signature refused: a send becomes rejected (never loops); reads
    # back off until the deadline, so fixing the account's keys resumes them
    REJECTED = "rejected"  # the provider refused the refund itself (validation, balance, ...)
    AMBIGUOUS = "ambiguous"  # may or may not have been executed: look it up before any resend
    UNMAPPED = "unmapped"  # the provider answered with a status we do not know
    # A read whose answer cannot tell whether our refund exists (yet): never taken as "absent" or
    # "refused". The worker asks again later and hands the refund to an operator at its deadline.
    UNSURE = "unsure"


class ProviderError(Exception):
    """A provider answered, and the answer means the operation did not (certainly) succeed."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        raw_status: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.retry_after = retry_after
        self.raw_status = raw_status
        self.http_status = http_status

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        http = f" (HTTP {self.http_status})" if self.http_status else ""
        return f"{self.kind}{code}{http}: {self.message}"


class LookupNextPage(Exception):
    """From parse_lookup: not on this page, and a later page may hold it. The worker asks again
    with `RefundSpec.lookup_page` set to `page`; "absent" is only ever said when it is certain."""

    def __init__(self, page: int) -> None:
        super().__init__(f"continue the lookup on page {page}")
        self.page = page


class UnmappedStatusError(ProviderError):
    """An undocumented provider status. Never silently mapped: the refund goes to needs_attention."""

    def __init__(self, provider: str, raw_status: str) -> None:
        super().__init__(ErrorKind.UNMAPPED, f"{provider}: undocumented status {raw_status!r}", raw_status=raw_status)


@dataclass(frozen=True)
class FieldError:
    field: str
    rule: str

    def __str__(self) -> str:
        # Rules may quote what the producer sent; a producer may have sent a secret.
        return redact(f"{self.field}: {self.rule}")


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None = None


@dataclass(frozen=True)
class Response:
    status_code: int
    headers: Mapping[str, str]  # keys lower-cased by the transport
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class RefundSpec:
    """What an adapter knows about one refund. `refund_id` is refundq's id and our idempotency
    key towards the provider where it has one (Cobo `request_id`, CoinVoyage metadata)."""

    refund_id: str
    amount: Decimal
    currency: str  # token id (Cobo `ETH_USDT`) or invoice currency (CoinCorner `GBP`)
    destination: str
    fields: Mapping[str, Any] = field(default_factory=dict)  # provider-specific request fields
    provider_refund_id: str | None = None
    created_at: datetime | None = None  # when refundq accepted it: no provider record can be older
    lookup_page: int = 0  # for lookups that page through a provider's list (LookupNextPage)
    # A retry's first attempt (refundq id). A provider that deduplicates by refundq's id (Cobo
    # `request_id`) must see that id again, so it refuses a second payment of the same refund.
    original_id: str | None = None

    @property
    def request_id(self) -> str:
        """The id a provider deduplicates on: the first attempt's, for every retry of it."""
        return self.original_id or self.refund_id


@dataclass(frozen=True)
class StatusResult:
    """The provider's view of one refund, mapped onto a unified status; raw status kept verbatim."""

    status: RefundStatus
    raw_status: str
    provider_refund_id: str | None = None
    reason: str | None = None  # failed_reason, what action is required, ...
    detail: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"action_url": ...}, reported amounts
    # Other provider records that carry our id (a lookup that found more than one): a duplicate.
    others: tuple[str, ...] = ()
    # What the provider reports it actually paid out for this refund, and its fee, where it says
    # (Cobo: the completed transactions of a PartiallyCompleted refund). None: not reported.
    settled_amount: Decimal | None = None
    fee: Decimal | None = None


class PaymentRule(StrEnum):
    """How a refund's amount relates to what the customer paid (the payment's refundable amount)."""

    WITHIN = "within"  # refunds of one payment add up to at most what was paid (partial refunds allowed)
    WHOLE = "whole"  # the provider refunds the whole payment (Cryptomus): the amount must equal it


@dataclass(frozen=True)
class PaymentReading:
    """What the provider reports about the original payment a refund returns money from."""

    key: str  # the canonical payment key (Adapter.payment_key form), e.g. "invoice:<uuid>"
    amount: Decimal  # what the customer paid: the most all refunds of it may return
    currency: str
    detail: Mapping[str, Any] = field(default_factory=dict)  # the provider's fields, for the event


class Reading(StrEnum):
    """What one raw provider status says about our refund. Each provider has ONE table
    raw status -> RawStatus, and both its poll (parse_status) and its lookup (parse_lookup) read it:

    - REFUND: a refund of ours exists, in `RawStatus.status`. Poll and lookup return that status.
    - NO_REFUND: the provider shows no refund on the record (yet). Poll: PENDING "not visible yet"
      (we hold its acceptance; the deadline applies). Lookup: the proof of absence; the worker trusts
      it only after the account's settle time since the last ambiguous send.
    - UNSURE: the record is in a state that cannot tell (a payment still in progress): poll and
      lookup raise ProviderError(UNSURE): ask again later, an operator at the deadline.
    - CONTRADICTS: a final record state that no refund of ours can be in (cancelled, expired):
      poll and lookup return NEEDS_ATTENTION. Never REJECTED: nobody knows where the money went.
    """

    REFUND = "refund"
    NO_REFUND = "no_refund"
    UNSURE = "unsure"
    CONTRADICTS = "contradicts"


@dataclass(frozen=True)
class RawStatus:
    reading: Reading
    status: RefundStatus | None = None  # REFUND only
    text: str = ""  # the provider's own words for it

    def __post_init__(self) -> None:
        if (self.reading is Reading.REFUND) != (self.status is not None):
            raise ValueError("a status goes with Reading.REFUND, and only with it")


class Adapter(Protocol):
    name: str
    nonce_policy: NoncePolicy
    nonce_unit: NonceUnit
    #: raw status -> what it says about our refund; parse_status and parse_lookup both read it
    status_table: Mapping[str, RawStatus]
    #: seconds after an ambiguous send before a lookup's "absent" is believed (a provider may
    #: execute a create it received seconds after the client gave up). Long where the provider
    #: has no idempotency key of ours; an account may override it (option `settle_seconds`).
    settle_seconds: float
    #: fields the producer must give in RefundSpec.fields (names, for validation messages and docs)
    required_fields: tuple[str, ...]

    def validate(self, spec: RefundSpec, account: Account) -> list[FieldError]: ...

    def exclusive_key(self, spec: RefundSpec) -> str | None:
        """A key of which at most one live refund may exist per account (one refund per invoice)."""
        ...

    #: WHOLE where the provider's refund call carries no amount and returns the whole payment
    payment_rule: PaymentRule
    #: True when the provider reports what was paid (build_payment / parse_payment); else the
    #: producer must say it (`paid_amount`) the first time refundq sees the payment
    reads_payment: bool

    def payment_key(self, spec: RefundSpec) -> str:
        """The original payment this refund returns money from, one key per payment and account
        (e.g. "order:<order_id>"); the ceiling is kept per key. Validation ensures it exists."""
        ...

    def build_payment(self, spec: RefundSpec, account: Account, nonce: int) -> Request:
        """Read the original payment (reads_payment only)."""
        ...

    def parse_payment(self, spec: RefundSpec, account: Account, resp: Response) -> PaymentReading:
        """ProviderError(REJECTED) when the provider says the payment does not exist; RETRYABLE /
        AUTH / RATE_LIMITED as for any read."""
        ...

    def build_submit(self, spec: RefundSpec, account: Account, nonce: int) -> Request: ...
    def parse_submit(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult: ...
    def build_status(self, spec: RefundSpec, account: Account, nonce: int) -> Request: ...
    def parse_status(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult: ...
    def build_lookup(self, spec: RefundSpec, account: Account, nonce: int) -> Request: ...
    def parse_lookup(self, spec: RefundSpec, account: Account, resp: Response) -> StatusResult | None:
        """None only when the answer proves the provider has no refund for our key (the module
        docstring says which answer that is); the worker adds the settle time. A found refund with
        `others` set is a duplicate. An answer that cannot tell raises ProviderError(UNSURE)."""
        ...

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, account: Account) -> StatusResult:
        """Raises ProviderError(AUTH) when the signature does not verify."""
        ...


def decimal_places(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def plain_decimal(amount: Decimal) -> str:
    """'10.50', never '1.05E+1'."""
    return format(amount, "f")


# ASCII digits only: \d would also take "١٢" or "１２", which Decimal() reads as 12.
_PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_NUMBER_CHARS = 64  # "12.50" with room for trailing zeros; bounds the work on a hostile string


def parse_plain_decimal(text: str) -> Decimal:
    """A money string as producers must write it; ValueError names the rule it breaks."""
    # Length first: Decimal() of a long string costs time and memory before it can be refused.
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"must be at most {MAX_NUMBER_CHARS} characters")
    if text.startswith("-") and _PLAIN_DECIMAL.fullmatch(text[1:]):
        raise ValueError("must be greater than zero")
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise ValueError('must be a plain decimal string such as "12.50" (ASCII digits; no sign, exponent or spaces)')
    return Decimal(text)


def check_amount(amount: Decimal, *, max_places: int, field_name: str = "amount") -> list[FieldError]:
    if not amount.is_finite():
        return [FieldError(field_name, "must be a finite number")]
    if amount <= 0:
        return [FieldError(field_name, "must be greater than zero")]
    if decimal_places(amount.normalize()) > max_places:
        return [FieldError(field_name, f"at most {max_places} decimal places")]
    return []


def json_dumps(value: Any) -> str:
    """Compact JSON where a Decimal becomes a JSON number written from its own text (never a float)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("a JSON number must be finite")
        return plain_decimal(value)
    if isinstance(value, float):
        raise TypeError("floats are not written: use Decimal for amounts")
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}:{json_dumps(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(json_dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def json_loads(body: bytes) -> Any:
    """Parse an answer keeping numbers exact (`ui_amount` etc. become Decimal). None if not JSON."""
    try:
        return json.loads(body, parse_float=Decimal) if body else None
    except ValueError:
        return None


def json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def read_status(table: Mapping[str, RawStatus], provider: str, raw: str) -> RawStatus:
    """The table's entry for a raw status; an undocumented one is an error, never a guess."""
    try:
        return table[raw]
    except KeyError:
        raise UnmappedStatusError(provider, raw) from None
