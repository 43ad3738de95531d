"""Shared fixtures. Real services only: the sandbox over loopback HTTP, real Redis, real databases.

Isolation: this run takes a Redis database number nobody uses (and empties it at the end), a
PostgreSQL database of its own (created and dropped), and free loopback ports.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from config.accounts import Accounts, load_accounts
from sandbox.accounts import write_sandbox_accounts

REDIS_BASE = os.environ.get("REFUNDQ_TEST_REDIS", "redis://127.0.0.1:6379")
PG_BASE = os.environ.get("REFUNDQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _claim_redis_db() -> int:
    """The first Redis database (1-15) that is empty, marked as ours for this run."""
    from redis import Redis

    for db in range(1, 16):
        client = Redis.from_url(f"{REDIS_BASE}/{db}")
        if client.set("refundq-test-owner", str(os.getpid()), nx=True, ex=3600) and client.dbsize() == 1:
            return db
    raise RuntimeError("no empty Redis database (1-15) for the tests")


# Before anything imports worker.app: its Celery app reads the broker URL once.
TEST_REDIS_DB = _claim_redis_db()
TEST_REDIS_URL = f"{REDIS_BASE}/{TEST_REDIS_DB}"
os.environ["REFUNDQ_REDIS_URL"] = TEST_REDIS_URL
os.environ["REFUNDQ_ACCOUNTS_FILE"] = "/nonexistent/accounts.toml"  # tests pass accounts explicitly


@pytest.fixture(scope="session", autouse=True)
def _release_redis_db() -> Iterator[None]:
    yield
    from redis import Redis

    Redis.from_url(TEST_REDIS_URL).flushdb()


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


# --- databases ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own, migrated; dropped at the end."""
    from sqlalchemy import create_engine, text

    from worker.migrate import upgrade

    name = f"refundq_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(
        PG_BASE.replace("postgresql://", "postgresql+psycopg://") + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_BASE}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        from worker.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from worker.migrate import upgrade

    url = f"sqlite:///{tmp_path}/refundq.db"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Both databases: SQLite (the embedded default) and PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    url = str(request.getfixturevalue("pg_url"))
    from sqlalchemy import text

    from worker.db import get_engine

    with get_engine(url).begin() as conn:  # the session's database, emptied for this test
        conn.execute(text("TRUNCATE refund_event, rejected_intake, refund, payment CASCADE"))
    return url


FAST = {
    "poll_initial": 0.2,
    "poll_max": 1.0,
    "retry_initial": 0.2,
    "retry_max": 1.0,
    "http_read_timeout": 1.0,
    "publish_grace": 3.0,
    "task_soft_time_limit": 20,
    "task_time_limit": 30,
    "lease_seconds": 60,
}


def make_runtime(db: str, accounts_file: Path, **overrides: object) -> Any:
    from config.settings import Settings
    from worker.runtime import Runtime

    settings = Settings(
        database_url=db,
        redis_url=TEST_REDIS_URL,
        accounts_file=accounts_file,
        redis_prefix=f"refundq-test-{os.getpid()}",
        **{**FAST, **overrides},
    )  # type: ignore[arg-type]
    return Runtime(settings=settings, accounts=load_accounts(accounts_file))


def settings_env(db: str, accounts_file: Path, **overrides: object) -> dict[str, str]:
    values = {
        "database_url": db,
        "redis_url": TEST_REDIS_URL,
        "accounts_file": str(accounts_file),
        "redis_prefix": f"refundq-test-{os.getpid()}",
        "dispatch_interval": 0.5,
        **FAST,
        **overrides,
    }
    return {f"REFUNDQ_{k.upper()}": str(v) for k, v in values.items()}


# --- processes ------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A real Celery worker and dispatcher on the test broker, against one database."""

    db_url: str
    env: dict[str, str]
    children: Any

    def start_worker(self, name: str = "w1", concurrency: int = 16) -> None:
        self.children.refundq(
            name,
            ["worker", "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h", "--loglevel", "WARNING"],
            self.env,
        )

    def start_dispatcher(self, name: str = "dispatcher") -> None:
        self.children.refundq(name, ["dispatcher"], self.env)

    def assert_alive(self) -> None:
        for name, proc in self.children.procs.items():
            if proc.poll() is not None:
                log = (self.children.log_dir / f"{name}.log").read_text(errors="replace")
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{log[-3000:]}")


@pytest.fixture
def stack_factory(tmp_path: Path, sandbox: SandboxServer) -> Iterator[Any]:
    from worker.procs import Children

    made: list[Stack] = []

    def make(db: str, **overrides: object) -> Stack:
        children = Children(tmp_path)
        stack = Stack(db, settings_env(db, sandbox.accounts_file, **overrides), children)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.children.stop_all()
        for log in tmp_path.glob("*.log"):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                sys.stderr.write(f"--- {log.name} ---\n{text[-4000:]}\n")
