"""The sandbox ASGI app: each provider mounted under its own prefix, plus `/_sandbox/*` controls."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import fields
from importlib import import_module
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from config.accounts import Accounts
from sandbox.core import QuietAnswerLost, SandboxConfig, SandboxState, load_sandbox_secrets

PROVIDERS = ("cobo", "coincorner", "coinvoyage", "cryptomus")


def create_app(
    accounts: Accounts, config: SandboxConfig | None = None, *, accounts_file: Path | None = None
) -> ASGIApp:
    """`accounts_file` may carry a [sandbox] table with the sandbox's own Cobo response key."""
    state = SandboxState(accounts, config, sandbox_secrets=load_sandbox_secrets(accounts_file))
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietAnswerLost) for f in server_log.filters):
        server_log.addFilter(QuietAnswerLost())  # ANSWER_LOST drops connections on purpose: no traceback

    async def ledger(_: Request) -> JSONResponse:
        return JSONResponse(state.snapshot())

    async def reset(_: Request) -> JSONResponse:
        state.reset()
        return JSONResponse({"ok": True})

    async def configure(request: Request) -> JSONResponse:
        """Change knobs at run time: {"step_seconds": 0.2, "outage": {"cobo": true}, "execute_delay_seconds": 4,
        "trickle_interval": 0.01, ...}."""
        changes: dict[str, Any] = json.loads(await request.body() or b"{}")
        known = {f.name for f in fields(SandboxConfig)}
        unknown = set(changes) - known
        if unknown:
            return JSONResponse({"error": f"unknown settings: {sorted(unknown)}"}, status_code=400)
        for name, value in changes.items():
            setattr(state.config, name, value)
        return JSONResponse({f.name: getattr(state.config, f.name) for f in fields(SandboxConfig)})

    async def fund(request: Request) -> JSONResponse:
        """A person funds / confirms a refund waiting for action (CoinVoyage AWAITING_PAYMENT, ...)."""
        entry = _entry(request)
        if entry is None:
            return JSONResponse({"error": "no such refund"}, status_code=404)
        entry.funded_at = time.time()
        return JSONResponse({"ok": True})

    async def drift(request: Request) -> JSONResponse:
        """Change a refund behind refundq's back: {"status": raw provider status, "amount": "1.00"}."""
        entry = _entry(request)
        if entry is None:
            return JSONResponse({"error": "no such refund"}, status_code=404)
        changes = json.loads(await request.body() or b"{}")
        entry.status_override = changes.get("status", entry.status_override)
        entry.amount = changes.get("amount", entry.amount)
        entry.destination = changes.get("destination", entry.destination)
        return JSONResponse({"ok": True})

    def _entry(request: Request) -> Any:
        provider, key = request.path_params["provider"], request.path_params["refund_key"]
        return next(
            (
                e
                for e in state.ledger.values()
                if e.provider == provider and key in (e.refund_key, e.provider_refund_id)
            ),
            None,
        )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    routes: list[BaseRoute] = [
        Route("/_sandbox/ledger", ledger, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/config", configure, methods=["POST"]),
        Route("/_sandbox/health", health, methods=["GET"]),
        Route("/_sandbox/fund/{provider}/{refund_key}", fund, methods=["POST"]),
        Route("/_sandbox/drift/{provider}/{refund_key}", drift, methods=["POST"]),
    ]
    for provider in PROVIDERS:
        module = import_module(f"sandbox.{provider}")
        routes.append(Mount(f"/{provider}", routes=module.routes(state)))
    app = Starlette(routes=routes)
    app.state.sandbox = state
    return _with_latency(app, state)


def _with_latency(app: Starlette, state: SandboxState) -> ASGIApp:
    """Delay provider calls (not `/_sandbox/*`) by `latency_seconds`, like a provider's round trip."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        delay = state.config.latency_seconds
        if delay and scope["type"] == "http" and not scope["path"].startswith("/_sandbox"):
            await asyncio.sleep(delay)
        await app(scope, receive, send)

    wrapped.state = app.state  # type: ignore[attr-defined]
    return wrapped
