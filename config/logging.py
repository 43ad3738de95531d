"""structlog setup. Every configured secret value is scrubbed from every log line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"
_secrets: tuple[str, ...] = ()
_lowered: tuple[str, ...] = ()
_pattern: re.Pattern[str] | None = None


def register_secrets(values: Iterable[str]) -> None:
    """Add values to scrub. Short values are ignored: redacting '1' would mangle every number."""
    global _secrets, _lowered, _pattern
    _secrets = tuple(sorted({*_secrets, *(v for v in values if len(v) >= 6)}, key=len, reverse=True))
    _lowered = tuple({s.lower() for s in _secrets})
    # Case-insensitive: CoinCorner signs with the key lower-cased and providers echo what they got.
    # Longest first, so a secret that contains another is redacted whole. One pass per string.
    _pattern = re.compile("|".join(map(re.escape, _secrets)), re.IGNORECASE) if _secrets else None


def redact(text: str) -> str:
    """`text` with every registered secret, in any letter case, replaced by [REDACTED]."""
    if _pattern is None:
        return text
    # Most lines hold no secret: substring tests on one lower-cased copy are ~10x faster than the regex.
    lowered = text.lower()
    if not any(secret in lowered for secret in _lowered):
        return text
    return _pattern.sub(REDACTED, text)


def scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event_dict
    return {k: scrub(v) for k, v in event_dict.items()}


def _redact_rendered(_: Any, __: str, rendered: Any) -> Any:
    # Tracebacks are rendered late; scrub the final string too.
    return redact(rendered) if isinstance(rendered, str) and _secrets else rendered


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # sys.stderr looked up per logger, not bound now: it may be replaced (tests, daemons).
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
