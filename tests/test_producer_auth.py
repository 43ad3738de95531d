"""Door (b) producer signatures: canonical bytes (checked against node), sign/authorize, garbage."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads
from pydantic import SecretStr

from config.producers import Producer, Producers
from providers.base import FieldError
from worker.producer_auth import authorize, canonical, intake_message, sign

SHOP_SECRET = "shop-secret-0123456789abcdef-0123456789"
OTHER_SECRET = "other-secret-0123456789abcdef-012345678"

PRODUCERS = Producers(
    {
        "shop": Producer("shop", SecretStr(SHOP_SECRET), frozenset({"cobo-main", "cryptomus-eu"})),
        "ops": Producer("ops", SecretStr(OTHER_SECRET), frozenset({"*"})),
    }
)

SAMPLE: dict[str, Any] = {
    "idempotency_key": "order-575-refund-1",
    "provider": "cryptomus",
    "account": "cryptomus-eu",
    "amount": "25.00",
    "currency": "USDT",
    "destination": "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",
    "fields": {
        "order_id": "575",
        "note": 'Rückerstattung für Zoë — 返金 ✓ 😀\n"q"\t/\u2028',
        "9": [1.0, 2.5, True, None, 1e-7, 1e21, -0.0],
        "10": 10,
    },
    "deadline_hours": 48.0,
}

# Keys sorted at every level (so "10" before "9"), no spaces, raw UTF-8, JavaScript's numbers.
SAMPLE_CANONICAL = (
    '{"account":"cryptomus-eu","amount":"25.00","currency":"USDT","deadline_hours":48,'
    '"destination":"TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",'
    '"fields":{"10":10,"9":[1,2.5,true,null,1e-7,1e+21,0],'
    '"note":"Rückerstattung für Zoë — 返金 ✓ 😀\\n\\"q\\"\\t/\u2028","order_id":"575"},'
    '"idempotency_key":"order-575-refund-1","provider":"cryptomus"}'
).encode("utf-8")

NODE_SCRIPT = r"""
const crypto = require("crypto");
function canonical(v) {
  if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
  if (v !== null && typeof v === "object")
    return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + canonical(v[k])).join(",") + "}";
  return JSON.stringify(v);
}
const { request, secret } = JSON.parse(require("fs").readFileSync(0, "utf8"));
const bytes = Buffer.from(canonical(request), "utf8");
const signature = "v1=" + crypto.createHmac("sha256", secret).update(bytes).digest("hex");
process.stdout.write(JSON.stringify({ canonical: bytes.toString("hex"), signature }));
"""


def signed(request: dict[str, Any], producer: str = "shop", secret: str = SHOP_SECRET) -> list[FieldError]:
    return authorize(PRODUCERS, request, producer, sign(request, secret))


def test_canonical_bytes_are_fixed() -> None:
    assert canonical(SAMPLE) == SAMPLE_CANONICAL
    expected = "v1=" + hmac.new(SHOP_SECRET.encode(), SAMPLE_CANONICAL, hashlib.sha256).hexdigest()
    assert sign(SAMPLE, SHOP_SECRET) == expected


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_producer_gets_the_same_bytes_and_signature() -> None:
    # The request travels as Python's JSON (48.0 stays "48.0" on the wire; node reads it as 48).
    stdin = json.dumps({"request": SAMPLE, "secret": SHOP_SECRET}, ensure_ascii=False)
    out = subprocess.run(
        ["node", "-e", NODE_SCRIPT], input=stdin.encode(), capture_output=True, check=True, timeout=30
    ).stdout
    result = json.loads(out)
    assert bytes.fromhex(result["canonical"]) == SAMPLE_CANONICAL
    assert result["signature"] == sign(SAMPLE, SHOP_SECRET)
    assert authorize(PRODUCERS, SAMPLE, "shop", result["signature"]) == []


def test_signature_survives_the_celery_json_round_trip() -> None:
    args, kwargs = intake_message({**SAMPLE, "amount": Decimal("25.00")}, "shop", SHOP_SECRET)
    assert args == [SAMPLE] and set(kwargs) == {"producer", "signature"}
    assert kwargs["signature"].startswith("v1=") and len(kwargs["signature"]) == 3 + 64
    received_args, received_kwargs = kombu_loads(kombu_dumps([args, kwargs]))
    assert authorize(PRODUCERS, received_args[0], **received_kwargs) == []


def test_unsigned_message_has_no_kwargs() -> None:
    assert intake_message(SAMPLE) == ([SAMPLE], {})
    with pytest.raises(ValueError, match="both"):
        intake_message(SAMPLE, "shop")
    with pytest.raises(TypeError, match=r"fields.when: datetime is not plain JSON"):
        intake_message({**SAMPLE, "fields": {"when": datetime.now()}}, "shop", SHOP_SECRET)


def test_round_trip_and_star_accounts() -> None:
    assert signed(SAMPLE) == []
    assert signed({**SAMPLE, "account": "cobo-main", "provider": "cobo"}) == []
    assert signed({**SAMPLE, "account": "anything-at-all"}, "ops", OTHER_SECRET) == []
    # "*": a missing account is validation's to report, not authorization's.
    assert signed({k: v for k, v in SAMPLE.items() if k != "account"}, "ops", OTHER_SECRET) == []


def test_no_producers_configured_accepts_everything() -> None:
    for producer, signature in [(None, None), ("shop", "v1=00"), (5, ["x"]), ("", "")]:
        assert authorize(Producers(), SAMPLE, producer, signature) == []
    assert not Producers().configured and PRODUCERS.configured


def field_of(errors: list[FieldError]) -> tuple[str, str]:
    assert len(errors) == 1, errors
    return errors[0].field, errors[0].rule


def test_missing_producer() -> None:
    sig = sign(SAMPLE, SHOP_SECRET)
    assert field_of(authorize(PRODUCERS, SAMPLE, None, sig)) == (
        "producer",
        "is required: this refundq has producers configured",
    )
    assert field_of(authorize(PRODUCERS, SAMPLE, "", sig))[0] == "producer"


def test_unknown_producer() -> None:
    assert field_of(authorize(PRODUCERS, SAMPLE, "mallory", sign(SAMPLE, SHOP_SECRET))) == (
        "producer",
        "unknown producer 'mallory'",
    )


def test_missing_signature() -> None:
    field, rule = field_of(authorize(PRODUCERS, SAMPLE, "shop", None))
    assert field == "signature" and rule.startswith("is required")
    assert field_of(authorize(PRODUCERS, SAMPLE, "shop", ""))[0] == "signature"


@pytest.mark.parametrize(
    "signature",
    [
        sign(SAMPLE, OTHER_SECRET),  # another producer's secret
        sign(SAMPLE, SHOP_SECRET + "x"),
        sign({**SAMPLE, "amount": "2500.00"}, SHOP_SECRET),  # signed a different request
        sign(SAMPLE, SHOP_SECRET).upper().replace("V1=", "v1="),
        "v1=" + "0" * 64,
        "v1=",
    ],
)
def test_wrong_signature(signature: str) -> None:
    errors = authorize(PRODUCERS, SAMPLE, "shop", signature)
    assert field_of(errors) == ("signature", "does not match the request (HMAC-SHA256 with producer 'shop''s secret)")
    expected = sign(SAMPLE, SHOP_SECRET)
    assert expected not in str(errors) and expected[3:] not in str(errors) and SHOP_SECRET not in str(errors)


def test_tampered_request_is_refused() -> None:
    sig = sign(SAMPLE, SHOP_SECRET)
    for change in [
        {"amount": "250.00"},
        {"destination": "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"},
        {"fields": {}},
        {"extra": 1},
    ]:
        assert field_of(authorize(PRODUCERS, {**SAMPLE, **change}, "shop", sig))[0] == "signature"


def test_another_producers_account() -> None:
    request = {**SAMPLE, "account": "coincorner-main", "provider": "coincorner"}
    assert field_of(signed(request)) == ("account", "producer 'shop' may not use account 'coincorner-main'")
    field, rule = field_of(signed({k: v for k, v in SAMPLE.items() if k != "account"}))
    assert field == "account" and rule.startswith("is required")


def test_account_is_not_judged_before_the_signature() -> None:
    request = {**SAMPLE, "account": "coincorner-main"}
    assert field_of(authorize(PRODUCERS, request, "shop", "v1=" + "0" * 64))[0] == "signature"


HUGE = "x" * 5_000_000


class Weird:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("never compare me")

    __hash__ = None  # type: ignore[assignment]


def deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


GARBAGE: list[Any] = [None, 0, 1, -1, True, 3.5, float("nan"), [], ["shop"], {}, {"shop": 1}, b"shop", HUGE, Weird()]


@pytest.mark.parametrize("producer", [*GARBAGE, "shop"])
@pytest.mark.parametrize("signature", [*GARBAGE, "v1=" + HUGE, "v1=\udcff", "v1=é"])
def test_garbage_producer_and_signature_never_raise(producer: Any, signature: Any) -> None:
    errors = authorize(PRODUCERS, SAMPLE, producer, signature)
    assert errors and errors[0].field in {"producer", "signature"}
    assert all(len(e.rule) < 300 for e in errors)


@pytest.mark.parametrize(
    "request_",
    [
        None,
        5,
        "request",
        [SAMPLE],
        {1: "x"},
        {"a": float("nan")},
        {"a": float("inf")},
        {"a": Decimal("1.5")},
        {"a": {1, 2}},
        {"a": Weird()},
        {"a": 10**5000},
        {"account": ["cobo-main"]},
        {"account": 5},
        {"account": HUGE},
        {"\udcff": "\ud800"},
        deep(100_000),
    ],
)
@pytest.mark.parametrize("producer", ["shop", "ops", "nobody"])
def test_garbage_requests_never_raise(request_: Any, producer: str) -> None:
    for signature in [None, "v1=" + "0" * 64, _try_sign(request_)]:
        errors = authorize(PRODUCERS, request_, producer, signature)
        assert all(isinstance(e, FieldError) and len(e.rule) < 300 for e in errors)


def _try_sign(request: Any) -> str | None:
    try:
        return sign(request, SHOP_SECRET)
    except (TypeError, ValueError, RecursionError):
        return None


def test_unsignable_values_are_named() -> None:
    with pytest.raises(ValueError, match=r"fields.rate: nan is not JSON"):
        canonical({"fields": {"rate": float("nan")}})
    with pytest.raises(TypeError, match=r"amount: Decimal is not plain JSON; send it as a string"):
        canonical({"amount": Decimal("1.00")})
    errors = authorize(PRODUCERS, {"amount": Decimal("1.00")}, "shop", "v1=" + "0" * 64)
    rule = "cannot be checked: amount: Decimal is not plain JSON; send it as a string"
    assert field_of(errors) == ("signature", rule)


def test_lone_surrogates_are_escaped_like_javascript() -> None:
    assert canonical({"k": "a\ud800b"}) == b'{"k":"a\\ud800b"}'
    # UTF-16 code unit order, as JS sort(): U+FF5E sorts after U+1F600 (a surrogate pair, 0xD83D...).
    assert canonical({"\U0001f600": 1, "\uff5e": 2}) == '{"😀":1,"～":2}'.encode()
