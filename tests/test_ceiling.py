"""Money ceilings (worker/ceiling.py): refunds of one payment never add up to more than was paid.

The race tests start several processes that all refund one payment at the same instant, with the
window between the ceiling check and the commit stretched (a late commit), on both databases."""

from __future__ import annotations

import multiprocessing
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from providers.base import FieldError, PaymentRule
from providers.base import RefundStatus as S
from sandbox.accounts import write_sandbox_accounts
from tests.batchrows import write_jsonl
from tests.ceiling_producer import produce
from tests.conftest import TEST_REDIS_URL, make_runtime
from worker import ceiling, store
from worker.batch import BatchConflict, enqueue_batch
from worker.ceiling import Claim, Ledger
from worker.models import payment_table, refund_table
from worker.producer import persist
from worker.validation import ValidationFailed

EVM = "0x" + "5a" * 20


def cobo(key: str, amount: str, order: str, paid: str | None = "100.00") -> dict[str, Any]:
    request: dict[str, Any] = {
        "idempotency_key": key,
        "provider": "cobo",
        "account": "cobo-sandbox",
        "amount": amount,
        "currency": "ETH_USDT",
        "destination": EVM,
        "fields": {"order_id": order},
    }
    if paid is not None:
        request["paid_amount"] = paid
    return request


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    return write_sandbox_accounts(tmp_path, "http://127.0.0.1:9")  # nothing is sent here


def live(rt: Any, order: str) -> list[Any]:
    with rt.engine.connect() as conn:
        rows = conn.execute(select(refund_table).where(refund_table.c.payment_key == f"order:{order}")).all()
    return [r for r in rows if r.status not in ceiling.NOT_COUNTED]


# --- the rule, pure ---------------------------------------------------------------------------------


def ledger(paid: str | None, committed: str = "0", count: int = 0) -> Ledger:
    return Ledger("ETH_USDT", None if paid is None else Decimal(paid), "producer", None, Decimal(committed), count)


def claim(amount: str, row: int = 0, paid: str | None = None, currency: str = "ETH_USDT") -> Claim:
    return Claim(row, "a", "cobo", "order:1", currency, Decimal(amount), None if paid is None else Decimal(paid))


def test_claims_are_judged_in_order_and_each_admitted_one_counts() -> None:
    ledgers = {("a", "order:1"): ledger("100.00", "70.00", 3)}
    refused = ceiling.judge([claim("20.00", 1), claim("10.01", 2), claim("10.00", 3)], ledgers)
    assert [row for row, _ in refused] == [2]
    assert refused[0][1] == FieldError(
        "amount",
        "ceiling: refunds of order:1 would total 100.01 ETH_USDT, above the 100.00 paid "
        "(stated by the producer; 90.00 already taken by 4 refund(s))",
    )
    assert ledgers[("a", "order:1")].committed == Decimal("100.00")


def test_paid_amount_is_required_once_and_can_never_be_restated() -> None:
    unknown = {("a", "order:1"): ledger(None)}
    assert [e.field for _, e in ceiling.judge([claim("1.00")], unknown)] == ["paid_amount"]
    assert "does not report it" in ceiling.judge([claim("1.00")], unknown)[0][1].rule
    # The first statement sets it; a later one that differs is refused, even a lower one.
    stated = {("a", "order:1"): ledger(None)}
    refused = ceiling.judge([claim("1.00", 1, paid="50.00"), claim("1.00", 2, paid="500.00")], stated)
    assert [(r, e.field) for r, e in refused] == [(2, "paid_amount")]
    assert stated[("a", "order:1")].stated and stated[("a", "order:1")].refundable == Decimal("50.00")


def test_a_refund_in_another_currency_than_the_payment_is_refused() -> None:
    refused = ceiling.judge([claim("1.00", currency="TRON_USDT")], {("a", "order:1"): ledger("100")})
    assert refused[0][1].field == "currency" and "is in ETH_USDT" in refused[0][1].rule


def test_whole_payment_rule_wants_the_exact_amount() -> None:
    paid = ledger("15.00")
    error = ceiling.ceiling_error(PaymentRule.WHOLE, "invoice:x", paid, Decimal("5.00"))
    assert error is not None and "must equal the 15.00 ETH_USDT paid for invoice:x" in error.rule
    assert ceiling.ceiling_error(PaymentRule.WHOLE, "invoice:x", paid, Decimal("15")) is None


@pytest.mark.parametrize(
    ("status", "amount", "settled", "counts"),
    [
        ("completed", "80", None, "80"),
        ("needs_attention", "80", None, "80"),  # nobody knows: all of it
        ("partially_completed", "80", "48", "48"),  # what the provider reports it paid
        ("partially_completed", "80", None, "80"),
        ("failed", "80", None, "0"),
        ("rejected", "80", None, "0"),
        ("cancelled", "80", None, "0"),
    ],
)
def test_what_a_refund_takes_from_its_payment(status: str, amount: str, settled: str | None, counts: str) -> None:
    assert ceiling.counted(status, Decimal(amount), None if settled is None else Decimal(settled)) == Decimal(counts)


