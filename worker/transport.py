"""The one place refundq talks HTTP to providers: pooled connections, one wall-clock deadline per
call, and a clear answer to the only question that matters after a failure: did the request leave?

httpx's timeouts bound each read, not the call: a provider that trickles a 200 byte by byte keeps
the caller forever. Here connect + send + the whole answer share one deadline (`deadline`
seconds): every phase's timeout is what is left of it, and the body is read in chunks with the
clock checked after each. A call therefore never outlives the claim that allowed it (the worker
refuses to start unless the claim's lease exceeds this deadline plus every wait before it).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import structlog

from providers.base import Request, Response
from worker.errors import MaybeSent, NotSent, RefundqError

log = structlog.get_logger("refundq.transport")


class TransportError(RefundqError):
    """No (complete) HTTP answer."""


class ConnectFailed(TransportError, NotSent):
    """The request certainly never reached the provider."""


class NoAnswer(TransportError, MaybeSent):
    """The request was (perhaps partly) written and no complete answer came back in time."""


# Raised before any byte of the request could reach the provider.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class _Remaining(dict[str, Any]):
    """httpcore reads each phase's timeout with `.get(phase)` when the phase starts: answer with
    what is left of the call's deadline (capped by the per-phase settings)."""

    def __init__(self, deadline: float, caps: dict[str, float]) -> None:
        super().__init__(caps)
        self._deadline = deadline

    def get(self, key: str, default: Any = None) -> Any:
        left = max(0.001, self._deadline - time.monotonic())
        cap = super().get(key)
        return left if cap is None else min(cap, left)


class Transport:
    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        deadline: float | None = None,
        max_connections: int = 64,
    ) -> None:
        self.deadline = deadline if deadline is not None else connect_timeout + read_timeout
        self._caps = {"connect": connect_timeout, "pool": connect_timeout, "read": read_timeout, "write": read_timeout}
        self._client = httpx.Client(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )

    def send(self, request: Request) -> Response:
        started = time.monotonic()
        deadline = started + self.deadline
        outgoing = self._client.build_request(
            request.method, request.url, headers=dict(request.headers), content=request.body
        )
        outgoing.extensions["timeout"] = _Remaining(deadline, self._caps)
        try:
            answer = self._client.send(outgoing, stream=True)
        except _NOT_SENT as exc:
            raise ConnectFailed(f"{type(exc).__name__}: not sent") from None
        except httpx.HTTPError as exc:
            # Timeouts and resets after the request was written: it may have been executed.
            raise NoAnswer(f"{type(exc).__name__}: no answer after send") from None
        try:
            chunks = []
            for chunk in answer.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise NoAnswer(f"answer not complete within the call deadline ({self.deadline:g}s)")
        except httpx.HTTPError as exc:
            raise NoAnswer(f"{type(exc).__name__}: answer cut off") from None
        finally:
            answer.close()
        # Method, URL (no query: it may carry ids) and status only; never headers or bodies.
        log.debug(
            "http",
            method=request.method,
            url=request.url.split("?", 1)[0],
            status=answer.status_code,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return Response(
            status_code=answer.status_code,
            headers={k.lower(): v for k, v in answer.headers.items()},
            body=b"".join(chunks),
        )

    def close(self) -> None:
        self._client.close()
