"""Producer input: shape first (pydantic), then the account and the provider's own rules.
Every error names the field and the rule; nothing is stored unless all of it passes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.accounts import AccountConfigError, Accounts
from providers import PROVIDERS, get_adapter
from providers.base import FieldError, RefundSpec

_PLAIN_DECIMAL = re.compile(r"^\d+(\.\d+)?$")


class RefundRequest(BaseModel):
    """What a producer sends, through either door."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency_key: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")
    provider: str
    account: str = Field(min_length=1, max_length=100)
    amount: Decimal
    currency: str = Field(min_length=1, max_length=32)
    destination: str = Field(max_length=200)
    fields: dict[str, Any] = Field(default_factory=dict)
    deadline_hours: float | None = Field(default=None, gt=0, le=24 * 90)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> Decimal:
        # Floats have already lost cents by the time they reach us (0.1 + 0.2); refuse them.
        if isinstance(value, bool | float):
            raise ValueError('must be a decimal string such as "12.50", not a float')
        if isinstance(value, int):
            value = Decimal(value)
        elif isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError("must be a finite number")
        elif isinstance(value, str):
            text = value.strip()
            if text.startswith("-") and _PLAIN_DECIMAL.match(text[1:]):
                raise ValueError("must be greater than zero")
            if not _PLAIN_DECIMAL.match(text):
                raise ValueError('must be a plain decimal string such as "12.50" (no sign, exponent or spaces)')
            try:
                value = Decimal(text)
            except InvalidOperation:
                raise ValueError("is not a decimal number") from None
        else:
            raise ValueError(f"must be a decimal string, not {type(value).__name__}")
        # NUMERIC(38, 18) in the database: refuse what it would round instead of rounding.
        whole, _, frac = format(value, "f").partition(".")
        if len(whole.lstrip("-")) > 20 or len(frac.rstrip("0")) > 18:
            raise ValueError("at most 20 digits before and 18 after the decimal point")
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


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "request"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "is not a known field"
        elif err["type"] == "missing":
            message = "is required"
        out.append(FieldError(field, message))
    return out


def parse_request(data: RefundRequest | Mapping[str, Any]) -> RefundRequest:
    if isinstance(data, RefundRequest):
        return data
    if not isinstance(data, Mapping):
        raise ValidationFailed([FieldError("request", f"must be a JSON object, not {type(data).__name__}")])
    try:
        return RefundRequest.model_validate(dict(data))
    except ValidationError as exc:
        raise ValidationFailed(_pydantic_errors(exc)) from None


def validate(request: RefundRequest, accounts: Accounts) -> list[FieldError]:
    if request.provider not in PROVIDERS:
        return [FieldError("provider", f"must be one of {', '.join(PROVIDERS)}")]
    account = accounts.get(request.account)
    if account is None:
        return [FieldError("account", f"unknown account {request.account!r}")]
    if account.provider != request.provider:
        return [FieldError("account", f"account {request.account!r} belongs to provider {account.provider!r}")]
    errors = [] if request.destination else [FieldError("destination", "must not be empty")]
    try:
        errors += get_adapter(request.provider).validate(request.spec("validation"), account)
    except AccountConfigError as exc:
        errors.append(FieldError("account", str(exc)))
    # One error per field is enough to act on; keep the first.
    seen: set[str] = set()
    return [e for e in errors if not (e.field in seen or seen.add(e.field))]  # type: ignore[func-returns-value]


def check(data: RefundRequest | Mapping[str, Any], accounts: Accounts) -> RefundRequest:
    request = parse_request(data)
    errors = validate(request, accounts)
    if errors:
        raise ValidationFailed(errors)
    return request
