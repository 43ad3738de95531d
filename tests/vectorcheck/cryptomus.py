"""Cryptomus vector rules (shared/providers/vectors/README.md §7). The checks call the production code in
providers/cryptomus.py (PHP-style encoder, signer, request assembly, webhook verification); they never
re-implement the algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import SecretStr

from config.accounts import Account
from providers import cryptomus as cm
from providers.base import ErrorKind, ProviderError
from tests.vectorcheck import KindRule, rule

_HEADERS_REQUIRED = {"merchant", "sign"}
_HEADERS_OPTIONAL = {"Content-Type"}


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _check_request(inputs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    # url, method, query_params and sdk_call are context: query parameters are not signed.
    body: str = inputs["body"]
    if "data" in inputs:
        # Official PHP SDK vectors: our encoder must produce exactly the body the SDK sent, and the request we
        # build from `data` must carry those bytes.
        encoded = cm.php_json_encode(inputs["data"])
        assert encoded == body, f"PHP-style encoding differs: ours {encoded!r}, the vector {body!r}"
        request = cm.json_request(inputs["url"], inputs["merchant"], inputs["api_key"], inputs["data"])
    else:
        request = cm.signed_request(inputs["url"], inputs["merchant"], inputs["api_key"], body.encode("utf-8"))
    assert request.body == body.encode("utf-8"), "the request body is not the vector's body byte for byte"
    assert request.method == "POST"

    sign = str(expected["sign"]).lower()
    assert cm.sign_body(body.encode("utf-8"), inputs["api_key"]) == sign, "sign differs"

    headers = expected["headers"]
    assert isinstance(headers, dict), "expected.headers must be an object"
    missing = _HEADERS_REQUIRED - set(headers)
    unknown = set(headers) - _HEADERS_REQUIRED - _HEADERS_OPTIONAL
    assert not missing, f"expected.headers: missing keys {sorted(missing)}"
    assert not unknown, f"expected.headers: unknown keys {sorted(unknown)} (a new rule is needed)"
    assert headers["merchant"] == inputs["merchant"], "expected.headers.merchant must equal inputs.merchant"
    assert request.headers["merchant"] == headers["merchant"], "merchant header differs"
    assert request.headers["sign"] == str(headers["sign"]).lower(), "sign header differs"
    assert request.headers["sign"] == sign, "sign header differs from expected.sign"
    if "Content-Type" in headers:
        assert _media_type(headers["Content-Type"]) == "application/json", "vector media type is not JSON"
        assert _media_type(request.headers["Content-Type"]) == "application/json", "request media type"


def _check_webhook(inputs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    key, raw, tampered = inputs["api_key"], inputs["raw_body"], inputs["tampered_raw_body"]
    _, computed, signed = cm.webhook_signature(raw.encode("utf-8"), key)
    # signed_json_without_sign is diagnostic: shown on a mismatch, not compared on its own.
    assert computed == str(expected["sign"]).lower(), (
        f"computed sign differs; we hashed {signed!r}, the vector {expected['signed_json_without_sign']!r}"
    )
    assert cm.verify_webhook_signature(raw.encode("utf-8"), key) is expected["verify_valid"], "verify(raw_body)"
    got = cm.verify_webhook_signature(tampered.encode("utf-8"), key)
    assert got is expected["verify_tampered"], "verify(tampered_raw_body)"
    if expected["verify_tampered"] is False:
        # The adapter entry point refuses it too, as an AUTH error.
        account = Account("vector", "cryptomus", "http://sandbox.invalid", secrets={"api_key": SecretStr(key)})
        with pytest.raises(ProviderError) as refused:
            cm.ADAPTER.verify_webhook({}, tampered.encode("utf-8"), account)
        assert refused.value.kind == ErrorKind.AUTH


_REQUEST = rule(
    _check_request,
    inputs={"merchant", "api_key", "body", "method", "url"},
    expected={"sign", "headers"},
    optional_inputs={"data", "query_params", "sdk_call"},
)

KINDS: dict[str, KindRule] = {
    "create_refund": _REQUEST,
    "payment_info": _REQUEST,
    "payment_list": _REQUEST,
    "empty_params": _REQUEST,
    "webhook_verify": rule(
        _check_webhook,
        inputs={"api_key", "raw_body", "tampered_raw_body"},
        expected={"sign", "signed_json_without_sign", "verify_valid", "verify_tampered"},
    ),
}
