"""`python -m bench.intake`: junk on door (b)'s queue, then one good refund behind it.

Per run: `--junk` messages pushed onto `refundq.intake` (the four shapes that used to stop workers,
invalid requests, undecodable bytes, tasks that must not run from intake; 1 KiB each on average),
then one valid refund. Timed: until every junk message is recorded as a rejected intake (junk
absorbed per second), and from the good refund's push until its row exists (its wait). The
baseline, measured in the same run on the same processes: the good refund's wait on an empty
queue. Also checked: the worker is alive and rejected rows == junk sent. Median of `--runs`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.e2e import database, empty_tables, redis_db, write_report
from worker.demo import own_payment
from worker.envelope import build, wrap
from worker.procs import Children, free_port, http_ok, wait_until


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.intake", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--junk", type=int, default=100_000, help="junk messages per run")
    p.add_argument("--runs", type=int, default=3, help="runs; the median is reported")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="server; an empty db 1-15 is used")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds any one wait may take")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/intake-<timestamp>.json)")
    args = p.parse_args(argv)
    if min(args.junk, args.runs) < 1:
        p.error("--junk and --runs must be positive")
    return args


def junk(i: int) -> bytes:
    """Ten kinds of garbage, in turn."""
    request = {"idempotency_key": f"junk-{i}", "provider": "cobo", "account": "cobo-sandbox", "amount": "-1"}
    kinds: list[Callable[[], bytes]] = [
        lambda: b"{not json " + os.urandom(16).hex().encode(),
        lambda: b'["a JSON list", ' + str(i).encode() + b"]",
        lambda: wrap(json.dumps({"args": [request]}).encode(), {"task": "refundq.intake"}),
        lambda: wrap("%%% not base64 %%%", {"task": "refundq.intake"}),
        lambda: build("refundq.intake", [request], {}),
        lambda: build("refundq.intake", [{**request, "amount": "1", "note": "x" * 900}], None),
        lambda: build("refundq.reconcile", [None], {}),
        lambda: build("refundq.intake", [request, request], {}),
        lambda: os.urandom(1500),
        lambda: build("refundq.intake", ["not an object"], {"unknown": 1}),
    ]
    return kinds[i % len(kinds)]()


def good_request(tag: str) -> dict[str, Any]:
    return own_payment(
        {
            "idempotency_key": f"good-{tag}",
            "provider": "cobo",
            "account": "cobo-sandbox",
            "amount": "12.00",
            "currency": "ETH_USDT",
            "destination": "0x" + "5a" * 20,
        }
    )


@dataclass
class Run:
    junk: int
    absorbed_seconds: float
    junk_per_second: float
    good_wait_seconds: float
    baseline_wait_seconds: float
    rejected_rows: int


class IntakeBench:
    def __init__(self, args: argparse.Namespace, children: Children, redis_url: str, db_url: str) -> None:
        self.args, self.children, self.redis_url, self.db_url = args, children, redis_url, db_url

    def start(self) -> None:
        from sandbox.accounts import write_sandbox_accounts

        workdir = self.children.log_dir
        port = free_port()
        accounts = write_sandbox_accounts(workdir, f"http://127.0.0.1:{port}")
        env = {
            "REFUNDQ_DATABASE_URL": self.db_url,
            "REFUNDQ_REDIS_URL": self.redis_url,
            "REFUNDQ_REDIS_PREFIX": f"refundq-bench-intake-{os.getpid()}",
            "REFUNDQ_ACCOUNTS_FILE": str(accounts),
            "REFUNDQ_LOG_LEVEL": "WARNING",
        }
        os.environ.update(env)
        self.children.refundq("sandbox", ["sandbox", "--port", str(port), "--accounts", str(accounts)], env)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/_sandbox/ledger"), 30, "sandbox")
        self.children.refundq("worker", ["worker", "-c", "8", "--loglevel", "WARNING"], env)

    def assert_alive(self) -> None:
        for name, proc in self.children.procs.items():
            if proc.poll() is not None:
                log = (self.children.log_dir / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} exited with {proc.returncode}; log tail:\n{log[-3000:]}")

    def wait(self, done: Callable[[], bool], what: str) -> float:
        started, deadline = time.monotonic(), time.monotonic() + self.args.timeout
        while not done():
            self.assert_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not done after {self.args.timeout:.0f}s")
            time.sleep(0.02)
        return time.monotonic() - started

    def good_wait(self, rt: Any, tag: str, pushed_at: float) -> float:
        from worker import store

        def stored() -> bool:
            with rt.engine.connect() as conn:
                return store.get_by_key(conn, f"good-{tag}") is not None

        self.wait(stored, "good refund")
        return time.monotonic() - pushed_at

    def run(self, n: int) -> Run:
        from sqlalchemy import func, select

        from worker.models import rejected_intake_table
        from worker.runtime import build_runtime

        rt = build_runtime()
        empty_tables(rt.engine)
        tag = uuid.uuid4().hex[:8]
        rt.redis.lpush("refundq.intake", build("refundq.intake", [good_request(tag + "-alone")], {}))
        baseline = self.good_wait(rt, tag + "-alone", time.monotonic())
        items = [junk(i) for i in range(n)]  # built before the clock starts
        t0 = time.monotonic()
        with rt.redis.pipeline(transaction=False) as pipe:
            for start in range(0, n, 1000):
                pipe.lpush("refundq.intake", *items[start : start + 1000])
            pipe.execute()
        pushed_at = time.monotonic()
        rt.redis.lpush("refundq.intake", build("refundq.intake", [good_request(tag)], {}))
        good = self.good_wait(rt, tag, pushed_at)

        def rejected() -> int:
            with rt.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(rejected_intake_table)).scalar_one())

        self.wait(lambda: rejected() >= n, "junk recorded")
        seconds = time.monotonic() - t0
        self.assert_alive()
        rows = rejected()
        rt.engine.dispose()
        return Run(n, round(seconds, 2), round(n / seconds, 1), round(good, 2), round(baseline, 3), rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="refundq-bench-intake-"))
    children = Children(workdir)
    runs: list[Run] = []
    print(f"bench.intake: {args.junk} junk messages then one good refund, {args.database}; logs in {workdir}")
    try:
        with redis_db(args.redis_url, children) as redis_url, database(args.database, workdir, args.postgres_url) as db:
            try:
                bench = IntakeBench(args, children, redis_url, db)
                bench.start()
                bench.run(100)  # warm-up: imports, pools, connections
                for i in range(args.runs):
                    r = bench.run(args.junk)
                    runs.append(r)
                    print(
                        f"  run {i + 1}: {r.junk_per_second:,.0f} junk/s ({r.absorbed_seconds:.1f}s), "
                        f"good refund waited {r.good_wait_seconds:.2f}s (alone: {r.baseline_wait_seconds:.3f}s), "
                        f"{r.rejected_rows} rows",
                        flush=True,
                    )
                    if r.rejected_rows != args.junk:
                        raise RuntimeError(f"{r.rejected_rows} rejected rows for {args.junk} junk messages")
            finally:
                children.stop_all()
    finally:
        children.stop_all()
    rate = statistics.median(r.junk_per_second for r in runs)
    wait = statistics.median(r.good_wait_seconds for r in runs)
    alone = statistics.median(r.baseline_wait_seconds for r in runs)
    print(
        f"\nmedian of {len(runs)}: {rate:,.0f} junk messages/s absorbed; good refund behind {args.junk:,} junk waited"
    )
    print(f"{wait:.2f}s (alone: {alone:.3f}s, x{wait / alone:.0f}); the worker stayed up; every message recorded")
    out = write_report("intake", args, [asdict(r) for r in runs])
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