# --- through the producer door, on both databases ------------------------------------------------------


def test_refunds_of_one_payment_stop_at_what_was_paid(db_url: str, accounts_file: Path) -> None:
    rt = make_runtime(db_url, accounts_file)
    order = f"o{time.time_ns()}"
    persist(cobo(f"{order}-1", "80.00", order), rt)
    with pytest.raises(ValidationFailed) as over:
        persist(cobo(f"{order}-2", "80.00", order), rt)
    assert [e.field for e in over.value.errors] == ["amount"]
    assert "ceiling: refunds of order:" in str(over.value) and "would total 160.00" in str(over.value)
    # Without paid_amount: the payment is known now, the ceiling still holds.
    persist(cobo(f"{order}-3", "20.00", order, paid=None), rt)
    with pytest.raises(ValidationFailed, match=r"paid_amount: 150\.00 differs from the 100\.00"):
        persist(cobo(f"{order}-4", "1.00", order, paid="150.00"), rt)
    assert sorted(r.amount for r in live(rt, order)) == [Decimal(20), Decimal(80)]
    with rt.engine.connect() as conn:
        stored = conn.execute(select(payment_table).where(payment_table.c.key == f"order:{order}")).one()
    assert (stored.refundable, stored.source, stored.currency) == (Decimal(100), "producer", "ETH_USDT")


def test_a_failed_refund_gives_its_share_back(db_url: str, accounts_file: Path) -> None:
    rt = make_runtime(db_url, accounts_file)
    order = f"f{time.time_ns()}"
    first, _ = persist(cobo(f"{order}-1", "100.00", order), rt)
    with pytest.raises(ValidationFailed, match="ceiling"):
        persist(cobo(f"{order}-2", "100.00", order), rt)
    with rt.engine.begin() as conn:
        store.transition(conn, first.id, S.QUEUED, S.REJECTED, reason="test: the provider refused it")
    second, created = persist(cobo(f"{order}-2", "100.00", order), rt)
    assert created and second.payment_key == f"order:{order}"


def test_an_unknown_payment_without_paid_amount_stores_nothing(db_url: str, accounts_file: Path) -> None:
    rt = make_runtime(db_url, accounts_file)
    with pytest.raises(ValidationFailed) as info:
        persist(cobo("np-1", "1.00", "never-seen", paid=None), rt)
    assert [e.field for e in info.value.errors] == ["paid_amount"]
    with rt.engine.connect() as conn:
        assert conn.execute(select(refund_table)).all() == []
        assert conn.execute(select(payment_table)).all() == []


# --- the race: 20 refunds of 10.00 on a 100.00 payment from 4 processes at once --------------------------


def test_twenty_concurrent_refunds_from_four_processes_take_exactly_the_payment(
    db_url: str, accounts_file: Path
) -> None:
    rt = make_runtime(db_url, accounts_file)
    order = f"race{time.time_ns()}"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go = time.time() + 3.0  # every process is up and connected before this
    procs = [
        ctx.Process(
            target=produce,
            args=(
                db_url,
                TEST_REDIS_URL,
                str(accounts_file),
                [cobo(f"{order}-{p}-{i}", "10.00", order) for i in range(5)],
                go,
                out,
            ),
        )
        for p in range(4)
    ]
    for proc in procs:
        proc.start()
    try:
        results = [item for _ in procs for item in out.get(timeout=60)]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    accepted = [r for r in results if r[0] == "accepted"]
    refused = [r for r in results if r[0] == "refused"]
    assert (len(accepted), len(refused)) == (10, 10), results
    assert all("amount: ceiling: refunds of order:" in text and "above the 100.00 paid" in text for _, text in refused)
    rows = live(rt, order)
    assert len(rows) == 10 and sum(r.amount for r in rows) == Decimal("100.00")
    assert sorted(r.idempotency_key for r in rows) == sorted(key for _, key in accepted)


# --- batches: judged at the commit, in row order, all or nothing -----------------------------------------


def test_a_batch_over_a_ceiling_is_refused_whole_naming_the_row(
    db_url: str, accounts_file: Path, tmp_path: Path
) -> None:
    rt = make_runtime(db_url, accounts_file)
    order = f"b{time.time_ns()}"
    persist(cobo(f"{order}-before", "25.00", order), rt)  # a producer took a quarter already
    rows = [cobo(f"{order}-{i}", "10.00", order) for i in range(9)]
    with pytest.raises(BatchConflict) as info:
        enqueue_batch(write_jsonl(tmp_path / "over.jsonl", rows), rt=rt, publish=False)
    assert [(e.row, e.field) for e in info.value.errors] == [(8, "amount"), (9, "amount")]
    assert "would total 105.00" in info.value.errors[0].rule
    assert [r.idempotency_key for r in live(rt, order)] == [f"{order}-before"]  # nothing of the file
    fits = enqueue_batch(write_jsonl(tmp_path / "fits.jsonl", rows[:7]), rt=rt, publish=False)
    assert fits.inserted == 7 and sum(r.amount for r in live(rt, order)) == Decimal("95.00")
