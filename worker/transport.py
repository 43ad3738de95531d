"""The one place refundq talks HTTP to providers: explicit timeouts, pooled connections, and a
clear answer to the only question that matters after a failure: did the request leave?"""

from __future__ import annotations

import time

import httpx
import structlog

from providers.base import Request, Response

log = structlog.get_logger("refundq.transport")


class TransportError(Exception):
    """No HTTP answer. `sent` is False only when the provider certainly never got the request."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


# Raised before any byte of the request could reach the provider.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class Transport:
    def __init__(self, *, connect_timeout: float, read_timeout: float, max_connections: int = 64) -> None:
        self._client = httpx.Client(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )

    def send(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            answer = self._client.request(
                request.method, request.url, headers=dict(request.headers), content=request.body
            )
        except _NOT_SENT as exc:
            raise TransportError(f"{type(exc).__name__}: not sent", sent=False) from None
        except httpx.HTTPError as exc:
            # Timeouts and resets after the request was written: it may have been executed.
            raise TransportError(f"{type(exc).__name__}: no answer after send", sent=True) from None
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        # Method, URL (no query: it may carry ids) and status only; never headers or bodies.
        log.debug(
            "http",
            method=request.method,
            url=request.url.split("?", 1)[0],
            status=answer.status_code,
            ms=elapsed_ms,
        )
        return Response(
            status_code=answer.status_code,
            headers={k.lower(): v for k, v in answer.headers.items()},
            body=answer.content,
        )

    def close(self) -> None:
        self._client.close()
