"""The `refundq` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker.text import escape_controls

app = typer.Typer(help="refundq: submit crypto refunds once, follow them to a final status.", no_args_is_help=True)
refund_app = typer.Typer(help="Create and inspect refunds.", no_args_is_help=True)
app.add_typer(refund_app, name="refund")
console = Console()


def _shown(value: Any, style: str = "") -> Text:
    """Stored text came from producers and providers: control characters are shown escaped
    (`\\x1b`), never sent to the terminal, and `[red]` stays literal (Text is not markup)."""
    return Text(escape_controls(str(value)), style=style)


def _runtime() -> Any:
    from worker.runtime import get_runtime

    return get_runtime()


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic, to head)."""
    from config.settings import get_settings
    from worker.migrate import upgrade

    url = get_settings().database_url
    upgrade(url)
    console.print(f"database at {url.split('@')[-1]} is at the latest schema")


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option("-c", "--concurrency")] = 16,
    queues: Annotated[str, typer.Option("-Q", "--queues")] = "refundq.submit,refundq.poll,refundq.intake",
    pool: str = "threads",
    name: Annotated[str, typer.Option("-n", "--name")] = "refundq@%h",
    loglevel: Annotated[str, typer.Option("-l", "--loglevel")] = "INFO",
) -> None:
    """Run a Celery worker (threads pool: provider calls are I/O-bound). With refundq.intake in -Q,
    also the intake consumer, in its own thread: submits and polls never wait behind intake."""
    import threading

    from worker import intake
    from worker.app import INTAKE_QUEUE, celery_app, check_invariants

    problems = check_invariants(celery_app.conf)
    if problems:
        console.print("[red]refundq worker refuses to start:[/red]\n  - " + "\n  - ".join(problems))
        raise typer.Exit(2)
    rt = _runtime()  # load accounts and logging now: a bad accounts file fails here, not on the first task
    names = [q for q in queues.split(",") if q]
    celery_queues = [q for q in names if q != INTAKE_QUEUE]
    if not celery_queues:
        _run_until_signal(lambda stop: intake.run(rt, stop))
        return
    from celery.signals import worker_init

    controllers: list[Any] = []
    worker_init.connect(lambda sender=None, **_: controllers.append(sender), weak=False)
    stop = threading.Event()
    consumer = None
    if INTAKE_QUEUE in names:
        consumer = threading.Thread(target=intake.run, args=(rt, stop), name="refundq-intake", daemon=True)
        consumer.start()
    try:
        celery_app.worker_main(
            [
                "worker",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-Q",
                ",".join(celery_queues),
                "-n",
                name,
                "--loglevel",
                loglevel,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    except SystemExit as exc:
        if exc.code:
            raise
    finally:
        stop.set()
        if consumer is not None:
            consumer.join(timeout=10)
    # Celery logs "Unrecoverable error" and still exits 0: a supervisor told to restart on failure
    # would leave the worker down. Its controller knows the real exit code.
    code = getattr(controllers[0], "exitcode", None) if controllers else None
    if code:
        raise typer.Exit(code)


@app.command("intake")
def intake_consumer() -> None:
    """Run only the intake consumer (door (b)'s queue), e.g. to scale it apart from the workers."""
    from worker import intake

    rt = _runtime()
    _run_until_signal(lambda stop: intake.run(rt, stop))


def _run_until_signal(loop: Any) -> None:
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    loop(stop)


@app.command()
def dispatcher(max_ticks: Annotated[int | None, typer.Option(help="stop after N ticks")] = None) -> None:
    """Claim due refunds every second and publish their submit/poll work."""
    from worker.dispatcher import run

    rt = _runtime()
    _run_until_signal(lambda stop: run(rt, stop, max_ticks))


@app.command()
def sandbox(
    port: int = 8700,
    host: str = "127.0.0.1",
    accounts: Annotated[Path, typer.Option(help="accounts TOML the sandbox trusts")] = Path("accounts.toml"),
    step: Annotated[float, typer.Option(help="seconds per lifecycle phase")] = 1.0,
    hang: Annotated[float, typer.Option(help="seconds a timeout-after-commit create hangs")] = 30.0,
    latency: Annotated[float, typer.Option(help="seconds added to every provider call")] = 0.0,
) -> None:
    """Serve the four provider emulators (never a real provider)."""
    import uvicorn

    from config.accounts import load_accounts
    from sandbox.app import create_app
    from sandbox.core import SandboxConfig

    application = create_app(
        load_accounts(accounts),
        SandboxConfig(step_seconds=step, hang_seconds=hang, latency_seconds=latency),
        accounts_file=accounts,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning", lifespan="off")


@app.command()
def demo(
    refunds: Annotated[int, typer.Option(help="how many refunds")] = 40,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 60.0,
) -> None:
    """Push refunds through all four sandboxes and watch them reach final statuses."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo(refunds, timeout, console))


@app.command()
def chaos(
    refunds: Annotated[int, typer.Option(help="how many refunds (all four providers, fault scenarios)")] = 200,
    database_url: Annotated[str | None, typer.Option(help="default: REFUNDQ_DATABASE_URL")] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="default: REFUNDQ_REDIS_URL; 'embedded': a private Redis (flushed, restarted)")
    ] = None,
    workers: Annotated[int, typer.Option(help="worker processes")] = 2,
    concurrency: Annotated[int, typer.Option(help="threads per worker")] = 8,
    settle: Annotated[float, typer.Option(help="seconds after the faults for every refund to be final")] = 120.0,
    chaos_seconds: Annotated[float, typer.Option(help="longest fault phase, seconds")] = 60.0,
    kill_after_send: Annotated[float, typer.Option(help="chance a worker dies between answer and commit")] = 0.02,
    restart_postgres: Annotated[bool, typer.Option(help="also restart the machine's PostgreSQL")] = False,
    seed: Annotated[int | None, typer.Option(help="random seed for the faults")] = None,
    timing: Annotated[
        bool, typer.Option(help="timing faults: late execution, trickled and lost answers, worker clock skew")
    ] = True,
) -> None:
    """Kill workers, flush and restart Redis, double the dispatcher, inject provider faults and
    timing faults; then count refunds lost or created twice. Exit 1 on any."""
    from worker.chaos import ChaosOptions, run_chaos

    opts = ChaosOptions(
        refunds=refunds,
        database_url=database_url,
        redis_url=redis_url,
        workers=workers,
        concurrency=concurrency,
        settle=settle,
        chaos_seconds=chaos_seconds,
        kill_after_send=kill_after_send,
        restart_postgres=restart_postgres,
        seed=seed,
        timing=timing,
    )
    raise typer.Exit(run_chaos(opts, console))


@refund_app.command("create")
def refund_create(
    key: Annotated[str, typer.Option("--key", help="idempotency key")],
    provider: Annotated[str, typer.Option()],
    account: Annotated[str, typer.Option()],
    amount: Annotated[str, typer.Option(help="decimal string, e.g. 12.50")],
    currency: Annotated[str, typer.Option()],
    destination: Annotated[str, typer.Option()],
    field: Annotated[list[str] | None, typer.Option(help="provider field NAME=VALUE (repeatable)")] = None,
    paid_amount: Annotated[
        str | None, typer.Option(help="what the customer paid for the original payment (cobo, coinvoyage)")
    ] = None,
) -> None:
    """Validate, store and enqueue one refund."""
    from worker.producer import IdempotencyConflict, enqueue_refund
    from worker.validation import ValidationFailed

    fields: dict[str, Any] = {}
    for item in field or []:
        name, sep, value = item.partition("=")
        if not sep:
            console.print(_shown(f"--field {item!r}: expected NAME=VALUE", "red"))
            raise typer.Exit(2)
        fields[name] = _field_value(value)
    try:
        result = enqueue_refund(
            {
                "idempotency_key": key,
                "provider": provider,
                "account": account,
                "amount": amount,
                **({} if paid_amount is None else {"paid_amount": paid_amount}),
                "currency": currency,
                "destination": destination,
                "fields": fields,
            }
        )
    except ValidationFailed as exc:
        for err in exc.errors:
            console.print(Text.assemble(_shown(err.field, "red"), ": ", _shown(err.rule)))
        raise typer.Exit(2) from None
    except IdempotencyConflict as exc:
        console.print(Text.assemble(("conflict: ", "red"), _shown(exc)))
        raise typer.Exit(3) from None
    console.print(result.message)
    print(result.refund.id)


def _field_value(text: str) -> Any:
    """JSON literals (true, 42, null) become values; anything else stays a string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int) or value is None else text


# Shown only when set: most refunds have none of them.
OPTIONAL_SHOWN = frozenset({"paid_amount", "settled_amount", "fee", "retry_of", "follow_up_of"})


@refund_app.command("show")
def refund_show(refund: Annotated[str, typer.Argument(help="refund id or idempotency key")]) -> None:
    """One refund with every event."""
    from worker import store

    rt = _runtime()
    with rt.engine.connect() as conn:
        row = store.get_refund(conn, refund) or store.get_by_key(conn, refund)
        key = row.idempotency_key if row is not None else refund
        # Also with a refund: a rejected "same key, different amount" must not stay invisible.
        rejected = store.rejected_intakes(conn, key)
        evts = store.events(conn, row.id) if row is not None else []
    if row is None:
        if not rejected:
            console.print(_shown(f"no refund with id or key {refund!r}"))
            raise typer.Exit(1)
        _print_rejected(key, rejected)
        raise typer.Exit(0)
    table = Table(title=_shown(f"refund {row.id}"), show_header=False)
    for name in (
        "idempotency_key",
        "provider",
        "account",
        "amount",
        "currency",
        "destination",
        "fields",
        "payment_key",
        "paid_amount",
        "status",
        "provider_status",
        "provider_refund_id",
        "settled_amount",
        "fee",
        "retry_of",
        "follow_up_of",
        "attempts",
        "next_action_at",
        "deadline",
        "last_error",
        "detail",
        "created_at",
        "updated_at",
    ):
        value = getattr(row, name)
        if value is not None or name not in OPTIONAL_SHOWN:
            table.add_row(name, _shown(value))
    console.print(table)
    events = Table(title="events")
    for col in ("at", "from", "to", "provider status", "reason"):
        events.add_column(col)
    for e in evts:
        events.add_row(
            f"{e['created_at']:%H:%M:%S.%f}"[:-3],
            _shown(e["from_status"] or ""),
            _shown(e["to_status"]),
            _shown(e["provider_status"] or ""),
            _shown(e["reason"] or ""),
        )
    console.print(events)
    _print_rejected(key, rejected)


def _print_rejected(key: str, rejected: list[dict[str, Any]]) -> None:
    if not rejected:
        return
    console.print(
        Text.assemble(_shown(f"idempotency key {key!r}: "), _shown(f"rejected at intake {len(rejected)}x", "red"))
    )
    for r in rejected:
        console.print(_shown(f"  {r['created_at']:%Y-%m-%d %H:%M:%S}  " + "; ".join(map(str, r["reasons"]))))


@refund_app.command("list")
def refund_list(status: Annotated[str | None, typer.Option()] = None, limit: int = 50) -> None:
    """Newest refunds, optionally of one status."""
    from worker import store

    rt = _runtime()
    with rt.engine.connect() as conn:
        rows = store.list_refunds(conn, status=status, limit=limit)
    table = Table()
    for col in ("id", "provider", "account", "amount", "currency", "status", "provider status", "updated"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            *(
                _shown(v)
                for v in (r.id, r.provider, r.account, r.amount, r.currency, r.status, r.provider_status or "")
            ),
            f"{r.updated_at:%Y-%m-%d %H:%M:%S}",
        )
    console.print(table)


@refund_app.command("approve")
def refund_approve(
    refund: Annotated[str, typer.Argument(help="refund id")],
    by: Annotated[str, typer.Option("--by", help="who approves (recorded in the event)")],
    note: Annotated[str | None, typer.Option(help="why (recorded in the event)")] = None,
) -> None:
    """Release a refund held in awaiting_approval: it is queued, due now, and sent."""
    _decide("approve", refund, by, note)


@refund_app.command("deny")
def refund_deny(
    refund: Annotated[str, typer.Argument(help="refund id")],
    by: Annotated[str, typer.Option("--by", help="who denies (recorded in the event)")],
    note: Annotated[str, typer.Option(help="why (recorded in the event; required)")],
) -> None:
    """Refuse a refund held in awaiting_approval: it is cancelled and never sent."""
    _decide("deny", refund, by, note)


def _decide(action: str, refund: str, by: str, note: str | None) -> None:
    from worker.approval import ApprovalError, approve, deny

    try:
        if action == "approve":
            moved = approve(_runtime(), refund, by=by, note=note)
        else:
            moved = deny(_runtime(), refund, by=by, note=note or "")
    except ApprovalError as exc:
        console.print(_shown(exc, "red"), soft_wrap=True)  # one line, never wrapped
        raise typer.Exit(1) from None
    done = "approved" if action == "approve" else "denied"
    console.print(_shown(f"refund {moved.id} {done} by {by.strip()}: now {moved.status}"), soft_wrap=True)


def _operator_call(action: Any) -> Any:
    """Run an operator action; a refusal or a bad argument is one red line and exit 1 / 2."""
    from worker.operator import ActionRefused

    try:
        return action()
    except ActionRefused as exc:
        console.print(Text.assemble(("refused: ", "red"), _shown(exc)))
        raise typer.Exit(1) from None
    except LookupError as exc:
        console.print(_shown(str(exc).strip("'\"")))
        raise typer.Exit(1) from None
    except ValueError as exc:
        console.print(_shown(exc, "red"))
        raise typer.Exit(2) from None


@refund_app.command("resolve")
def refund_resolve(
    refund: Annotated[str, typer.Argument(help="refund id or idempotency key (needs_attention)")],
    as_: Annotated[str, typer.Option("--as", help="completed or failed")],
    by: Annotated[str, typer.Option("--by", help="who decides (recorded)")],
    note: Annotated[str, typer.Option("--note", help="why (recorded)")],
    force: Annotated[
        bool, typer.Option("--force", help="--as completed although the provider does not report it (recorded)")
    ] = False,
) -> None:
    """Close a needs_attention refund after a fresh lookup at the provider (the rule: README)."""
    from providers.base import RefundStatus
    from worker.operator import resolve

    if as_ not in ("completed", "failed"):
        console.print("--as must be completed or failed")
        raise typer.Exit(2)
    done = _operator_call(lambda: resolve(_runtime(), refund, RefundStatus(as_), by=by, note=note, force=force))
    console.print(Text.assemble("provider: ", _shown(done.view.summary() if done.view else "-")))
    console.print(Text.assemble(_shown(f"{done.refund_id} resolved as {as_}: "), _shown(done.reason)))


@refund_app.command("retry")
def refund_retry(
    refund: Annotated[str, typer.Argument(help="refund id or idempotency key")],
    by: Annotated[str, typer.Option("--by", help="who decides (recorded)")],
    note: Annotated[str | None, typer.Option("--note", help="why (recorded)")] = None,
) -> None:
    """A new attempt of a refund the provider proved unpaid (rejected, failed, cancelled unsent)."""
    from worker.operator import retry

    done = _operator_call(lambda: retry(_runtime(), refund, by=by, note=note))
    console.print(Text.assemble(_shown(f"retried as {done.refund_id}: "), _shown(done.reason)))
    print(done.refund_id)


@refund_app.command("follow-up")
def refund_follow_up(
    refund: Annotated[str, typer.Argument(help="refund id or idempotency key (partially_completed)")],
    by: Annotated[str, typer.Option("--by", help="who decides (recorded)")],
    note: Annotated[str | None, typer.Option("--note", help="why (recorded)")] = None,
) -> None:
    """A new refund for what a partially completed one did not pay, within the payment's ceiling."""
    from worker.operator import follow_up

    done = _operator_call(lambda: follow_up(_runtime(), refund, by=by, note=note))
    console.print(Text.assemble(_shown(f"followed up as {done.refund_id}: "), _shown(done.reason)))
    print(done.refund_id)


@refund_app.command("cancel")
def refund_cancel(
    refund: Annotated[str, typer.Argument(help="refund id or idempotency key")],
    by: Annotated[str, typer.Option("--by", help="who decides (recorded)")],
    note: Annotated[str | None, typer.Option("--note", help="why (recorded)")] = None,
) -> None:
    """Cancel a refund that was never sent (queued, never claimed)."""
    from worker.operator import cancel

    done = _operator_call(lambda: cancel(_runtime(), refund, by=by, note=note))
    console.print(_shown(f"{done.refund_id} cancelled"))


# --- bulk batches and reconciliation (worker/batch/, worker/reconcile.py) -----------------------

batch_app = typer.Typer(help="Bulk refunds from a CSV or JSON-lines file.", no_args_is_help=True)
app.add_typer(batch_app, name="batch")


def _bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


@batch_app.command("submit")
def batch_submit(
    file: Annotated[Path, typer.Argument(help="CSV (header row) or JSON lines, one refund per row")],
    name: Annotated[str | None, typer.Option(help="a name for the batch (default: the file name)")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="store the valid rows anyway")] = False,
    rejects: Annotated[Path | None, typer.Option(help="where --skip-invalid writes the rejected rows")] = None,
) -> None:
    """Validate every row, then store and enqueue the whole file as one batch (nothing when a row is bad)."""
    from worker.batch import BatchFileError, BatchInvalid, enqueue_batch

    rt = _runtime()
    with _bar() as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                label = {"validate": "validating", "publish": "publishing"}.get(phase, "storing")
                tasks[phase] = bar.add_task(label, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        try:
            result = enqueue_batch(
                file, name=name, skip_invalid=skip_invalid, rejects=rejects, rt=rt, progress=progress
            )
        except BatchFileError as exc:
            console.print(Text.assemble(_shown(exc, "red"), "; nothing was stored"))
            raise typer.Exit(2) from None
        except BatchInvalid as exc:
            bar.stop()
            console.print(f"[red]{exc.bad_rows} of {exc.rows} rows are invalid; nothing was stored[/red]")
            for err in exc.errors:
                console.print(Text.assemble(f"  row {err.row}: ", _shown(err.field, "red"), ": ", _shown(err.rule)))
            if exc.bad_rows > len({e.row for e in exc.errors}):
                console.print(f"  ... (first {len(exc.errors)} problems shown)")
            console.print("fix them, or submit with --skip-invalid to store the valid rows")
            raise typer.Exit(2) from None
    for err in result.errors[:20]:
        console.print(Text.assemble(f"  skipped row {err.row}: ", _shown(err.field, "yellow"), ": ", _shown(err.rule)))
    console.print(result.message)
    print(result.batch.id)


def _batch_view(batch_id: str) -> Any:
    from rich.console import Group
    from rich.progress_bar import ProgressBar

    from worker.batch import get_batch, summary

    rt = _runtime()
    with rt.engine.connect() as conn:
        batch = get_batch(conn, batch_id)
        if batch is None:
            return None
        info = summary(conn, batch_id)
    counts = {k: v for k, v in batch.counts.items() if v}
    done = batch.inserted - batch.open
    head = Table(title=f"batch {batch.id}: {batch.name}", show_header=False)
    head.add_row("refunds", f"{batch.inserted} of {batch.total} stored, {done} final, {batch.open} open")
    head.add_row("created", f"{batch.created_at:%Y-%m-%d %H:%M:%S}")
    head.add_row("finished", f"{batch.finished_at:%Y-%m-%d %H:%M:%S}" if batch.finished_at else "-")
    if batch.retry_of:
        head.add_row("retry of", batch.retry_of)
    head.add_row("by status", ", ".join(f"{k} {v}" for k, v in counts.items()) or "-")
    per = Table(title="per provider")
    statuses = sorted({s for c in info["per_provider"].values() for s in c})
    per.add_column("provider")
    for s in statuses:
        per.add_column(s, justify="right")
    for provider, c in sorted(info["per_provider"].items()):
        per.add_row(provider, *(str(c.get(s, 0)) for s in statuses))
    parts: list[Any] = [head, ProgressBar(total=max(batch.total, 1), completed=done, width=60), per]
    for title, rows in (("slowest", info["slowest"]), ("oldest open", info["oldest_open"]), ("failed", info["failed"])):
        if not rows:
            continue
        t = Table(title=title)
        for col in ("id", "provider", "amount", "status", "took", "reason"):
            t.add_column(col)
        for r in rows:
            took = (r.updated_at - r.created_at).total_seconds()
            t.add_row(r.id, r.provider, str(r.amount), r.status, f"{took:.1f}s", _shown((r.last_error or "")[:70]))
        parts.append(t)
    return batch, Group(*parts)


@batch_app.command("show")
def batch_show(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    watch: Annotated[bool, typer.Option("--watch", help="refresh until every refund is final")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 1.0,
    timeout: Annotated[float, typer.Option(help="--watch gives up after this many seconds")] = 86400.0,
) -> None:
    """Progress, counts per status and provider, the slowest and the failed refunds."""
    import time

    from rich.live import Live

    view = _batch_view(batch_id)
    if view is None:
        console.print(_shown(f"no batch {batch_id!r}"))
        raise typer.Exit(1)
    if not watch:
        console.print(view[1])
        return
    deadline = time.monotonic() + timeout
    with Live(view[1], console=console, refresh_per_second=4) as live:
        while view[0].finished_at is None and time.monotonic() < deadline:
            time.sleep(interval)
            view = _batch_view(batch_id)
            live.update(view[1])


@batch_app.command("export")
def batch_export(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json (one JSON object per line)")] = "csv",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="file (default: standard output)")] = None,
) -> None:
    """One line per refund: final status, provider ids, reason."""
    import sys

    from worker.batch import export

    if fmt not in ("csv", "json"):
        console.print("--format must be csv or json")
        raise typer.Exit(2)
    try:
        if output is None:
            n = export(batch_id, sys.stdout, fmt, rt=_runtime())
        else:
            with output.open("w", encoding="utf-8", newline="") as out:
                n = export(batch_id, out, fmt, rt=_runtime())
    except LookupError as exc:
        console.print(str(exc).strip("'\""))
        raise typer.Exit(1) from None
    if output is not None:
        console.print(f"{n} refunds written to {output}")


@batch_app.command("retry")
def batch_retry(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    status: Annotated[list[str] | None, typer.Option(help="which refunds to retry (repeatable)")] = None,
    by: Annotated[str | None, typer.Option("--by", help="who decides (recorded; default: your login)")] = None,
) -> None:
    """Re-enqueue the batch's refunds in STATUS (default failed) as new attempts, in a new batch,
    where the provider proved nothing was paid (the rule: README); the others are listed."""
    import getpass

    from worker.batch import retry
    from worker.operator import MAX_NAME, operator_text

    try:
        who = operator_text(by or getpass.getuser(), "--by", MAX_NAME)
        result = retry(batch_id, status or ["failed"], rt=_runtime(), by=who)
    except (LookupError, ValueError) as exc:
        console.print(f"[red]{str(exc).strip(chr(39))}[/red]")
        raise typer.Exit(1) from None
    for why in result.skipped[:20]:
        console.print(_shown(f"  not retried: {why}"))
    if len(result.skipped) > 20:
        console.print(f"  ... and {len(result.skipped) - 20} more not retried")
    if result.batch is None:
        console.print("nothing to retry")
        return
    console.print(f"{result.retried} refunds retried in batch {result.batch.id}")
    print(result.batch.id)


@batch_app.command("cancel")
def batch_cancel(batch_id: Annotated[str, typer.Argument(help="batch id")]) -> None:
    """Cancel the batch's refunds that are not yet submitted (queued)."""
    from worker.batch import cancel

    try:
        n = cancel(batch_id, rt=_runtime())
    except LookupError as exc:
        console.print(str(exc).strip(chr(39)))
        raise typer.Exit(1) from None
    console.print(f"{n} refunds cancelled")


@app.command()
def reconcile(
    since: Annotated[str, typer.Option(help="re-read refunds finished within this (7d, 12h, 30m)")] = "7d",
    sample: Annotated[float | None, typer.Option(help="fraction of finished refunds to re-read")] = None,
) -> None:
    """Compare the database with the providers now (status reads only) and print a report."""
    from worker.reconcile import parse_since
    from worker.reconcile import reconcile as run_reconcile

    try:
        window = parse_since(since)
    except ValueError as exc:
        console.print(str(exc))
        raise typer.Exit(2) from None
    rt = _runtime()
    with _bar() as bar:
        task = bar.add_task("reconciling", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = run_reconcile(rt, window, sample, progress)
    counts = report.counts
    console.print(
        f"checked {len(report.findings)}: {counts.get('ok', 0)} agree, {counts.get('drift', 0)} drifted "
        f"(now needs_attention), {counts.get('error', 0)} could not be read, {counts.get('skipped', 0)} skipped"
    )
    if report.drift:
        t = Table(title="drift")
        for col in ("refund", "provider", "was", "provider status", "what differs"):
            t.add_column(col)
        for f in report.drift:
            t.add_row(f.refund_id, f.provider, f.status, _shown(f.provider_status or ""), _shown("; ".join(f.problems)))
        console.print(t)
    for f in report.errors[:20]:
        console.print(Text.assemble((f"  {f.refund_id}", "yellow"), f" ({f.provider}): ", _shown(f.error)))
    raise typer.Exit(1 if report.drift else 0)


if __name__ == "__main__":
    app()
