"""One root for what can go wrong around a provider call, in the two families that decide what
happens next (httpx `_exceptions.py` style). Callers catch a family, not a tuple of names:

- `NotSent`: the request certainly never reached the provider (lane busy, throttled, circuit
  open, no nonce yet, connect failed). Safe to send again after `wait` seconds; no attempt spent.
- `MaybeSent`: the request may have been executed (no answer after it left). Look it up first.

What the provider answered is a `providers.base.ProviderError` with its `ErrorKind`.
"""

from __future__ import annotations


class RefundqError(Exception):
    """Root of refundq's own errors around provider calls."""


class NotSent(RefundqError):
    """Nothing left this process. Try again after `wait` seconds."""

    wait: float = 1.0

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        if wait is not None:
            self.wait = wait


class MaybeSent(RefundqError):
    """The request left and no (complete) answer came back: it may have been executed."""


class NonceWait(NotSent):
    """The key's nonce counter is ahead of this machine's clock for longer than a task may wait."""
