"""`refundq chaos` (and `python -m bench.chaos`): pull the plug at random and count what was lost.

Starts the sandbox, N workers and a dispatcher as child processes on the configured (or given)
Redis and database, enqueues refunds across all four providers with fault scenarios (500 first,
429 first, timeout after commit, failures, partials, rejections), and while they run, at random:

- SIGKILLs a worker (and restarts it); worker incarnations also run with
  REFUNDQ_CHAOS_KILL_AFTER_SEND, so some die between the provider's answer and the DB commit;
- flushes Redis (FLUSHDB of the configured database; FLUSHALL only on the private Redis it
  started) and restarts that private Redis (same port);
- restarts PostgreSQL, only with --restart-postgres (it is the machine's shared server);
- starts a second dispatcher, and SIGKILLs / restarts the leader;
- switches a provider into an outage (503 to every call) for a few seconds: a 5xx burst;
- re-publishes `refundq.submit` for refunds already finished or in flight;
- timing faults (unless ChaosOptions.timing is off): refunds whose first create the sandbox executes
  seconds after receipt without answering (delayed execution), answers a byte at a time and commits
  after the last one (trickled answer), or commits and then drops the connection (answer lost); and
  one worker slot runs every incarnation with a wall clock skewed by a random offset within +-30 s
  (REFUNDQ_CLOCK_SKEW; Cobo refuses nonces more than 5 minutes off).

Then it stops injecting faults, waits up to --settle seconds, and prints per provider: enqueued,
final, lost (not final after the settle time), created twice at the provider (sandbox ledger
`created` > 1), sent twice (a create call for a refund the provider already had: `create_calls`
> 1), and the time until the provider's last refund was final. Exit status 1 on any lost,
created-twice or sent-twice refund. Every process is started and stopped by its PID; every loop
is bounded in count and time.

What SQLite cannot promise (run it with --workers 1): it is one file on one host, so workers on
other machines cannot share it; writers are serialized (BEGIN IMMEDIATE, busy timeout 30 s), so
claims are conditional UPDATEs without SKIP LOCKED and throughput is lower under many threads;
WAL with synchronous=NORMAL survives a process kill (every kill here) but may lose the last
commits on power loss or an OS crash, and a refund committed as sent could then be forgotten
(its lookup on recovery still finds it at the provider, so it would not be paid twice). There is
no server to restart, so the database-restart fault does not apply.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.table import Table

from worker.demo import ADDRESSES, own_payment
from worker.procs import Children, free_port, http_ok, redis_answers, start_embedded_redis, wait_until

FINAL = {"completed", "failed", "rejected", "needs_attention", "cancelled"}
PROVIDERS = ("cobo", "coincorner", "coinvoyage", "cryptomus")
CURRENCIES = {"cobo": "ETH_USDT", "coincorner": "GBP", "coinvoyage": "USD", "cryptomus": "USDT"}
# Amount cents -> sandbox scenario (sandbox/core.py): normal x5, failed, partial, 429 first,
# 500 first, timeout after commit, rejected. No 59 (it waits for a person).
SCENARIOS = (0, 0, 0, 0, 0, 51, 52, 54, 55, 56, 58)
# Timing faults, added to the mix with ChaosOptions.timing: delayed execution, trickled answer, answer lost.
TIMING_SCENARIOS = (60, 61, 62)
TIMING_NAMES = {
    "delayed_execution": "delayed execution",
    "trickled_answer": "trickled answer",
    "answer_lost": "answer lost",
}
# REFUNDQ_CLOCK_SKEW values (seconds) for the skewed worker slot, drawn per incarnation.
CLOCK_SKEWS = ("+30", "+20", "+7", "-7", "-20", "-30")
SKEWED_SLOT = 0
# The worker must really time out on a withheld answer: its read timeout stays below the sandbox's hang,
# and its whole call (connect + read) ends before a delayed create executes.
HTTP_CONNECT_TIMEOUT = 1.0
HTTP_READ_TIMEOUT = 2.0
SANDBOX_HANG = 3.0
EXECUTE_DELAY = 6.0
# Per byte: the long answers (Cobo ~500, CoinVoyage ~700 bytes) outlast the worker's 3 s call deadline and
# commit 4-6 s after receipt, as late as a delayed execution; short ones (Cryptomus, CoinCorner) finish in time.
TRICKLE_INTERVAL = 0.008
assert HTTP_READ_TIMEOUT < SANDBOX_HANG and HTTP_CONNECT_TIMEOUT + HTTP_READ_TIMEOUT < EXECUTE_DELAY
EMBEDDED = "embedded"


def chaos_requests(n: int, run: str, scenarios: tuple[int, ...] = SCENARIOS) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        provider = PROVIDERS[i % 4]
        code = scenarios[(i // 4) % len(scenarios)]
        amount = Decimal(10 + i % 500) + Decimal(code) / 100
        order = f"chaos-{run}-{i}" + (f"-sbx{code:02d}" if code else "")
        by_provider: dict[str, dict[str, Any]] = {
            "cobo": {"order_id": order},
            "coincorner": {"order_id": order},
            "coinvoyage": {"payorder_id": order, "chain_id": 30000000000001},
            "cryptomus": {"order_id": order + "-amt" + format(amount, "f").replace(".", "_"), "network": "tron"},
        }
        fields = by_provider[provider]
        out.append(
            own_payment(
                {
                    "idempotency_key": f"chaos-{run}-{i}",
                    "provider": provider,
                    "account": f"{provider}-sandbox",
                    "amount": str(amount),
                    "currency": CURRENCIES[provider],
                    "destination": ADDRESSES[provider],
                    "fields": fields,
                }
            )
        )
    return out


@dataclass
class ChaosOptions:
    refunds: int = 200
    database_url: str | None = None  # None: the configured REFUNDQ_DATABASE_URL
    redis_url: str | None = None  # None: the configured REFUNDQ_REDIS_URL; "embedded": a private one
    workers: int = 2
    concurrency: int = 8
    settle: float = 120.0  # seconds after the chaos phase for every refund to become final
    chaos_seconds: float = 60.0  # longest chaos phase (it ends earlier once every refund is final)
    interval: float = 2.0  # seconds between faults
    kill_after_send: float = 0.02  # probability a worker dies between a provider's answer and the commit
    restart_postgres: bool = False
    seed: int | None = None
    timing: bool = True  # timing-fault scenarios in the mix, and a worker slot with a skewed clock


@dataclass
class Report:
    rows: dict[str, dict[str, Any]]
    statuses: Counter[str]
    events: Counter[str]
    elapsed: float
    failures: list[str] = field(default_factory=list)
    timing: Counter[str] = field(default_factory=Counter)  # timing faults the sandbox injected, by name

    @property
    def ok(self) -> bool:
        return not self.failures


class _Chaos:
    def __init__(self, opts: ChaosOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.rng = random.Random(opts.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="refundq-chaos-"))
        self.children = Children(self.workdir)
        self.events: Counter[str] = Counter()
        self.private_redis_port: int | None = None
        self.env: dict[str, str] = {}
        self.sandbox_url = ""
        self.incarnation = 0
        self.outage_until: dict[str, float] = {}
        self.second_dispatcher = False

    # --- processes --------------------------------------------------------------------------

    def start_worker(self, slot: int, kill_after_send: float) -> None:
        self.incarnation += 1
        env = {**self.env, "REFUNDQ_CHAOS_KILL_AFTER_SEND": str(kill_after_send)}
        if self.opts.timing and slot == SKEWED_SLOT:
            # Skewed and true clocks share the refunds: stored times, nonces and leases must not care.
            skew = self.rng.choice(CLOCK_SKEWS)
            env["REFUNDQ_CLOCK_SKEW"] = skew
            self.events[f"worker clock skew {skew}s"] += 1
        name = f"worker{slot}"
        self.children.refundq(
            name,
            ["worker", "-c", str(self.opts.concurrency), "-n", f"chaos{slot}-{self.incarnation}@%h", "-l", "WARNING"],
            env,
        )

    def kill(self, name: str) -> bool:
        proc = self.children.procs.get(name)
        if proc is None or proc.poll() is not None:
            return False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return True

    def restart_dead_workers(self, kill_after_send: float) -> None:
        for slot in range(self.opts.workers):
            proc = self.children.procs.get(f"worker{slot}")
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    self.events["worker died after send (hook)" if proc.returncode == 1 else "worker exited"] += 1
                    self.children.procs.pop(f"worker{slot}", None)
                self.start_worker(slot, kill_after_send)

    def restart_redis(self) -> None:
        assert self.private_redis_port is not None
        self.kill("redis")
        self.children.procs.pop("redis", None)
        start_embedded_redis(self.children, self.private_redis_port)

    def restart_postgres(self) -> None:
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            check=True,
            timeout=60,
            capture_output=True,
        )

    # --- faults -----------------------------------------------------------------------------

    def sandbox_config(self, **changes: Any) -> None:
        httpx.post(f"{self.sandbox_url}/_sandbox/config", json=changes, timeout=5).raise_for_status()

    def one_fault(self, rt: Any, ids: list[str]) -> None:
        database_is_pg = rt.settings.database_url.startswith("postgresql")
        faults: list[tuple[str, Callable[[], None]]] = [
            ("SIGKILL a worker", lambda: self._kill_worker()),
            ("SIGKILL a worker", lambda: self._kill_worker()),
            ("flush Redis", lambda: self._flush(rt)),
            ("5xx burst (provider outage)", lambda: self._outage()),
            ("5xx burst (provider outage)", lambda: self._outage()),
            ("re-publish submit for finished / in-flight refunds", lambda: self._republish(rt, ids)),
            ("re-publish submit for finished / in-flight refunds", lambda: self._republish(rt, ids)),
            ("SIGKILL the first dispatcher and restart it", lambda: self._kill_dispatcher()),
        ]
        if not self.second_dispatcher:
            faults.append(("start a second dispatcher", lambda: self._second_dispatcher()))
        if self.private_redis_port is not None:
            faults.append(("restart Redis", self.restart_redis))
        if self.opts.restart_postgres and database_is_pg:
            faults.append(("restart PostgreSQL", self.restart_postgres))
        name, action = self.rng.choice(faults)
        try:
            action()
            self.events[name] += 1
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            self.events[f"{name}: failed ({type(exc).__name__})"] += 1

    def _kill_worker(self) -> None:
        slot = self.rng.randrange(self.opts.workers)
        self.kill(f"worker{slot}")
        self.children.procs.pop(f"worker{slot}", None)
        self.start_worker(slot, self.opts.kill_after_send)

    def _kill_dispatcher(self) -> None:
        self.kill("dispatcher")
        self.children.procs.pop("dispatcher", None)
        self.children.refundq("dispatcher", ["dispatcher"], self.env)

    def _second_dispatcher(self) -> None:
        self.children.refundq("dispatcher2", ["dispatcher"], self.env)
        self.second_dispatcher = True

    def _flush(self, rt: Any) -> None:
        from redis import Redis

        client = Redis.from_url(rt.settings.redis_url, socket_timeout=5)
        if self.private_redis_port is not None:
            client.flushall()
        else:
            client.flushdb()

    def _outage(self) -> None:
        provider = self.rng.choice(PROVIDERS)
        self.outage_until[provider] = time.monotonic() + self.rng.uniform(1.0, 4.0)
        self.sandbox_config(outage={p: True for p in self.outage_until})

    def end_outages(self, force: bool = False) -> None:
        now = time.monotonic()
        ended = [p for p, until in self.outage_until.items() if force or until <= now]
        if ended:
            for p in ended:
                del self.outage_until[p]
            self.sandbox_config(outage={p: True for p in self.outage_until})

    def _republish(self, rt: Any, ids: list[str]) -> None:
        from worker.engine import publish

        with rt.engine.connect() as conn:
            from sqlalchemy import text

            rows = conn.execute(text("SELECT id, status FROM refund WHERE status <> 'queued'")).all()
        wanted = set(ids)
        picked = [r.id for r in rows if r.id in wanted]
        self.rng.shuffle(picked)
        publish(picked[:100], [])

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> Report:
        opts = self.opts
        from config.settings import get_settings

        configured = get_settings()
        redis_url = opts.redis_url or configured.redis_url
        if redis_url == EMBEDDED:
            self.private_redis_port = free_port()
            redis_url = start_embedded_redis(self.children, self.private_redis_port)
        elif not redis_answers(redis_url):
            raise SystemExit(f"no Redis answers at {redis_url} (use --redis-url embedded for a private one)")
        database_url = opts.database_url or configured.database_url
        port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{port}"
        from sandbox.accounts import write_sandbox_accounts

        accounts = write_sandbox_accounts(self.workdir, self.sandbox_url)
        run = f"{int(time.time())}-{self.rng.randrange(10**6)}"
        self.env = {
            "REFUNDQ_DATABASE_URL": database_url,
            "REFUNDQ_REDIS_URL": redis_url,
            "REFUNDQ_ACCOUNTS_FILE": str(accounts),
            "REFUNDQ_REDIS_PREFIX": f"refundq-chaos-{run}",
            "REFUNDQ_POLL_INITIAL": "0.5",
            "REFUNDQ_POLL_MAX": "2",
            "REFUNDQ_RETRY_INITIAL": "0.5",
            "REFUNDQ_RETRY_MAX": "2",
            "REFUNDQ_HTTP_CONNECT_TIMEOUT": str(HTTP_CONNECT_TIMEOUT),
            "REFUNDQ_HTTP_READ_TIMEOUT": str(HTTP_READ_TIMEOUT),
            "REFUNDQ_TASK_SOFT_TIME_LIMIT": "5",
            "REFUNDQ_TASK_TIME_LIMIT": "8",
            # A send lease this short makes a killed worker's refund due again within seconds; it still
            # outlasts the longest send (0.5 token + 1 lane + 0.5 nonce + 3 call, plus a 1 s margin).
            "REFUNDQ_LEASE_SECONDS": "10",
            "REFUNDQ_THROTTLE_GIVEBACK": "0.5",
            "REFUNDQ_LANE_WAIT": "1",
            "REFUNDQ_LEASE_MARGIN": "1",
            "REFUNDQ_PUBLISH_GRACE": "3",
            "REFUNDQ_DISPATCH_INTERVAL": "0.5",
            "REFUNDQ_WORKER_SOFT_SHUTDOWN_TIMEOUT": "5",
            "REFUNDQ_BREAKER_COOLDOWN": "3",
            "REFUNDQ_MAX_ATTEMPTS": "20",
            "REFUNDQ_PARTIAL_DEADLINE_HOURS": str(5 / 3600),
            "REFUNDQ_LOG_LEVEL": "WARNING",
        }
        os.environ.update(self.env)  # before worker.app is imported: its Celery app reads the URL once
        get_settings.cache_clear()
        from config.logging import configure_logging

        configure_logging("console", "WARNING")
        from worker.migrate import upgrade
        from worker.producer import enqueue_refund
        from worker.runtime import build_runtime

        upgrade(database_url)
        self.children.refundq(
            "sandbox",
            ["sandbox", "--port", str(port), "--accounts", str(accounts), "--step", "0.3", "--hang", str(SANDBOX_HANG)],
            self.env,
        )
        wait_until(lambda: http_ok(f"{self.sandbox_url}/_sandbox/health"), 30, "sandbox")
        self.sandbox_config(execute_delay_seconds=EXECUTE_DELAY, trickle_interval=TRICKLE_INTERVAL)
        for slot in range(opts.workers):
            self.start_worker(slot, opts.kill_after_send)
        self.children.refundq("dispatcher", ["dispatcher"], self.env)
        where = database_url.split("@")[-1]
        self.console.print(
            f"chaos: {opts.refunds} refunds, {opts.workers} workers x {opts.concurrency}, db {where}, "
            f"redis {redis_url}, sandbox :{port}; logs in {self.workdir}"
        )

        rt = build_runtime(get_settings())
        started = time.monotonic()
        requests = chaos_requests(opts.refunds, run, SCENARIOS + TIMING_SCENARIOS if opts.timing else SCENARIOS)
        ids: list[str] = []
        provider_of: dict[str, str] = {}
        next_fault = time.monotonic() + opts.interval
        for req in requests:
            refund = enqueue_refund(req, rt).refund
            ids.append(refund.id)
            provider_of[refund.id] = refund.provider
            if time.monotonic() >= next_fault:  # faults start while refunds are still arriving
                self.one_fault(rt, ids)
                self.end_outages()
                next_fault = time.monotonic() + opts.interval
        self.console.print(f"enqueued {len(ids)} in {time.monotonic() - started:.1f}s")

        final_at: dict[str, float] = {}
        chaos_end = time.monotonic() + opts.chaos_seconds
        max_faults = int(opts.chaos_seconds / opts.interval) + 1
        faults = 0
        while time.monotonic() < chaos_end and faults < max_faults:
            self._observe(rt, ids, final_at, started)
            if len(final_at) == len(ids):
                break
            self.restart_dead_workers(opts.kill_after_send)
            self.end_outages()
            self.one_fault(rt, ids)
            faults += 1
            pause_end = time.monotonic() + opts.interval
            while time.monotonic() < pause_end:
                time.sleep(0.5)
                self._observe(rt, ids, final_at, started)
        # Calm: no more faults. Every worker alive, no hook, no outage; then wait for the rest.
        self.end_outages(force=True)
        for slot in range(opts.workers):
            self.kill(f"worker{slot}")
            self.children.procs.pop(f"worker{slot}", None)
            self.start_worker(slot, 0.0)
        settle_end = time.monotonic() + opts.settle
        while time.monotonic() < settle_end:
            self._observe(rt, ids, final_at, started)
            if len(final_at) == len(ids):
                break
            self.restart_dead_workers(0.0)
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        return self._report(rt, ids, provider_of, final_at, elapsed)

    def _observe(self, rt: Any, ids: list[str], final_at: dict[str, float], started: float) -> None:
        from sqlalchemy import text

        try:
            with rt.engine.connect() as conn:
                rows = conn.execute(text("SELECT id, status FROM refund")).all()
        except Exception as exc:  # PostgreSQL restarting
            self.events[f"observe failed ({type(exc).__name__})"] += 1
            return
        wanted = set(ids)
        now = time.monotonic() - started
        for r in rows:
            if r.status in FINAL and r.id in wanted and r.id not in final_at:
                final_at[r.id] = now

    def _report(
        self, rt: Any, ids: list[str], provider_of: dict[str, str], final_at: dict[str, float], elapsed: float
    ) -> Report:
        from sqlalchemy import text

        with rt.engine.connect() as conn:
            status_of = {r.id: r.status for r in conn.execute(text("SELECT id, status FROM refund"))}
        snapshot = httpx.get(f"{self.sandbox_url}/_sandbox/ledger", timeout=10).json()
        ledger = snapshot["refunds"]
        rows: dict[str, dict[str, Any]] = {
            p: {"enqueued": 0, "final": 0, "lost": 0, "created_twice": 0, "sent_twice": 0, "settle": 0.0}
            for p in PROVIDERS
        }
        statuses: Counter[str] = Counter()
        for refund_id in ids:
            row = rows[provider_of[refund_id]]
            status = status_of.get(refund_id, "missing")
            statuses[status] += 1
            row["enqueued"] += 1
            if status in FINAL:
                row["final"] += 1
                row["settle"] = max(row["settle"], final_at.get(refund_id, elapsed))
            else:
                row["lost"] += 1
        by_provider: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in ledger:
            by_provider[entry["provider"]].append(entry)
        for provider, entries in by_provider.items():
            rows[provider]["created_twice"] = sum(1 for e in entries if e["created"] > 1)
            rows[provider]["sent_twice"] = sum(1 for e in entries if e["create_calls"] > 1)
        failures = []
        for provider, row in rows.items():
            for what in ("lost", "created_twice", "sent_twice"):
                if row[what]:
                    failures.append(f"{provider}: {row[what]} {what.replace('_', ' ')}")
        return Report(rows, statuses, self.events, elapsed, failures, timing_faults(snapshot["counters"]))


def timing_faults(counters: dict[str, int]) -> Counter[str]:
    """Timing faults the sandbox fired (counters `<provider>:timing:<fault>`), summed over providers."""
    fired: Counter[str] = Counter()
    for key, n in counters.items():
        kind, _, fault = key.partition(":")[2].partition(":")
        if kind == "timing":
            fired[TIMING_NAMES.get(fault, fault)] += n
    return fired


def print_report(report: Report, console: Console) -> None:
    table = Table(title=f"refundq chaos: {report.elapsed:.0f}s", box=box.MARKDOWN)
    for col in ("provider", "enqueued", "final", "lost", "created twice", "sent twice", "time to settle"):
        table.add_column(col, justify="left" if col == "provider" else "right")
    for provider, row in report.rows.items():
        settle = f"{row['settle']:.1f}s" if not row["lost"] else "-"
        table.add_row(
            provider,
            *(str(row[k]) for k in ("enqueued", "final", "lost", "created_twice", "sent_twice")),
            settle,
        )
    console.print(table)
    console.print("final statuses: " + ", ".join(f"{s} {n}" for s, n in sorted(report.statuses.items())))
    console.print("faults injected: " + ", ".join(f"{e} x{n}" for e, n in sorted(report.events.items())))
    timing = ", ".join(f"{name} x{report.timing[name]}" for name in TIMING_NAMES.values())
    console.print(f"timing faults injected (sandbox, first create only): {timing}")
    console.print(
        "[green]OK: nothing lost, nothing twice[/green]" if report.ok else "FAILED: " + "; ".join(report.failures)
    )


def run_chaos(opts: ChaosOptions, console: Console | None = None) -> int:
    console = console or Console()
    chaos = _Chaos(opts, console)
    try:
        report = chaos.run()
    finally:
        for name in reversed(list(chaos.children.procs)):  # workers and dispatchers before Redis
            chaos.children.stop(name)
    print_report(report, console)
    return 0 if report.ok else 1
