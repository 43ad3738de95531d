"""Producer input: shape first (pydantic), then the account and the provider's own rules.
Every error names the field and the rule; nothing is stored unless all of it passes.

Every string anywhere in a request (values and keys, at any depth of `fields`) is refused when it
holds a control character (C0, DEL, C1) or a lone surrogate, and every field is bounded, so
nothing a producer sends can fail at the database instead of here. Limits of `fields` (a JSON
object stored as is): at most MAX_ITEMS keys per object and items per list, keys of at most
MAX_KEY_CHARS characters, strings of at most MAX_STRING_CHARS, MAX_DEPTH levels of nesting
(`fields` itself is level 1), MAX_VALUES values in all, integers within +-(2**53 - 1) and
finite floats only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.account_policy import allowlist, allowlist_key, approval_threshold
from config.accounts import Account, AccountConfigError, Accounts
from providers import PROVIDERS, get_adapter
from providers.base import FieldError, RefundSpec, parse_plain_decimal
from worker.text import CONTROL, escape_controls

MAX_ITEMS = 32
MAX_KEY_CHARS = 64
MAX_STRING_CHARS = 1_000
MAX_DEPTH = 4
MAX_VALUES = 256
MAX_INT = 2**53 - 1  # exact in every JSON reader (I-JSON, RFC 7493)
CONTROL_RULE = "must not contain control characters (C0, DEL, C1) or lone surrogates"


def _fits_numeric(value: Decimal) -> Decimal:
    """NUMERIC(38, 18) in the database: refuse what it would round instead of rounding. Read off
    the exponent, never formatted: format(Decimal('1e100000000'), 'f') takes 0.3 s and 200 MB."""
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if not value:
        return value
    top = value.adjusted()  # the power of ten of the first digit
    significant = len(bytes(value.as_tuple().digits).rstrip(b"\0"))  # trailing zeros do not count
    if top >= 20 or significant - top - 1 > 18:
        raise ValueError("at most 20 digits before and 18 after the decimal point")
    return value


class RefundRequest(BaseModel):
    """What a producer sends, through either door. Strict types: no bool as a number, no bytes as a string."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    idempotency_key: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+\z")
    provider: str = Field(max_length=32)
    account: str = Field(min_length=1, max_length=100)
    amount: Decimal
    # What the customer paid for the original payment (worker/ceiling.py): required the first time
    # refundq sees a payment of a provider that does not report it.
    paid_amount: Decimal | None = None
    currency: str = Field(min_length=1, max_length=32)
    destination: str = Field(max_length=200)
    fields: dict[str, Any] = Field(default_factory=dict)
    deadline_hours: float | None = Field(default=None, gt=0, le=24 * 90)

    @field_validator("amount", "paid_amount", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> Decimal | None:
        if value is None:
            return value  # only paid_amount may be absent: amount is required by its type
        # Floats have already lost cents by the time they reach us (0.1 + 0.2); refuse them.
        if isinstance(value, bool | float):
            raise ValueError('must be a decimal string such as "12.50", not a float')
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise ValueError("at most 20 digits before and 18 after the decimal point")
            value = Decimal(value)
        elif isinstance(value, str):
            value = parse_plain_decimal(value)
        elif not isinstance(value, Decimal):
            raise ValueError(f"must be a decimal string, not {type(value).__name__}")
        return _fits_numeric(value)

    @field_validator("deadline_hours", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> Any:
        # A CSV cell is text: the same plain decimal rule as amounts. true is not 1 hour.
        if isinstance(value, bool):
            raise ValueError("must be a number of hours, not true/false")
        if isinstance(value, str):
            return float(parse_plain_decimal(value))
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise ValueError("must be at most 2160 (90 days)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number (no NaN or Infinity)")
        return value

    def spec(self, refund_id: str) -> RefundSpec:
        return RefundSpec(
            refund_id=refund_id,
            amount=self.amount,
            currency=self.currency,
            destination=self.destination,
            fields=self.fields,
        )


class ValidationFailed(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("invalid refund: " + "; ".join(str(e) for e in errors))


def _label(path: str, key: str) -> str:
    """A key as part of a field name in an error: shown, so never raw control characters or 1 MB."""
    shown = escape_controls(key[:MAX_KEY_CHARS]) + ("..." if len(key) > MAX_KEY_CHARS else "")
    return f"{path}.{shown}" if path else shown


def _string_rule(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"must be at most {limit} characters"
    return CONTROL_RULE if CONTROL.search(text) else None


def _check_fields(fields: Mapping[Any, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    count = 0

    def walk(item: Any, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            return  # said once, below
        if isinstance(item, str):
            if rule := _string_rule(item, MAX_STRING_CHARS):
                errors.append(FieldError(path, rule))
        elif item is None or isinstance(item, bool):
            pass
        elif isinstance(item, int):
            if abs(item) > MAX_INT:
                errors.append(FieldError(path, "integers must be within +-(2**53 - 1)"))
        elif isinstance(item, float):
            if not math.isfinite(item):
                errors.append(FieldError(path, "must be a finite number (no NaN or Infinity)"))
        elif isinstance(item, Mapping | list):
            if depth > MAX_DEPTH:
                errors.append(FieldError(path, f"at most {MAX_DEPTH} levels of nesting in fields"))
            elif len(item) > MAX_ITEMS:
                errors.append(FieldError(path, f"at most {MAX_ITEMS} keys or items"))
            elif isinstance(item, list):
                for i, inner in enumerate(item):
                    walk(inner, f"{path}[{i}]", depth + 1)
            else:
                for key, inner in item.items():
                    if not isinstance(key, str):
                        errors.append(FieldError(path, "keys must be strings"))
                    elif rule := _string_rule(key, MAX_KEY_CHARS):
                        errors.append(FieldError(_label(path, key), f"key {rule}"))
                    else:
                        walk(inner, _label(path, key), depth + 1)
        else:
            errors.append(FieldError(path, f"must be a JSON value, not {type(item).__name__}"))

    walk(fields, "fields", 1)
    if count > MAX_VALUES:
        errors.append(FieldError("fields", f"at most {MAX_VALUES} values in all"))
    return errors


def _check_strings(data: Mapping[Any, Any]) -> list[FieldError]:
    """What the model's types do not say: control characters anywhere, and the limits of `fields`."""
    errors: list[FieldError] = []
    for key, value in data.items():
        if key == "fields" and isinstance(value, Mapping):
            errors += _check_fields(value)
        elif isinstance(key, str) and isinstance(value, str) and CONTROL.search(value):
            errors.append(FieldError(_label("", key), CONTROL_RULE))
    return errors


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors():
        field = ".".join(_label("", str(p)) for p in err["loc"]) or "request"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "is not a known field"
        elif err["type"] == "missing":
            message = "is required"
        out.append(FieldError(field, message))
    return out


def parse_request(data: RefundRequest | Mapping[str, Any]) -> RefundRequest:
    if isinstance(data, RefundRequest):
        # Built in-process, it skipped the checks below: a RefundRequest proves nothing on its own.
        data = {name: getattr(data, name) for name in RefundRequest.model_fields}
    if not isinstance(data, Mapping):
        raise ValidationFailed([FieldError("request", f"must be a JSON object, not {type(data).__name__}")])
    errors = _check_strings(data)
    try:
        request = RefundRequest.model_validate(dict(data))
    except ValidationError as exc:
        named = {e.field for e in errors}
        errors += [e for e in _pydantic_errors(exc) if e.field not in named]
    if errors:
        raise ValidationFailed(errors)
    return request


def validate(request: RefundRequest, accounts: Accounts) -> list[FieldError]:
    if request.provider not in PROVIDERS:
        return [FieldError("provider", f"must be one of {', '.join(PROVIDERS)}")]
    account = accounts.get(request.account)
    if account is None:
        return [FieldError("account", f"unknown account {request.account!r}")]
    if account.provider != request.provider:
        return [FieldError("account", f"account {request.account!r} belongs to provider {account.provider!r}")]
    errors = [] if request.destination else [FieldError("destination", "must not be empty")]
    if request.paid_amount is not None and not request.paid_amount > 0:
        errors.append(FieldError("paid_amount", "must be greater than zero"))
    try:
        errors += get_adapter(request.provider).validate(request.spec("validation"), account)
        errors += _account_policy(request, account)
    except AccountConfigError as exc:
        errors.append(FieldError("account", str(exc)))
    # One error per field is enough to act on; keep the first.
    seen: set[str] = set()
    return [e for e in errors if not (e.field in seen or seen.add(e.field))]  # type: ignore[func-returns-value]


def _account_policy(request: RefundRequest, account: Account) -> list[FieldError]:
    """The account's own destination rules (config/account_policy.py); its threshold is read here
    too, so a bad one in an account built by hand is refused before anything is stored."""
    approval_threshold(account, request.currency)
    allowed = allowlist(account)
    if allowed is not None and request.destination and allowlist_key(request.destination) not in allowed:
        return [FieldError("destination", f"not on account {account.name!r}'s allow-list")]
    return []


def check(data: RefundRequest | Mapping[str, Any], accounts: Accounts) -> RefundRequest:
    request = parse_request(data)
    errors = validate(request, accounts)
    if errors:
        raise ValidationFailed(errors)
    return request
