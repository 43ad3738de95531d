"""Bulk batches (worker/batch/): validation of whole files, exact counters, retry, cancel, export,
the CLI, and (integration) a batch across the four providers reaching final statuses.

REFUNDQ_FULL=1 runs the end-to-end batch with 10,000 rows (the issue's figure) instead of 400."""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from providers.base import RefundStatus as S
from tests.batchrows import expected as expected_status
from tests.batchrows import row, rows, write_csv, write_jsonl
from tests.conftest import make_runtime
from worker import store
from worker.batch import BatchFileError, BatchInvalid, cancel, enqueue_batch, export, get_batch, retry, retry_key
from worker.db import get_engine
from worker.models import batch_table, refund_table

FINAL = {"completed", "failed", "rejected", "needs_attention", "cancelled"}


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    from sandbox.accounts import write_sandbox_accounts

    return write_sandbox_accounts(tmp_path / "accounts", "http://127.0.0.1:9")  # never called here


@pytest.fixture
def rt(sqlite_url: str, accounts_file: Path) -> Any:
    return make_runtime(sqlite_url, accounts_file, batch_chunk=250)


def stored(rt: Any) -> tuple[int, int]:
    with rt.engine.connect() as conn:
        refunds = conn.execute(select(func.count()).select_from(refund_table)).scalar_one()
        batches = conn.execute(select(func.count()).select_from(batch_table)).scalar_one()
    return refunds, batches


def db_counts(rt: Any, batch_id: str) -> dict[str, int]:
    with rt.engine.connect() as conn:
        query = select(refund_table.c.status, func.count()).where(refund_table.c.batch_id == batch_id)
        return {status: n for status, n in conn.execute(query.group_by(refund_table.c.status))}


def batch_counts(rt: Any, batch_id: str) -> dict[str, int]:
    with rt.engine.connect() as conn:
        batch = get_batch(conn, batch_id)
    assert batch is not None
    return {k: v for k, v in batch.counts.items() if v}


# --- validation ---------------------------------------------------------------------------------


