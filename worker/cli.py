"""The `refundq` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="refundq: submit crypto refunds once, follow them to a final status.", no_args_is_help=True)
refund_app = typer.Typer(help="Create and inspect refunds.", no_args_is_help=True)
app.add_typer(refund_app, name="refund")
console = Console()


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
    """Run a Celery worker (threads pool: provider calls are I/O-bound)."""
    from worker.app import celery_app, check_invariants

    problems = check_invariants(celery_app.conf)
    if problems:
        console.print("[red]refundq worker refuses to start:[/red]\n  - " + "\n  - ".join(problems))
        raise typer.Exit(2)
    _runtime()  # load accounts and logging now: a bad accounts file fails here, not on the first task
    celery_app.worker_main(
        [
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            queues,
            "-n",
            name,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


@app.command()
def dispatcher(max_ticks: Annotated[int | None, typer.Option(help="stop after N ticks")] = None) -> None:
    """Claim due refunds every second and publish their submit/poll work."""
    import signal
    import threading

    from worker.dispatcher import run

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(_runtime(), stop, max_ticks)


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


@refund_app.command("create")
def refund_create(
    key: Annotated[str, typer.Option("--key", help="idempotency key")],
    provider: Annotated[str, typer.Option()],
    account: Annotated[str, typer.Option()],
    amount: Annotated[str, typer.Option(help="decimal string, e.g. 12.50")],
    currency: Annotated[str, typer.Option()],
    destination: Annotated[str, typer.Option()],
    field: Annotated[list[str] | None, typer.Option(help="provider field NAME=VALUE (repeatable)")] = None,
) -> None:
    """Validate, store and enqueue one refund."""
    from worker.producer import IdempotencyConflict, enqueue_refund
    from worker.validation import ValidationFailed

    fields: dict[str, Any] = {}
    for item in field or []:
        name, sep, value = item.partition("=")
        if not sep:
            console.print(f"[red]--field {item!r}: expected NAME=VALUE[/red]")
            raise typer.Exit(2)
        fields[name] = _field_value(value)
    try:
        result = enqueue_refund(
            {
                "idempotency_key": key,
                "provider": provider,
                "account": account,
                "amount": amount,
                "currency": currency,
                "destination": destination,
                "fields": fields,
            }
        )
    except ValidationFailed as exc:
        for err in exc.errors:
            console.print(f"[red]{err.field}[/red]: {err.rule}")
        raise typer.Exit(2) from None
    except IdempotencyConflict as exc:
        console.print(f"[red]conflict:[/red] {exc}")
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


@refund_app.command("show")
def refund_show(refund: Annotated[str, typer.Argument(help="refund id or idempotency key")]) -> None:
    """One refund with every event."""
    from worker import store

    rt = _runtime()
    with rt.engine.connect() as conn:
        row = store.get_refund(conn, refund) or store.get_by_key(conn, refund)
        if row is None:
            rejected = store.rejected_intakes(conn, refund)
            if rejected:
                console.print(f"idempotency key {refund!r}: [red]rejected at intake[/red]")
                for r in rejected:
                    console.print(f"  {r['created_at']:%Y-%m-%d %H:%M:%S}  " + "; ".join(r["reasons"]))
                raise typer.Exit(0)
            console.print(f"no refund with id or key {refund!r}")
            raise typer.Exit(1)
        evts = store.events(conn, row.id)
    table = Table(title=f"refund {row.id}", show_header=False)
    for name in (
        "idempotency_key",
        "provider",
        "account",
        "amount",
        "currency",
        "destination",
        "fields",
        "status",
        "provider_status",
        "provider_refund_id",
        "attempts",
        "next_action_at",
        "deadline",
        "last_error",
        "detail",
        "created_at",
        "updated_at",
    ):
        table.add_row(name, str(getattr(row, name)))
    console.print(table)
    events = Table(title="events")
    for col in ("at", "from", "to", "provider status", "reason"):
        events.add_column(col)
    for e in evts:
        events.add_row(
            f"{e['created_at']:%H:%M:%S.%f}"[:-3],
            e["from_status"] or "",
            e["to_status"],
            e["provider_status"] or "",
            e["reason"] or "",
        )
    console.print(events)


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
            r.id,
            r.provider,
            r.account,
            str(r.amount),
            r.currency,
            r.status,
            r.provider_status or "",
            f"{r.updated_at:%Y-%m-%d %H:%M:%S}",
        )
    console.print(table)


if __name__ == "__main__":
    app()
