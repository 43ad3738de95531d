"""CoinCorner vector rules (shared/providers/vectors/README.md §4).

All three kinds share one rule: the signature, the JSON body object and the form body are produced by the
production code (`providers.coincorner`), through the same `build_call` the adapter sends with, and compared
exactly. `alt_signature_userid_not_lowercased` is informational: allowed as a key, never reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from config.accounts import Account
from providers import coincorner
from tests.vectorcheck import KindRule, rule

INPUTS = {"api_key", "api_secret", "user_id", "nonce", "params", "endpoint", "method"}
EXPECTED = {"message", "signature", "form_body", "json_body"}
OPTIONAL_EXPECTED = {"alt_signature_userid_not_lowercased"}


def _check(endpoint_name: str) -> Any:
    def check(inputs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
        api_key, api_secret, user_id = inputs["api_key"], inputs["api_secret"], inputs["user_id"]
        nonce, params = inputs["nonce"], inputs["params"]
        assert isinstance(nonce, int) and not isinstance(nonce, bool), "inputs.nonce must be a JSON integer"
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), "params: strings"
        # context: the kind names the endpoint, the method is POST
        assert inputs["method"] == "POST"
        assert str(inputs["endpoint"]).rstrip("/").rsplit("/", 1)[-1] == endpoint_name

        # diagnostic, compared because it pinpoints a mismatch
        assert coincorner.signing_message(nonce, user_id, api_key) == expected["message"]
        signature = coincorner.sign(nonce, user_id, api_key, api_secret)
        assert signature == expected["signature"].lower()

        body = coincorner.json_body(api_key, api_secret, user_id, nonce, params)
        assert body == expected["json_body"]
        assert list(body) == list(expected["json_body"])  # same members, in wire order
        assert coincorner.form_body(api_key, api_secret, user_id, nonce, params) == expected["form_body"]

        # The request the adapter really sends (an Account built from the vector's inputs).
        base_url, _, _ = str(inputs["endpoint"]).rstrip("/").rpartition("/")
        account = Account(
            name="vector",
            provider="coincorner",
            base_url=base_url,
            secrets={"api_key": SecretStr(api_key), "api_secret": SecretStr(api_secret)},
            options={"user_id": user_id},
        )
        request = coincorner.build_call(account, endpoint_name, params, nonce)
        assert request.method == "POST"
        assert request.url == str(inputs["endpoint"]).rstrip("/")
        assert request.headers["Content-Type"] == coincorner.FORM_CONTENT_TYPE
        assert request.body == expected["form_body"].encode("utf-8")

    return check


def _rule(endpoint_name: str) -> KindRule:
    return rule(_check(endpoint_name), inputs=INPUTS, expected=EXPECTED, optional_expected=OPTIONAL_EXPECTED)


KINDS: dict[str, KindRule] = {
    "refund_order": _rule(coincorner.REFUND_ORDER),
    "check_order": _rule(coincorner.CHECK_ORDER),
    "get_order": _rule(coincorner.GET_ORDER),
}
