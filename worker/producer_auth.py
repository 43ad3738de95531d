"""Door (b) producer signatures: who sent an intake message, and may they use its account.

Pure functions, no I/O. The wire format: a `refundq.intake` Celery message keeps one positional
argument, the refund request; when producers are configured its kwargs carry

    {"producer": "shop", "signature": "v1=<hex HMAC-SHA256(secret, canonical(request))>"}

`canonical(request)` is the request as JSON with every object's keys sorted, no whitespace,
non-ASCII text as raw UTF-8, and numbers written the way JavaScript writes them. A Node producer
gets the same bytes with:

    function canonical(v) {
      if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
      if (v !== null && typeof v === "object")
        return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + canonical(v[k])).join(",") + "}";
      return JSON.stringify(v);
    }
    "v1=" + crypto.createHmac("sha256", secret).update(canonical(request), "utf8").digest("hex")

(Not `JSON.stringify(v, sortingReplacer)`: a JS object lists integer-like keys such as "10" and "9"
in numeric order whatever order they were inserted in, so a rebuilt object is not sorted.)

Where Python's `json.dumps` and JavaScript differ, this follows JavaScript:
- floats: 1.0 is written `1`, 1e16 `10000000000000000`, 1e-7 `1e-7`, -0.0 `0` (ECMAScript
  Number::toString on the shortest round-trip digits, which both languages share);
- keys sort by UTF-16 code units, as JS `sort()` does (differs from code points only past U+FFFF);
- a lone surrogate in a string is written as a `\\udxxx` escape.
The rule for producers: amounts are decimal strings (validation refuses float amounts anyway);
integers stay within +-2**53 (JS cannot hold more); NaN, Infinity, and anything that is not plain
JSON (Decimal, datetime, bytes, sets) are refused by `canonical` -- send them as strings.

Replays need no timestamp or nonce: a signature covers the whole request, idempotency key
included, and intake of a key that already names a refund is a no-op returning that refund. So a
replayed message can only do what its first delivery did. (A message rejected for a state that
later changes, e.g. "invoice already has refund X" before X failed, may be accepted when replayed:
the producer did sign that exact request under that key.)

Door (a), `worker.producer.enqueue_refund`, runs in-process with database access and is trusted:
it is not signed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from config.producers import ALL_ACCOUNTS, Producers
from providers.base import FieldError

VERSION = "v1="
_SURROGATE = re.compile("[\ud800-\udfff]")
_ECHO = 64  # at most this many characters of a sender's value are repeated in an error


def _js_number(x: float) -> str:
    """ECMAScript Number::toString(x) for a finite float."""
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{x!r} is not JSON; send it as a string")
    if x == 0:
        return "0"
    if x < 0:
        return "-" + _js_number(-x)
    _, digit_tuple, exponent = Decimal(repr(x)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    s = digits.rstrip("0")
    exponent += len(digits) - len(s)
    k, n = len(s), len(s) + exponent  # x = 0.s * 10**n
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + s
    e = n - 1
    mantissa = s if k == 1 else s[0] + "." + s[1:]
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def _js_string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)


def _encode(value: Any, path: str, parts: list[str]) -> None:
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        parts.append(_js_string(value))
    elif isinstance(value, int):
        parts.append(str(int(value)))
    elif isinstance(value, float):
        try:
            parts.append(_js_number(float(value)))
        except ValueError as exc:
            raise ValueError(f"{path or 'request'}: {exc}") from None
    elif isinstance(value, Mapping):
        keys = list(value)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError(f"{path or 'request'}: object keys must be strings")
        parts.append("{")
        for i, key in enumerate(sorted(keys, key=lambda k: k.encode("utf-16-be", "surrogatepass"))):
            if i:
                parts.append(",")
            parts.append(_js_string(key))
            parts.append(":")
            _encode(value[key], f"{path}.{key}" if path else key, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _encode(item, f"{path}[{i}]", parts)
        parts.append("]")
    else:
        raise TypeError(f"{path or 'request'}: {type(value).__name__} is not plain JSON; send it as a string")


def canonical(request: Mapping[str, Any]) -> bytes:
    """The signed bytes. Raises TypeError/ValueError (naming the place) for what is not plain JSON."""
    parts: list[str] = []
    _encode(request, "", parts)
    return "".join(parts).encode("utf-8")


def sign(request: Mapping[str, Any], secret: str) -> str:
    """`"v1=" + hex(HMAC-SHA256(secret, canonical(request)))`, the secret taken as UTF-8."""
    return VERSION + hmac.new(secret.encode("utf-8"), canonical(request), hashlib.sha256).hexdigest()


def _echo(value: str) -> str:
    return repr(value if len(value) <= _ECHO else value[:_ECHO] + "...")


def authorize(
    producers: Producers, request: Mapping[str, Any], producer: object, signature: object
) -> list[FieldError]:
    """[] when the message may be taken in; else why not. Never raises, never echoes a secret.

    No producers configured (single tenant): always []. Otherwise the producer must be named and
    known, the signature must match, and then the request's account must be one of its accounts.
    Nothing about the producer's accounts is said before the signature is proven.
    """
    if not producers:
        return []
    if producer is None or (isinstance(producer, str) and not producer):
        return [FieldError("producer", "is required: this refundq has producers configured")]
    if not isinstance(producer, str):
        return [FieldError("producer", f"must be a string naming a producer, not {type(producer).__name__}")]
    known = producers.get(producer)
    if known is None:
        return [FieldError("producer", f"unknown producer {_echo(producer)}")]
    if signature is None or (isinstance(signature, str) and not signature):
        return [FieldError("signature", f"is required: producer {producer!r} must sign its messages (v1=<hex>)")]
    if not isinstance(signature, str):
        return [FieldError("signature", f"must be a string 'v1=<hex>', not {type(signature).__name__}")]
    if not signature.startswith(VERSION):
        return [FieldError("signature", "must start with 'v1=' (HMAC-SHA256 over the canonical request, hex)")]
    try:
        expected = sign(request, known.secret.get_secret_value())
    except (TypeError, ValueError, RecursionError) as exc:
        return [FieldError("signature", f"cannot be checked: {exc}")]
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "surrogatepass")):
        return [
            FieldError("signature", f"does not match the request (HMAC-SHA256 with producer {producer!r}'s secret)")
        ]
    account = request.get("account") if isinstance(request, Mapping) else None
    if not isinstance(account, str):
        if ALL_ACCOUNTS in known.accounts:  # the account's absence is validation's to report
            return []
        return [FieldError("account", f"is required: producer {producer!r} may only use its own accounts")]
    if not known.may_use(account):
        return [FieldError("account", f"producer {producer!r} may not use account {_echo(account)}")]
    return []


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def intake_message(
    request: Mapping[str, Any], producer: str | None = None, secret: str | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) of a door (b) message, signed when a producer and its secret are given:

        args, kwargs = intake_message(request, "shop", os.environ["SHOP_PRODUCER_SECRET"])
        celery.send_task("refundq.intake", args=args, kwargs=kwargs, queue="refundq.intake")

    Decimal values become decimal strings first (what the worker then receives and verifies).
    Raises ValueError/TypeError for what cannot be signed (see `canonical`).
    """
    plain = _plain(request)
    if producer is None and secret is None:
        return [plain], {}
    if not producer or not secret:
        raise ValueError("a signed intake message needs both the producer name and its secret")
    return [plain], {"producer": producer, "signature": sign(plain, secret)}
