"""Cobo vector rules (shared/providers/vectors/README.md §5), checked against providers/cobo.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers import cobo
from tests.vectorcheck import KindRule, rule

AUTH_HEADERS = frozenset({"Biz-Api-Key", "Biz-Api-Nonce", "Biz-Api-Signature"})

# §5 marks no key optional, so every listed key must be present (rule 3); `url`/`sdk_call` are context
# and `string_to_sign`/`digest_sha256d_hex` diagnostics: present, compared only to locate a mismatch.
REQUEST_INPUTS = {
    "api_private_key_hex",
    "method",
    "path",
    "query_params",
    "timestamp_ms",
    "body",
    "url",
    "sdk_call",
}
REQUEST_EXPECTED = {"headers", "sent_body", "string_to_sign", "digest_sha256d_hex"}


def check_request(inputs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    query_params = inputs["query_params"]
    assert isinstance(query_params, dict), "inputs.query_params must be an object"
    assert isinstance(inputs["timestamp_ms"], int), "inputs.timestamp_ms must be a JSON integer"
    request = cobo.signed_request(
        inputs["api_private_key_hex"],
        inputs["method"],
        "https://cobo.invalid" + inputs["path"],  # the host is context; only the path is signed
        inputs["path"],
        inputs["timestamp_ms"],
        query_params,
        inputs["body"],
    )
    # diagnostics first: they locate a mismatch better than a signature does
    query = cobo.encode_query(query_params)
    text = cobo.string_to_sign(inputs["method"], inputs["path"], inputs["timestamp_ms"], query, inputs["body"])
    assert text == expected["string_to_sign"], "string_to_sign differs"
    assert cobo.sha256d(text.encode("utf-8")).hex() == expected["digest_sha256d_hex"].lower(), "digest differs"

    headers = expected["headers"]
    assert isinstance(headers, dict), "expected.headers must be an object"
    missing, unknown = AUTH_HEADERS - set(headers), set(headers) - AUTH_HEADERS
    assert not missing, f"expected.headers: missing members {sorted(missing)}"
    assert not unknown, f"expected.headers: unknown members {sorted(unknown)} (a new rule is needed)"
    sent_auth = {k: v for k, v in request.headers.items() if k.lower().startswith("biz-")}
    assert set(sent_auth) == AUTH_HEADERS, f"request carries auth headers {sorted(sent_auth)}"
    for name in sorted(AUTH_HEADERS):
        want = headers[name]
        got = sent_auth[name]
        if name != "Biz-Api-Nonce":  # hex: compare in lower case
            want, got = want.lower(), got.lower()
        assert got == want, f"header {name}: got {got!r}, want {want!r}"

    sent_body = expected["sent_body"]
    if sent_body is None:
        assert request.body is None, "the request must carry no body"
    else:
        assert request.body == sent_body.encode("utf-8"), "sent body differs"
    # the query sent is the query signed
    assert request.url.partition("?")[2] == query


def check_webhook(inputs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    key = inputs["cobo_public_key_hex"]
    timestamp = inputs["header_Biz-Timestamp"]
    signature = inputs["header_Biz-Resp-Signature"]
    raw = inputs["raw_body"].encode("utf-8")
    assert inputs["raw_body"] + "|" + timestamp == expected["signed_content"], "signed_content differs"
    digest = cobo.sha256d(raw + b"|" + timestamp.encode("utf-8")).hex()
    assert digest == expected["digest_sha256d_hex"].lower(), "digest differs"
    assert isinstance(expected["verify_valid"], bool) and isinstance(expected["verify_tampered"], bool)
    valid = cobo.verify_response(key, raw, timestamp, signature)
    tampered = cobo.verify_response(key, inputs["tampered_raw_body"].encode("utf-8"), timestamp, signature)
    assert valid is expected["verify_valid"], f"verify(raw_body) is {valid}"
    assert tampered is expected["verify_tampered"], f"verify(tampered_raw_body) is {tampered}"


def _request_rule() -> KindRule:
    return rule(check_request, inputs=REQUEST_INPUTS, expected=REQUEST_EXPECTED)


KINDS: dict[str, KindRule] = {
    kind: _request_rule()
    for kind in (
        "create_refund",
        "get_refund",
        "list_refunds",
        "update_refund",
        "cancel_refund",
        "create_refund_link",
    )
}
KINDS["webhook_verify"] = rule(
    check_webhook,
    inputs={
        "cobo_public_key_hex",
        "raw_body",
        "header_Biz-Timestamp",
        "header_Biz-Resp-Signature",
        "tampered_raw_body",
        "simulated_cobo_private_key_hex",  # informational: required by rule 3, never used
    },
    expected={"verify_valid", "verify_tampered", "signed_content", "digest_sha256d_hex"},
)
