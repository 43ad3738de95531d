"""Shared fixtures. Real services only: the sandbox over loopback HTTP, real Redis, real databases."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from config.accounts import Accounts, load_accounts
from sandbox.accounts import write_sandbox_accounts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SandboxServer:
    base_url: str
    accounts_file: Path
    accounts: Accounts

    def ledger(self) -> dict:
        return httpx.get(f"{self.base_url}/_sandbox/ledger", timeout=5).json()

    def configure(self, **changes: object) -> dict:
        r = httpx.post(f"{self.base_url}/_sandbox/config", json=changes, timeout=5)
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/_sandbox/reset", timeout=5).raise_for_status()


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """The sandbox app served by uvicorn in a thread on a free loopback port."""
    from sandbox.app import create_app
    from sandbox.core import SandboxConfig

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    accounts_file = write_sandbox_accounts(tmp_path_factory.mktemp("sandbox-accounts"), base_url)
    accounts = load_accounts(accounts_file)
    app = create_app(accounts, SandboxConfig(step_seconds=0.3, hang_seconds=3.0), accounts_file=accounts_file)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "sandbox did not start in 10 s"
        time.sleep(0.02)
    try:
        yield SandboxServer(base_url, accounts_file, accounts)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    """The shared sandbox, reset to an empty ledger and default knobs for this test."""
    sandbox_server.reset()
    sandbox_server.configure(step_seconds=0.3, hang_seconds=3.0, strict_nonce={}, rate_limit={}, outage={})
    return sandbox_server
