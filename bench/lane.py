"""`python -m bench.lane`: what ordering costs. Refunds/s on ONE provider key with the ordered
send lane (CoinCorner: strictly increasing nonces, one request at a time per key) against the
same stack without it (Cobo: timestamp nonces, requests in parallel), medians of `--runs`.

Each run stores N refunds first (no publish), then publishes every submit at once and times
until every refund has been accepted by the provider (left queued/submitting/unknown), so the
producer does not limit the figure. Runs alternate between the two providers on the same
processes (sandbox, workers, dispatcher), all children stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.e2e import NOT_ACCEPTED, database, empty_tables, redis_db, refund_requests, write_report
from worker.procs import Children, free_port, http_ok, wait_until

PROVIDERS = {"coincorner": "with the lane (CoinCorner)", "cobo": "without it (Cobo)"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.lane", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--refunds", type=int, default=300, help="refunds per run, all on one key")
    p.add_argument("--runs", type=int, default=3, help="runs per provider; the median is reported")
    p.add_argument("--latency", type=float, default=0.01, help="seconds added to every provider call")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--concurrency", type=int, default=8, help="threads per worker process")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="server; an empty db 1-15 is used")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds any one wait may take")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/lane-<timestamp>.json)")
    args = p.parse_args(argv)
    if min(args.refunds, args.runs, args.workers, args.concurrency) < 1:
        p.error("--refunds, --runs, --workers and --concurrency must be positive")
    return args


@dataclass
class Run:
    provider: str
    refunds: int
    accepted_seconds: float
    refunds_per_second: float
    nonce_rejections: int


class LaneBench:
    def __init__(self, args: argparse.Namespace, children: Children, redis_url: str, db_url: str) -> None:
        self.args, self.children, self.redis_url, self.db_url = args, children, redis_url, db_url
        self.sandbox_url = ""

    def start(self) -> None:
        from sandbox.accounts import write_sandbox_accounts

        args, workdir = self.args, self.children.log_dir
        port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{port}"
        accounts = write_sandbox_accounts(workdir, self.sandbox_url)
        env = {
            "REFUNDQ_DATABASE_URL": self.db_url,
            "REFUNDQ_REDIS_URL": self.redis_url,
            "REFUNDQ_REDIS_PREFIX": f"refundq-bench-lane-{os.getpid()}",
            "REFUNDQ_ACCOUNTS_FILE": str(accounts),
            "REFUNDQ_POLL_INITIAL": "0.5",
            "REFUNDQ_POLL_MAX": "2",
            "REFUNDQ_RETRY_INITIAL": "0.2",
            "REFUNDQ_RETRY_MAX": "1",
            "REFUNDQ_DISPATCH_INTERVAL": "0.5",
            "REFUNDQ_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.update(env)  # for the producer in this process
        from config.logging import configure_logging
        from config.settings import get_settings

        get_settings.cache_clear()
        configure_logging("console", "WARNING")
        sandbox = ["sandbox", "--port", str(port), "--accounts", str(accounts), "--step", "0.2", "--hang", "5"]
        self.children.refundq("sandbox", [*sandbox, "--latency", str(args.latency)], env)
        wait_until(lambda: http_ok(f"{self.sandbox_url}/_sandbox/health"), 30, "sandbox")
        for w in range(args.workers):
            name = f"worker{w}"
            argv = ["worker", "-c", str(args.concurrency), "-n", f"bench-lane-{os.getpid()}-{w}@%h"]
            self.children.refundq(name, [*argv, "--loglevel", "WARNING"], env)
        self.children.refundq("dispatcher", ["dispatcher"], env)

    def assert_alive(self) -> None:
        for name, proc in self.children.procs.items():
            if proc.poll() is not None:
                log = (self.children.log_dir / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} exited with {proc.returncode}; log tail:\n{log[-3000:]}")

    def run(self, provider: str, n: int) -> Run:
        from sqlalchemy import func, select

        from worker.engine import publish
        from worker.models import refund_table
        from worker.producer import persist
        from worker.runtime import build_runtime

        rt = build_runtime()
        empty_tables(rt.engine)
        httpx.post(f"{self.sandbox_url}/_sandbox/reset", timeout=10).raise_for_status()
        ids = [persist(r, rt)[0].id for r in refund_requests(n, provider, uuid.uuid4().hex[:8])]
        status = refund_table.c.status

        def accepted() -> int:
            with rt.engine.connect() as conn:
                query = select(func.count()).select_from(refund_table).where(status.not_in(NOT_ACCEPTED))
                return int(conn.execute(query).scalar_one())

        t0 = time.monotonic()
        publish(ids, [])
        deadline = t0 + self.args.timeout
        while accepted() < n:
            self.assert_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{provider}: not all accepted after {self.args.timeout:.0f}s")
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        counters = httpx.get(f"{self.sandbox_url}/_sandbox/ledger", timeout=10).json()["counters"]
        rt.engine.dispose()
        return Run(
            provider=provider,
            refunds=n,
            accepted_seconds=round(seconds, 3),
            refunds_per_second=round(n / seconds, 2),
            nonce_rejections=int(counters.get(f"{provider}:nonce_rejections", 0)),
        )


def table(runs: Sequence[Run]) -> str:
    rows = [("one key", "runs (refunds/s)", "median /s", "nonce rejections")]
    medians: dict[str, float] = {}
    for provider, label in PROVIDERS.items():
        mine = [r for r in runs if r.provider == provider]
        medians[provider] = statistics.median(r.refunds_per_second for r in mine)
        each = " ".join(f"{r.refunds_per_second:.1f}" for r in mine)
        rows.append((label, each, f"{medians[provider]:.1f}", str(sum(r.nonce_rejections for r in mine))))
    rows.append(("lane / no lane", "", f"{medians['coincorner'] / medians['cobo']:.2f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="refundq-bench-lane-"))
    children = Children(workdir)
    runs: list[Run] = []
    print(
        f"bench.lane: {args.refunds} refunds per run on one key, {args.workers} workers x {args.concurrency} threads, "
        f"{args.latency * 1000:.0f} ms provider latency, {args.database}; logs in {workdir}",
        flush=True,
    )
    try:
        with redis_db(args.redis_url, children) as redis_url, database(args.database, workdir, args.postgres_url) as db:
            try:
                bench = LaneBench(args, children, redis_url, db)
                bench.start()
                for provider in PROVIDERS:  # warm-up: imports, pools, connections
                    bench.run(provider, 8)
                for i in range(args.runs):
                    for provider in PROVIDERS:
                        r = bench.run(provider, args.refunds)
                        runs.append(r)
                        print(
                            f"  run {i + 1} {provider}: {r.refunds_per_second:.1f} refunds/s "
                            f"({r.accepted_seconds:.2f}s, nonce rejections {r.nonce_rejections})",
                            flush=True,
                        )
            finally:
                children.stop_all()  # before the database is dropped and Redis flushed
    finally:
        children.stop_all()
    print()
    print(table(runs))
    out = write_report("lane", args, [asdict(r) for r in runs])
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