def test_csv_and_json_lines_are_accepted_with_provider_field_columns(rt: Any, tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text(
        "idempotency_key,provider,account,amount,paid_amount,currency,destination,"
        "fields.order_id,fields.payorder_id,fields.chain_id\n"
        f"k1,coinvoyage,coinvoyage-sandbox,12.50,40.00,USD,{row(2, 'x')['destination']},,,30000000000001\n"
        f"k2,coincorner,coincorner-sandbox,3.10,,GBP,{row(1, 'x')['destination']},inv-9,,\n",
        encoding="utf-8",
    )
    # CoinVoyage needs a payorder_id: row 1 is reported, not guessed.
    with pytest.raises(BatchInvalid) as info:
        enqueue_batch(path, rt=rt, publish=False)
    assert [(e.row, e.field) for e in info.value.errors] == [(1, "payorder_id")], info.value.errors
    path.write_text(path.read_text().replace(",,,30000000000001", ",,po-1,30000000000001"), encoding="utf-8")
    result = enqueue_batch(path, rt=rt, publish=False)
    assert result.inserted == 2 and result.batch.total == 2
    with rt.engine.connect() as conn:
        k1 = store.get_by_key(conn, "k1")
    assert k1 is not None and k1.fields == {"payorder_id": "po-1", "chain_id": 30000000000001}
    assert k1.batch_id == result.batch.id and str(k1.amount) == "12.5"

    jl = write_jsonl(tmp_path / "b.jsonl", rows(8, "jl"))
    result = enqueue_batch(jl, rt=rt, publish=False)
    assert result.inserted == 8 and batch_counts(rt, result.batch.id) == {"queued": 8}


def test_three_bad_rows_refuse_the_whole_file_and_name_all_three(rt: Any, tmp_path: Path) -> None:
    items = list(rows(10_000, "bad3"))  # the figure
    items[10]["amount"] = "-5.00"
    items[977]["account"] = "nobody"
    items[9999]["destination"] = "not-an-address"
    path = write_csv(tmp_path / "bad.csv", items)
    with pytest.raises(BatchInvalid) as info:
        enqueue_batch(path, rt=rt, publish=False)
    assert sorted((e.row, e.field) for e in info.value.errors) == [
        (11, "amount"),
        (978, "account"),
        (10000, "destination"),
    ]
    assert info.value.bad_rows == 3 and info.value.rows == 10_000
    assert "must be greater than zero" in str(info.value)
    assert stored(rt) == (0, 0)


def test_skip_invalid_stores_the_rest_and_writes_the_rejects(rt: Any, tmp_path: Path) -> None:
    items = list(rows(10_000, "skip"))
    for i in (5, 5000, 9999):
        items[i]["amount"] = "1e-3"
    path = write_csv(tmp_path / "skip.csv", items)
    rejects = tmp_path / "rejects.jsonl"
    result = enqueue_batch(path, rt=rt, skip_invalid=True, rejects=rejects, publish=False)
    assert result.inserted == 9997 and result.rejected == 3 and result.batch.total == 9997
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [r["row"] for r in lines] == [6, 5001, 10000]
    assert all("amount" in r["errors"][0] and r["data"]["amount"] == "1e-3" for r in lines)
    assert stored(rt) == (9997, 1)
    assert batch_counts(rt, result.batch.id) == {"queued": 9997}


BAD_FILES: dict[str, tuple[Any, str]] = {
    # kind: (how to write it, what the error must say)
    "wrong_encoding": (
        lambda p, good: p.write_bytes(good.read_bytes().replace(b"bad-1,", "bad-1\xe9,".encode("latin-1"))),
        "not valid UTF-8",
    ),
    "missing_column": (
        lambda p, good: p.write_text(good.read_text().replace(",destination,", ",dest,")),
        "missing column(s): destination",
    ),
    "empty": (lambda p, good: p.write_bytes(b""), "is empty"),
    "header_only": (lambda p, good: p.write_text(good.read_text().splitlines()[0] + "\n"), "holds no refund rows"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_unreadable_files_give_a_clear_error_and_store_nothing(kind: str, rt: Any, tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", list(rows(50, "bad")))
    path = tmp_path / f"{kind}.csv"
    write, message = BAD_FILES[kind]
    write(path, good)
    with pytest.raises(BatchFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        enqueue_batch(path, rt=rt, publish=False)
    assert stored(rt) == (0, 0)


BAD_ROWS: dict[str, tuple[dict[str, Any], str, str]] = {
    "float_amount": ({"amount": "1e-3"}, "amount", "plain decimal string"),
    "negative": ({"amount": "-1.00"}, "amount", "greater than zero"),
    "too_precise": ({"amount": "1.0000000000000000001"}, "amount", "18 after the decimal point"),
    "unknown_provider": ({"provider": "paypal"}, "provider", "must be one of"),
}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_values_are_reported_by_row_field_and_rule(kind: str, fmt: str, rt: Any, tmp_path: Path) -> None:
    items = list(rows(30, f"v-{kind}"))
    change, field, rule = BAD_ROWS[kind]
    items[7].update(change)
    writer = write_csv if fmt == "csv" else write_jsonl
    path = writer(tmp_path / f"f.{fmt}", items)
    with pytest.raises(BatchInvalid) as info:
        enqueue_batch(path, rt=rt, publish=False)
    assert [(e.row, e.field) for e in info.value.errors] == [(8, field)]
    assert rule in info.value.errors[0].rule
    assert stored(rt) == (0, 0)


def test_json_float_amount_is_refused(rt: Any, tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    items = list(rows(3, "jf"))
    lines = [json.dumps(r) for r in items]
    lines[1] = lines[1].replace(f'"amount": "{items[1]["amount"]}"', '"amount": 1e-3')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BatchInvalid) as info:
        enqueue_batch(path, rt=rt, publish=False)
    assert [(e.row, e.field) for e in info.value.errors] == [(2, "amount")]
    assert "not a float" in info.value.errors[0].rule


def test_duplicate_keys_and_invoices_in_the_file_and_conflicts_with_the_database(rt: Any, tmp_path: Path) -> None:
    items = list(rows(40, "dup"))
    items[30] = {**items[30], "idempotency_key": items[3]["idempotency_key"]}
    items[21] = {**items[21], "fields": dict(items[1]["fields"])}  # CoinCorner: the same invoice twice
    path = write_csv(tmp_path / "dup.csv", items)
    with pytest.raises(BatchInvalid) as info:
        enqueue_batch(path, rt=rt, publish=False)
    found = {(e.row, e.field): e.rule for e in info.value.errors}
    assert set(found) == {(31, "idempotency_key"), (22, "fields")}, found
    assert found[(31, "idempotency_key")] == "duplicate of row 4"
    assert "row 2 already does" in found[(22, "fields")]
    assert stored(rt) == (0, 0)

    # A key that already names a refund with another payload; the same payload is "already stored".
    first = enqueue_batch(write_csv(tmp_path / "one.csv", items[:2]), rt=rt, publish=False)
    assert first.inserted == 2
    again = [items[0], {**items[1], "amount": "99.99"}, items[2]]
    with pytest.raises(BatchInvalid) as info:
        enqueue_batch(write_csv(tmp_path / "again.csv", again), rt=rt, publish=False)
    assert [(e.row, e.field) for e in info.value.errors] == [(2, "idempotency_key")]
    assert "different amount" in info.value.errors[0].rule
    result = enqueue_batch(write_csv(tmp_path / "again2.csv", [items[0], items[2]]), rt=rt, publish=False)
    assert (result.inserted, result.already_stored, result.batch.total) == (1, 1, 1)


def test_resubmitting_the_same_file_returns_the_same_batch(rt: Any, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "same.csv", list(rows(600, "same")))
    first = enqueue_batch(path, rt=rt, publish=False)
    second = enqueue_batch(path, rt=rt, publish=False)
    assert first.created and not second.created and second.batch.id == first.batch.id
    assert stored(rt) == (600, 1)
    spooled = enqueue_batch(list(rows(5, "py")), rt=rt, publish=False)  # the Python API with rows
    assert enqueue_batch(list(rows(5, "py")), rt=rt, publish=False).batch.id == spooled.batch.id


# An import that fails or is killed part-way: tests/test_batch_atomic.py (all or nothing).


# --- counters, cancel, retry, export ------------------------------------------------------------


def walk(rt: Any, refund_id: str, path: list[S]) -> None:
    with rt.engine.begin() as conn:
        for frm, to in itertools.pairwise(path):
            store.transition(conn, refund_id, frm, to, reason="test")


def test_counters_follow_every_transition_and_finish_the_batch(db_url: str, accounts_file: Path) -> None:
    rt = make_runtime(db_url, accounts_file)
    with rt.engine.begin() as conn:
        conn.execute(text("DELETE FROM batch"))
    result = enqueue_batch(list(rows(12, f"ctr-{time.time_ns()}")), rt=rt, publish=False)
    bid = result.batch.id
    with rt.engine.connect() as conn:
        ids = [r.id for r in store.list_refunds(conn, batch_id=bid)]
    for i, refund_id in enumerate(ids[:8]):
        end = [S.COMPLETED, S.FAILED][i % 2]
        walk(rt, refund_id, [S.QUEUED, S.SUBMITTING, S.PENDING, S.PROCESSING, end])
    walk(rt, ids[8], [S.QUEUED, S.SUBMITTING, S.UNKNOWN])
    assert batch_counts(rt, bid) == db_counts(rt, bid) == {"completed": 4, "failed": 4, "queued": 3, "unknown": 1}
    with pytest.raises(store.LostRace):  # a refused transition changes no counter
        walk(rt, ids[0], [S.QUEUED, S.SUBMITTING])
    assert cancel(bid, rt=rt) == 3
    assert cancel(bid, rt=rt) == 0
    with rt.engine.connect() as conn:
        batch = get_batch(conn, bid)
    assert batch is not None and batch.finished_at is None  # one is still unknown
    walk(rt, ids[8], [S.UNKNOWN, S.PENDING, S.COMPLETED])
    assert batch_counts(rt, bid) == db_counts(rt, bid) == {"completed": 5, "failed": 4, "cancelled": 3}
    with rt.engine.connect() as conn:
        batch = get_batch(conn, bid)
    assert batch is not None and batch.finished_at is not None and batch.open == 0


def test_retry_makes_new_linked_attempts_once(rt: Any) -> None:
    result = enqueue_batch(list(rows(8, f"rt-{time.time_ns()}")), rt=rt, publish=False)
    bid = result.batch.id
    with rt.engine.connect() as conn:
        refunds = store.list_refunds(conn, batch_id=bid)
    failed = refunds[:3]
    for r in failed:
        walk(rt, r.id, [S.QUEUED, S.SUBMITTING, S.PENDING, S.FAILED])
    out = retry(bid, "failed", rt=rt, publish=False)
    assert out.retried == 3 and out.batch is not None and out.batch.retry_of == bid
    assert batch_counts(rt, out.batch.id) == {"queued": 3} and out.batch.total == 3
    with rt.engine.connect() as conn:
        new = store.list_refunds(conn, batch_id=out.batch.id)
        old_events = store.events(conn, failed[0].id)
    assert {n.retry_of for n in new} == {r.id for r in failed}
    by_old = {n.retry_of: n for n in new}
    for r in failed:
        assert by_old[r.id].idempotency_key == r.idempotency_key + "#retry1"
        assert (by_old[r.id].amount, by_old[r.id].destination) == (r.amount, r.destination)
    assert any("retried as" in (e["reason"] or "") for e in old_events)
    assert retry(bid, "failed", rt=rt, publish=False).retried == 0  # never twice
    assert retry_key("a#retry1") == "a#retry2" and retry_key("a") == "a#retry1"
    with pytest.raises(ValueError, match="cannot retry"):
        retry(bid, "completed", rt=rt)


def test_export_writes_one_line_per_refund(rt: Any) -> None:
    result = enqueue_batch(list(rows(6, f"ex-{time.time_ns()}")), rt=rt, publish=False)
    out = io.StringIO()
    assert export(result.batch.id, out, "csv", rt=rt) == 6
    lines = out.getvalue().splitlines()
    assert len(lines) == 7 and lines[0].startswith("id,idempotency_key,provider")
    out = io.StringIO()
    export(result.batch.id, out, "json", rt=rt)
    parsed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(parsed) == 6 and {p["status"] for p in parsed} == {"queued"}


def test_export_csv_neutralises_formula_cells(rt: Any) -> None:
    import csv

    items = list(rows(3, f"fx-{time.time_ns()}"))
    items[0]["idempotency_key"] = "=1+1-" + items[0]["idempotency_key"]
    result = enqueue_batch(items, rt=rt, publish=False)
    hostile = {'=HYPERLINK("http://evil")': "+cmd", "@SUM(A1)": "-2+3", "\tlead": "\rlead"}
    with rt.engine.begin() as conn:
        for (reason, status), r in zip(hostile.items(), store.list_refunds(conn, limit=3), strict=True):
            conn.execute(
                refund_table.update()
                .where(refund_table.c.batch_id == result.batch.id, refund_table.c.id == r.id)
                .values(last_error=reason, provider_status=status)
            )
    out = io.StringIO()
    export(result.batch.id, out, "csv", rt=rt)
    cells = [c for line in csv.DictReader(io.StringIO(out.getvalue())) for c in line.values()]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    assert {'\'=HYPERLINK("http://evil")', "'+cmd", "'@SUM(A1)", "'-2+3", "'\tlead", "'\rlead"} <= set(cells)
    assert any(c.startswith("'=1+1-fx-") for c in cells)
    amounts = [line["amount"] for line in csv.DictReader(io.StringIO(out.getvalue()))]
    assert sorted(amounts) == sorted(i["amount"] for i in items)  # plain numbers are left alone
    json_out = io.StringIO()
    export(result.batch.id, json_out, "json", rt=rt)  # JSON lines are data, not cells: unchanged
    assert {json.loads(line)["idempotency_key"] for line in json_out.getvalue().splitlines()} >= {
        items[0]["idempotency_key"]
    }


def test_cli_submit_show_export(rt: Any, tmp_path: Path) -> None:
    from worker.cli import app
    from worker.runtime import set_runtime

    set_runtime(rt)
    try:
        runner = CliRunner()
        items = list(rows(20, f"cli-{time.time_ns()}"))
        items[4]["amount"] = "-2"
        path = write_csv(tmp_path / "cli.csv", items)
        bad = runner.invoke(app, ["batch", "submit", str(path)])
        assert bad.exit_code == 2, bad.output
        assert "row 5" in bad.output and "nothing was stored" in bad.output
        rejects = tmp_path / "rej.jsonl"
        rt.settings.batch_publish_chunk = 500
        ok = runner.invoke(app, ["batch", "submit", str(path), "--skip-invalid", "--rejects", str(rejects)])
        assert ok.exit_code == 0, ok.output
        batch_id = ok.output.strip().splitlines()[-1]
        assert batch_id.startswith("bt_") and rejects.exists()
        shown = runner.invoke(app, ["batch", "show", batch_id])
        assert shown.exit_code == 0 and "19 of 19 stored" in shown.output and "cobo" in shown.output, shown.output
        out = tmp_path / "out.csv"
        exported = runner.invoke(app, ["batch", "export", batch_id, "--format", "csv", "-o", str(out)])
        assert exported.exit_code == 0 and len(out.read_text().splitlines()) == 20
        assert runner.invoke(app, ["batch", "cancel", batch_id]).exit_code == 0
        assert "nothing to retry" in runner.invoke(app, ["batch", "retry", batch_id]).output
        assert runner.invoke(app, ["batch", "show", "bt_nope"]).exit_code == 1
    finally:
        set_runtime(None)


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(1200)  # REFUNDQ_FULL=1: 10,000 refunds through a 2-core worker
def test_batch_across_four_providers_reaches_final_statuses_with_exact_counts(
    stack_factory: Any, sandbox: Any, pg_url: str, tmp_path: Path
) -> None:
    n = 10_000 if os.environ.get("REFUNDQ_FULL") == "1" else 400
    with get_engine(pg_url).begin() as conn:
        conn.execute(text("TRUNCATE refund_event, rejected_intake, refund, batch, payment CASCADE"))
    stack = stack_factory(pg_url)
    stack.start_worker(concurrency=32)
    stack.start_dispatcher()
    rt = make_runtime(pg_url, sandbox.accounts_file)
    run = f"e2e-batch-{time.time_ns()}"
    path = write_csv(tmp_path / "batch.csv", rows(n, run))
    started = time.monotonic()
    result = enqueue_batch(path, rt=rt)
    accepted = time.monotonic() - started
    assert result.inserted == n and result.published == n
    bid = result.batch.id
    deadline = time.monotonic() + (900 if n > 1000 else 120)
    while time.monotonic() < deadline:
        stack.assert_alive()
        with rt.engine.connect() as conn:
            batch = get_batch(conn, bid)
        assert batch is not None
        if batch.finished_at is not None:
            break
        if os.environ.get("REFUNDQ_FULL") == "1" and int(time.monotonic() - started) % 30 == 0:
            print(f"{time.monotonic() - started:.0f}s: {batch_counts(rt, bid)}", flush=True)
        time.sleep(1)
    took = time.monotonic() - started
    counts = db_counts(rt, bid)
    assert batch is not None and batch.finished_at is not None, f"not finished: {counts}"
    expected = Counter(expected_status(i) for i in range(n))
    assert counts == dict(expected), (counts, expected)
    assert batch_counts(rt, bid) == counts  # the counters are exact
    ledger = sandbox.ledger()["refunds"]
    assert all(e["created"] == 1 for e in ledger)
    assert len(ledger) == n - expected["rejected"]
    print(f"\n{n} rows across 4 providers: accepted in {accepted:.2f}s, all final in {took:.1f}s: {counts}")


def test_bulk_stored_rows_equal_the_file_on_both_databases(db_url: str, accounts_file: Path, tmp_path: Path) -> None:
    """PostgreSQL stores batches with COPY, SQLite with executemany: both must store exactly what
    the file says (Decimal to the last digit, JSON fields, aware datetimes, one event per refund)."""
    from datetime import UTC
    from decimal import Decimal

    rt = make_runtime(db_url, accounts_file, batch_chunk=7)
    items = [row(i, f"copy-{db_url[:6]}") for i in range(20)]
    items[3] = {**items[3], "amount": "12345678901234567890.12"}  # cobo allows 2 places: at the NUMERIC edge
    result = enqueue_batch(write_csv(tmp_path / "rows.csv", items), rt=rt, publish=False)
    assert result.inserted == 20
    with rt.engine.connect() as conn:
        for item in items:
            refund = store.get_by_key(conn, item["idempotency_key"])
            assert refund is not None
            assert refund.amount == Decimal(item["amount"])
            assert (refund.provider, refund.account, refund.currency, refund.destination, refund.fields) == (
                item["provider"],
                item["account"],
                item["currency"],
                item["destination"],
                item["fields"],
            )
            assert refund.status == "queued" and refund.batch_id == result.batch.id
            assert refund.deadline.tzinfo == UTC and refund.deadline > refund.created_at
            events = store.events(conn, refund.id)
            assert [(e["from_status"], e["to_status"]) for e in events] == [(None, "queued")]
