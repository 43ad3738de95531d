"""The baseline of `bench.e2e`: a bare Celery task doing one HTTP POST and one DB UPDATE.

Nothing of refundq runs here: no validation, nonces, signing, state machine or events. It is
the floor cost of "Celery + one provider round trip + one guarded write" on this machine, and
`bench.e2e` reports refundq's throughput as a ratio to it.

Two roles, both started by `bench.e2e` as child processes:

- the Celery worker: `celery -A bench.baseline:app worker -Q bench.baseline ...`, configured by
  `BENCH_BASELINE_REDIS_URL`, `BENCH_BASELINE_DATABASE_URL` and `BENCH_BASELINE_TARGET` (the URL
  it POSTs to);
- the tiny HTTP endpoint: `python -m bench.baseline serve --port P --latency S`, a Starlette app
  whose POST route sleeps like the sandbox does for provider calls (same latency, one process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from functools import cache
from typing import Any

import httpx
from celery import Celery
from sqlalchemy import Column, Engine, Float, Integer, MetaData, Table, func, insert, select, update

QUEUE = "bench.baseline"
TASK = "bench.baseline.work"

metadata = MetaData()
baseline_table = Table(
    "bench_baseline",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("http_status", Integer, nullable=True),
    Column("done_at", Float, nullable=True),  # time.time() when the UPDATE ran; NULL until then
)


def make_app(redis_url: str) -> Celery:
    """The same delivery guarantees as refundq's app (acks late, prefetch 1, no results, JSON)."""
    app = Celery("bench-baseline")
    app.conf.update(
        broker_url=redis_url,
        broker_transport_options={"visibility_timeout": 300},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_default_queue=QUEUE,
    )
    return app


app = make_app(os.environ.get("BENCH_BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0"))


@cache
def _client() -> httpx.Client:
    # Same pool shape as refundq's Transport: one client shared by the worker's threads.
    return httpx.Client(
        timeout=httpx.Timeout(20.0, connect=5.0, pool=5.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


@cache
def _engine() -> Engine:
    from worker.db import get_engine  # the same engine setup as refundq (SQLite WAL, PG pool)

    return get_engine(os.environ["BENCH_BASELINE_DATABASE_URL"])


@app.task(name=TASK)
def work(row_id: int) -> None:
    answer = _client().post(os.environ["BENCH_BASELINE_TARGET"], json={"id": row_id})
    with _engine().begin() as conn:
        conn.execute(
            update(baseline_table)
            .where(baseline_table.c.id == row_id)
            .values(http_status=answer.status_code, done_at=time.time())
        )


# --- used by bench.e2e ---------------------------------------------------------------------------


def prepare(engine: Engine, n: int) -> None:
    """(Re)create the table with rows 0..n-1, none done."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(baseline_table.delete())
        if n:
            conn.execute(insert(baseline_table), [{"id": i} for i in range(n)])


def done_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(baseline_table.c.done_at.is_not(None))).scalar_one())


def last_done(engine: Engine) -> float | None:
    with engine.connect() as conn:
        value = conn.execute(select(func.max(baseline_table.c.done_at))).scalar_one()
    return None if value is None else float(value)


def drop(engine: Engine) -> None:
    metadata.drop_all(engine)


# --- the tiny endpoint ---------------------------------------------------------------------------


def endpoint(latency: float) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ok(request: Request) -> JSONResponse:
        await request.body()
        if latency:
            await asyncio.sleep(latency)
        return JSONResponse({"ok": True})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/ok", ok, methods=["POST"]), Route("/health", health, methods=["GET"])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the baseline's POST endpoint")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(endpoint(args.latency), host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
