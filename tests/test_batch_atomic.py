"""Batches are all or nothing (worker/batch/), and on SQLite reads never hold up a worker's write
(worker/db.py): a SIGKILL mid-import, a row taken by another producer between validation and the
commit, a long read or a validation pass running beside a worker's transition."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

import worker.batch
from providers.base import RefundStatus as S
from tests.batchrows import row, rows, write_csv
from tests.conftest import make_runtime, settings_env
from worker import store
from worker.batch import BatchInvalid, enqueue_batch, get_batch
from worker.models import batch_table, event_table, refund_table
from worker.producer import persist


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    from sandbox.accounts import write_sandbox_accounts

    return write_sandbox_accounts(tmp_path / "accounts", "http://127.0.0.1:9")  # never called here


@pytest.fixture
def empty_db(db_url: str) -> str:
    """db_url with no batch rows either (the PostgreSQL database is shared by the session)."""
    from worker.db import get_engine

    with get_engine(db_url).begin() as conn:
        conn.execute(text("DELETE FROM batch"))
    return db_url


def stored(rt: Any) -> tuple[int, int, int]:
    """(refunds, batches, events)"""
    with rt.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (refund_table, batch_table, event_table)
        )


def in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    """Run fn in a thread; the event is set when it returned, the list gets what it raised."""
    done, errors = threading.Event(), []

    def run() -> None:
        try:
            fn()
            done.set()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done, errors


# --- all or nothing -----------------------------------------------------------------------------

# The import in a child process, as `refundq batch submit` runs it, printing each progress call so
# the test can kill it at a known point. PYTHONPATH and the working directory make the child run
# the same refundq as the test.
DRIVER = """
import sys
from worker.batch import enqueue_batch
enqueue_batch(sys.argv[1], publish=False, progress=lambda phase, done, total: print(phase, done, total, flush=True))
print("done", flush=True)
"""


@pytest.mark.timeout(300)
def test_a_sigkill_mid_import_stores_nothing_and_the_same_command_then_completes_it(
    empty_db: str, accounts_file: Path, tmp_path: Path
) -> None:
    n, chunk = 20_000, 1_000
    path = write_csv(tmp_path / "kill.csv", rows(n, f"kill-{time.time_ns()}"))
    root = Path(worker.batch.__file__).resolve().parents[2]  # worker/batch/__init__.py
    env = {**os.environ, **settings_env(empty_db, accounts_file, batch_chunk=chunk, log_level="WARNING")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(path)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "child.err").open("wb"),
        text=True,
    )
    seen: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:  # bounded by the test's timeout
            seen.append(line.strip())
            phase, done, _total = [*line.split(), "", ""][:3]
            if phase == "insert" and int(done) < n:  # storing has begun and is not finished
                assert child.poll() is None, "the import ended before it could be killed"
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL, (seen[-5:], (tmp_path / "child.err").read_text()[-2000:])
    rt = make_runtime(empty_db, accounts_file, batch_chunk=chunk)
    assert stored(rt) == (0, 0, 0), f"killed after {seen[-1]!r}: part of the batch was stored"

    result = enqueue_batch(path, rt=rt, publish=False)  # the same command again completes it exactly
    assert (result.created, result.inserted, result.already_stored) == (True, n, 0)
    assert stored(rt) == (n, 1, n)
    with rt.engine.connect() as conn:
        batch = get_batch(conn, result.batch.id)
    assert batch is not None and batch.total == n and {k: v for k, v in batch.counts.items() if v} == {"queued": n}


@pytest.mark.parametrize("taken", ["key", "invoice", "same_request"])
def test_a_row_taken_by_another_producer_before_the_commit_refuses_the_whole_file(
    taken: str, empty_db: str, accounts_file: Path, tmp_path: Path
) -> None:
    """Another producer stores row 3's key (or a refund of row 3's invoice) after the file was
    validated and before it is committed. Chunks of 2: the old code committed rows 1-2 first."""
    rt = make_runtime(empty_db, accounts_file, batch_chunk=2)
    run = f"race-{taken}-{time.time_ns()}"
    items = [row(0, run), row(2, run), row(1, run)]  # row 3 is CoinCorner: one refund per order
    third = items[2]
    other = {
        "key": {**third, "amount": "1.23"},
        "invoice": {**third, "idempotency_key": f"{run}-elsewhere"},
        "same_request": dict(third),
    }[taken]
    path = write_csv(tmp_path / "race.csv", items)

    def another_producer(phase: str, done: int, total: int | None) -> None:
        if phase == "validate" and done == total:  # pass 1 is over: every row was valid then
            persist(other, rt)

    with pytest.raises(BatchInvalid) as info:
        enqueue_batch(path, rt=rt, publish=False, progress=another_producer)
    assert [(e.row, e.key) for e in info.value.errors] == [(3, third["idempotency_key"])], info.value.errors
    assert info.value.errors[0].field == ("fields" if taken == "invoice" else "idempotency_key")
    assert third["idempotency_key"] in str(info.value) and "nothing was stored" in str(info.value)
    assert stored(rt) == (1, 0, 1)  # only the other producer's refund

    # The same file again tells the truth about what is stored now.
    if taken == "same_request":  # row 3 is already there, exactly as the file says: completes
        result = enqueue_batch(path, rt=rt, publish=False)
        assert (result.inserted, result.already_stored, result.batch.total) == (2, 1, 2)
        assert stored(rt) == (3, 1, 3)
    else:  # row 3 conflicts now: refused at validation, and nothing is stored, truly
        with pytest.raises(BatchInvalid) as again:
            enqueue_batch(path, rt=rt, publish=False)
        assert [e.row for e in again.value.errors] == [3] and "nothing was stored" in str(again.value)
        assert stored(rt) == (1, 0, 1)


def test_a_failure_while_storing_stores_nothing_and_a_rerun_completes(
    sqlite_url: str, accounts_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(sqlite_url, accounts_file, batch_chunk=250)
    path = write_csv(tmp_path / "fail.csv", list(rows(1000, "fail")))
    real = worker.batch.importer._chunk_values  # builds each chunk's rows, before it is stored
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(worker.batch.importer, "_chunk_values", failing)
    with pytest.raises(RuntimeError):
        enqueue_batch(path, rt=rt, publish=False)
    assert stored(rt) == (0, 0, 0)
    monkeypatch.setattr(worker.batch.importer, "_chunk_values", real)
    result = enqueue_batch(path, rt=rt, publish=False)
    assert (result.created, result.inserted, result.already_stored) == (True, 1000, 0)
    assert stored(rt) == (1000, 1, 1000)


def test_a_half_batch_left_by_an_older_refundq_is_completed(
    sqlite_url: str, accounts_file: Path, tmp_path: Path
) -> None:
    """Before atomic imports a crash could leave part of a batch; re-running its file completes it."""
    rt = make_runtime(sqlite_url, accounts_file)
    path = write_csv(tmp_path / "half.csv", list(rows(40, "half")))
    first = enqueue_batch(path, rt=rt, publish=False)
    with rt.engine.begin() as conn:  # what the old chunked import left after a crash: 25 of 40
        R = refund_table.c
        gone = select(R.id).where(R.batch_id == first.batch.id).order_by(R.idempotency_key).limit(15)
        conn.execute(event_table.delete().where(event_table.c.refund_id.in_(gone)))
        conn.execute(refund_table.delete().where(R.id.in_(gone.scalar_subquery())))
        conn.execute(batch_table.update().where(batch_table.c.id == first.batch.id).values(n_queued=25))
    result = enqueue_batch(path, rt=rt, publish=False)
    assert (result.created, result.inserted, result.already_stored) == (False, 15, 25)
    assert result.batch.id == first.batch.id and result.batch.counts["queued"] == result.batch.total == 40
    assert stored(rt) == (40, 1, 40)


def test_next_action_at_counts_from_the_commit_on_the_database_clock(
    db_url: str, accounts_file: Path, tmp_path: Path
) -> None:
    """A crash between the commit and the publish is covered by next_action_at: the rows fall due
    publish_grace after the commit, not after their chunk was built. Here storing takes longer
    than the grace (the progress hook sleeps): no row may be due when the import returns."""
    grace, pause = 2.0, 3.0
    rt = make_runtime(db_url, accounts_file, publish_grace=grace, batch_chunk=3)
    slept = []

    def slow(phase: str, done: int, total: int | None) -> None:
        if phase == "insert" and not slept:
            slept.append(done)
            time.sleep(pause)

    result = enqueue_batch(list(rows(6, f"due-{time.time_ns()}")), rt=rt, publish=False, progress=slow)
    R = refund_table.c
    with rt.engine.connect() as conn:
        mine = R.batch_id == result.batch.id
        due = conn.execute(select(func.count()).where(mine, R.next_action_at <= store.db_time(conn))).scalar_one()
        refunds = store.list_refunds(conn, batch_id=result.batch.id)
    assert slept and len(refunds) == 6
    assert due == 0, f"{due} rows were due at once: their grace ran out before the commit"
    assert all(r.next_action_at is not None and r.next_action_at > r.created_at for r in refunds)


# --- SQLite: reads take no write lock -----------------------------------------------------------


def one_refund(rt: Any) -> str:
    refund, _ = persist(row(1, f"one-{time.time_ns()}"), rt)
    return refund.id


def test_a_long_read_does_not_hold_up_a_worker_write_on_sqlite(sqlite_url: str, accounts_file: Path) -> None:
    rt = make_runtime(sqlite_url, accounts_file)
    refund_id = one_refund(rt)
    reader = rt.engine.connect()
    try:
        assert reader.execute(select(func.count()).select_from(refund_table)).scalar_one() == 1  # a read, still open

        def worker_write() -> None:
            with rt.engine.begin() as conn:
                store.transition(conn, refund_id, S.QUEUED, S.SUBMITTING, reason="claimed")

        thread, done, errors = in_thread(worker_write)
        finished = done.wait(10)  # bounded; the busy timeout is 30 s
        assert reader.in_transaction() and not reader.closed  # the reader still holds its connection
    finally:
        reader.close()
    thread.join(40)
    assert finished and not errors, f"the write did not finish in 10 s while a read was open ({errors})"
    with rt.engine.connect() as conn:
        refund = store.get_refund(conn, refund_id)
    assert refund is not None and refund.status == "submitting"


def test_the_validation_pass_holds_no_connection_and_lets_workers_write(
    sqlite_url: str, accounts_file: Path, tmp_path: Path
) -> None:
    rt = make_runtime(sqlite_url, accounts_file)
    refund_id = one_refund(rt)
    path = write_csv(tmp_path / "long.csv", list(rows(12_000, "long")))  # progress at rows 5,000 and 10,000
    checked_out: list[int] = []
    writes: list[tuple[threading.Thread, bool, list[BaseException]]] = []
    moves = iter([(S.QUEUED, S.SUBMITTING), (S.SUBMITTING, S.QUEUED)])

    def mid_validation(phase: str, done: int, total: int | None) -> None:
        if phase != "validate" or total is not None:
            return
        checked_out.append(rt.engine.pool.checkedout())
        frm, to = next(moves)

        def worker_write() -> None:
            with rt.engine.begin() as conn:
                store.transition(conn, refund_id, frm, to, reason="worker")

        thread, finished, errors = in_thread(worker_write)
        writes.append((thread, finished.wait(10), errors))  # bounded wait, while validation goes on

    result = enqueue_batch(path, rt=rt, publish=False, progress=mid_validation)
    for thread, _, _ in writes:
        thread.join(40)
    assert result.inserted == 12_000
    assert checked_out == [0, 0]  # no connection held between the lookup blocks
    assert [(ok, errors) for _, ok, errors in writes] == [(True, []), (True, [])]
