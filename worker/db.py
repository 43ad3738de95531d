"""Engines. SQLite gets WAL and a busy timeout so several worker threads can share it.

SQLite transactions: `engine.begin()` is a write transaction and starts with `BEGIN IMMEDIATE`
(it takes the write lock up front, so two writers queue on the busy timeout instead of one
failing with "database is locked" when it upgrades a read). Everything else - `engine.connect()`
and the transaction it begins on its first statement - starts with a deferred `BEGIN`: under WAL
a read takes no lock a writer waits for, so a long read (a report, a batch's validation) never
holds up a worker's write. A connection that must write outside `engine.begin()` asks for it
with `begin_write(conn)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, RootTransaction, create_engine, event

WRITE = "refundq_write"  # execution option: this connection's transactions write (BEGIN IMMEDIATE)


class _SQLiteEngine(Engine):
    """An Engine whose begin() marks its connection as a writer. It adds no state: get_engine
    re-classes the engine create_engine built, so pool, dialect and events stay as they are."""

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.connect() as conn, begin_write(conn):
            yield conn


def begin_write(conn: Connection) -> RootTransaction:
    """Begin a write transaction on `conn` (on SQLite: BEGIN IMMEDIATE). The mark stays on this
    Connection object only; the pooled DBAPI connection behind it is not affected."""
    conn.execution_options(**{WRITE: True})
    return conn.begin()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

        engine.__class__ = _SQLiteEngine
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
