"""CoinVoyage vector rules (shared/providers/vectors/README.md §6). The checks call the production
signing code in providers/coinvoyage.py; they never re-implement it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers import coinvoyage as cv
from tests.vectorcheck import KindRule, rule


def _check_header(inputs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    # `inputs.body` is context: it is never passed to the signature (the body is not signed).
    signed = cv.sign_request(
        inputs["scheme"],
        inputs["api_key"],
        inputs["api_secret"],
        cv.seconds_from_ms(inputs["now_ms"]),
        inputs.get("method", ""),
        inputs.get("path", ""),
    )
    # The diagnostic helps locate a mismatch; the legacy one holds the secret, so it is never printed.
    diagnostic = expected.get("string_to_sign")
    hint = f" (we signed {signed.signed_text!r}, the vector {diagnostic!r})" if diagnostic is not None else ""
    assert signed.timestamp == expected["timestamp"], "timestamp differs"
    assert signed.signature == expected["signature"], f"signature differs{hint}"
    assert signed.header == expected["authorization_header"], "authorization_header differs"


def _check_webhook(inputs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    secret = inputs["webhook_secret"]
    raw = inputs["raw_body"].encode("utf-8")
    header = expected["CoinVoyage-Webhook-Signature"]
    assert cv.webhook_signature(secret, raw) == header, "computed webhook signature differs"
    assert cv.verify_webhook_signature(secret, raw, header) is expected["verify_valid"], "verify(raw_body)"
    # Present exactly together (README §6): one without the other is a malformed vector.
    assert ("tampered_raw_body" in inputs) == ("verify_tampered" in expected), (
        "tampered_raw_body and verify_tampered must be present together"
    )
    if "tampered_raw_body" in inputs:
        tampered = inputs["tampered_raw_body"].encode("utf-8")
        got = cv.verify_webhook_signature(secret, tampered, header)
        assert got is expected["verify_tampered"], "verify(tampered_raw_body)"


_SIGNED_EXPECTED = {"timestamp", "signature", "authorization_header"}
_HMAC_INPUTS = {"scheme", "api_key", "api_secret", "method", "path", "now_ms", "body"}

_HMAC = rule(_check_header, inputs=_HMAC_INPUTS, expected=_SIGNED_EXPECTED | {"string_to_sign"})

KINDS: dict[str, KindRule] = {
    "create_refund": _HMAC,
    "get_payorder": _HMAC,
    "list_payorders": _HMAC,
    "put_request": _HMAC,
    "legacy_sha512": rule(
        _check_header,
        inputs={"scheme", "api_key", "api_secret", "now_ms"},
        expected=_SIGNED_EXPECTED | {"string_to_hash"},
    ),
    "webhook_verify": rule(
        _check_webhook,
        inputs={"webhook_secret", "raw_body"},
        expected={"CoinVoyage-Webhook-Signature", "verify_valid"},
        optional_inputs={"tampered_raw_body"},
        optional_expected={"verify_tampered"},
    ),
}
