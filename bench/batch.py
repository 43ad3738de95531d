"""Bulk acceptance: how fast `enqueue_batch` validates, stores and publishes a file.

    .venv/bin/python -m bench.batch --rows 100000 --runs 3

Per database (PostgreSQL and SQLite) and run: a fresh database (PostgreSQL: a new database,
SQLite: a new file), a freshly written CSV of `--rows` valid refunds across the four
providers (written before the clock starts), then `enqueue_batch` timed end to end:
validation pass, Core bulk inserts in `batch_chunk` transactions, submit work published to
Redis in fan-out chunks. Prints rows/s per run and the median. The published messages go
to a Redis database of the benchmark's own (REFUNDQ_BENCH_REDIS, default db 13), emptied after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

REDIS_URL = os.environ.get("REFUNDQ_BENCH_REDIS", "redis://127.0.0.1:6379/13")
PG_BASE = os.environ.get("REFUNDQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
os.environ["REFUNDQ_REDIS_URL"] = REDIS_URL  # before worker.app is imported


def _fresh_db(kind: str, workdir: Path) -> tuple[str, tuple[Engine, str] | None]:
    from sqlalchemy import create_engine, text

    from worker.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{workdir}/bench-{uuid.uuid4().hex[:8]}.db"
        upgrade(url)
        return url, None
    name = f"refundq_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(
        PG_BASE.replace("postgresql://", "postgresql+psycopg://") + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_BASE}/{name}"
    upgrade(url)
    return url, (admin, name)


def _drop(url: str, handle: tuple[Engine, str] | None) -> None:
    from sqlalchemy import text

    from worker.db import get_engine

    get_engine(url).dispose()
    if handle is not None:
        admin, name = handle
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_once(kind: str, rows: int, workdir: Path, accounts_file: Path) -> float:
    from config.accounts import load_accounts
    from config.settings import Settings
    from tests.batchrows import rows as make_rows
    from tests.batchrows import write_csv
    from worker.batch import enqueue_batch
    from worker.runtime import Runtime

    url, handle = _fresh_db(kind, workdir)
    try:
        path = write_csv(
            workdir / f"bench-{uuid.uuid4().hex[:8]}.csv", make_rows(rows, f"bench-{uuid.uuid4().hex[:8]}")
        )
        settings = Settings(database_url=url, redis_url=REDIS_URL, accounts_file=accounts_file, log_level="WARNING")
        rt = Runtime(settings=settings, accounts=load_accounts(accounts_file))
        started = time.perf_counter()
        result = enqueue_batch(path, rt=rt)
        elapsed = time.perf_counter() - started
        assert result.inserted == rows and result.published == rows, result.message
        path.unlink()
        return rows / elapsed
    finally:
        _drop(url, handle)
        from redis import Redis

        Redis.from_url(REDIS_URL).flushdb()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db", choices=("postgresql", "sqlite", "both"), default="both")
    args = parser.parse_args(argv)

    from redis import Redis

    from config.logging import configure_logging
    from sandbox.accounts import write_sandbox_accounts

    configure_logging("console", "WARNING")
    redis = Redis.from_url(REDIS_URL)
    if redis.dbsize():
        print(f"{REDIS_URL} is not empty; set REFUNDQ_BENCH_REDIS to an unused database", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="refundq-bench-batch-"))
    accounts_file = write_sandbox_accounts(workdir, "http://127.0.0.1:9")  # never called: acceptance only
    kinds = ("postgresql", "sqlite") if args.db == "both" else (args.db,)
    for kind in kinds:
        rates = [run_once(kind, args.rows, workdir, accounts_file) for _ in range(args.runs)]
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{kind:<10} {args.rows:,} rows: median {statistics.median(rates):,.0f} rows/s (runs: {runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
