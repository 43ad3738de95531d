"""Text that came from outside (producers, providers): what counts as a control character, and
how to show one without letting it act on a terminal or a log reader."""

from __future__ import annotations

import re

# C0, DEL, C1 and surrogates. A surrogate in a Python str is always lone (json.loads pairs the
# rest into one code point); PostgreSQL refuses it and NUL, and a terminal obeys the others.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """ESC becomes the four characters `\\x1b`: readable, and inert on a terminal."""
    return CONTROL.sub(_escaped, text)
