"""Reading a Celery message as kombu's Redis transport stores it, without trusting a byte of it.

A list item is a JSON envelope `{"body", "content-type", "headers", "properties"}` whose body is
base64 JSON: `[args, kwargs, embed]` in protocol 2 (task name in the headers), `{"task", "args",
"kwargs", ...}` in protocol 1. Producers are other teams' code, so every step can fail; each
failure is a `BadMessage` whose reason says which step, never an exception escaping to a consumer.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import uuid
from dataclasses import dataclass
from typing import Any

from worker.text import CONTROL, escape_controls

# A refund request is well under 4 KiB; 64 KiB leaves room for metadata and refuses junk cheaply.
MAX_MESSAGE_BYTES = 64 * 1024


class BadMessage(ValueError):
    """The bytes are not a message refundq can run. `task` is set when the name was readable."""

    def __init__(self, reason: str, task: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.task = reason, task


@dataclass(frozen=True)
class Message:
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    id: str | None = None
    eta: str | None = None
    protocol: int = 2
    envelope: dict[str, Any] = dataclasses.field(default_factory=dict)  # the decoded list item


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(text: str | bytes, what: str) -> Any:
    """JSON without NaN/Infinity; depth, huge integers and bad UTF-8 become a BadMessage."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadMessage(f"{what} is nested too deeply") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise BadMessage(f"{what} is not valid JSON: {_short(str(exc))}") from None


def _short(text: str, limit: int = 120) -> str:
    return escape_controls(text[:limit])


def raw_excerpt(raw: bytes, limit: int = 1024) -> str:
    """The first `limit` bytes as safe text, marked when cut."""
    text = escape_controls(raw[:limit].decode("utf-8", "backslashreplace"))
    return text + f"... [{len(raw)} bytes]" if len(raw) > limit else text


def parse(raw: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    if len(raw) > max_bytes:
        raise BadMessage(f"message is {len(raw)} bytes; the limit is {max_bytes}")
    envelope = strict_json(raw, "envelope")
    if not isinstance(envelope, dict):
        raise BadMessage(f"envelope must be a JSON object, not {_kind(envelope)}")
    ctype = envelope.get("content-type")
    if ctype != "application/json":
        raise BadMessage(f"content-type must be application/json (JSON only), not {_short(repr(ctype))}")
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        raise BadMessage("envelope.properties must be an object")
    headers = envelope.get("headers")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise BadMessage("envelope.headers must be an object")
    body = envelope.get("body")
    if not isinstance(body, str):
        raise BadMessage("envelope.body must be a string")
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        try:
            body_bytes = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BadMessage("envelope.body is not valid base64") from None
    elif encoding is None:
        body_bytes = body.encode("utf-8", "surrogatepass")
    else:
        raise BadMessage(f"properties.body_encoding must be base64, not {_short(repr(encoding))}")
    decoded = strict_json(body_bytes, "body")
    message = _protocol2(headers, decoded) if "task" in headers else _protocol1(decoded)
    return dataclasses.replace(message, envelope=envelope)


def build(task: str, args: list[Any], kwargs: Any, *, eta: str | None = None, **properties: Any) -> bytes:
    """A protocol-2 list item as kombu writes it; for tests and benchmarks that play producer."""
    headers = {"lang": "py", "task": task, "id": str(uuid.uuid4()), "eta": eta, "retries": 0}
    return wrap(json.dumps([args, kwargs, {}]).encode(), headers, **properties)


def wrap(body: bytes | str, headers: dict[str, Any] | None = None, **properties: Any) -> bytes:
    """kombu's envelope around a body: bytes are base64-encoded, text is used as it is."""
    if isinstance(body, bytes):
        body = base64.b64encode(body).decode("ascii")
    props = {"delivery_mode": 2, "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers or {},
        "properties": {**props, **properties},
    }
    return json.dumps(envelope).encode()


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


def _task_name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200 or CONTROL.search(value):
        raise BadMessage(f"task name must be a short printable string, not {_short(repr(value))}")
    return value


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= 200 else None


def _call(task: str, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    if not isinstance(args, list):
        raise BadMessage(f"args must be a list, not {_kind(args)}", task)
    if kwargs is None:  # what celery-node sends for sendTask(name, args) without kwargs
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise BadMessage(f"kwargs must be an object, not {_kind(kwargs)}", task)
    return args, kwargs


def _protocol2(headers: dict[str, Any], body: Any) -> Message:
    task = _task_name(headers.get("task"))
    if not isinstance(body, list) or len(body) != 3:
        raise BadMessage("protocol 2 body must be [args, kwargs, embed]", task)
    args, kwargs = _call(task, body[0], body[1])
    return Message(task, args, kwargs, _optional_str(headers.get("id")), _optional_str(headers.get("eta")), 2)


def _protocol1(body: Any) -> Message:
    if not isinstance(body, dict):
        raise BadMessage(f"protocol 1 body must be an object with a task name, not {_kind(body)}")
    task = _task_name(body.get("task"))
    args, kwargs = _call(task, body.get("args", []), body.get("kwargs", {}))
    return Message(task, args, kwargs, _optional_str(body.get("id")), _optional_str(body.get("eta")), 1)
