"""Approval threshold and destination allow-list (config/account_policy.py, worker/approval.py),
end to end against the sandbox on SQLite and PostgreSQL: a refund above the threshold waits,
is never claimed or sent until a person approves it; denied, it is cancelled and never sent."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from config.accounts import AccountConfigError, load_accounts
from providers.base import RefundStatus as S
from tests.conftest import make_runtime
from worker import cli, store
from worker.approval import ApprovalError, approve, deny
from worker.demo import own_payment
from worker.engine import Engine
from worker.models import refund_table, utcnow
from worker.producer import enqueue_refund, persist, refund_row
from worker.runtime import set_runtime
from worker.validation import ValidationFailed, check, parse_request

EVM = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def accounts_with(sandbox: Any, cobo_options: str) -> Path:
    """The sandbox's accounts file with extra options for cobo-sandbox, beside it (same secrets)."""
    text = sandbox.accounts_file.read_text(encoding="utf-8")
    text = text.replace('refund_type = "Merchant"\n', f'refund_type = "Merchant"\n{cobo_options}\n', 1)
    path = sandbox.accounts_file.parent / f"accounts-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def rt(sandbox: Any, db_url: str) -> Any:
    return make_runtime(db_url, accounts_with(sandbox, 'approval_threshold = "100.00"'))


def cobo(key: str, amount: str) -> dict[str, Any]:
    return own_payment(
        {
            "idempotency_key": key,
            "provider": "cobo",
            "account": "cobo-sandbox",
            "amount": amount,
            "currency": "ETH_USDT",
            "destination": EVM,
        }
    )


def reasons(rt: Any, refund_id: str) -> list[str]:
    with rt.engine.connect() as conn:
        return [f"{e['from_status']}->{e['to_status']}: {e['reason']}" for e in store.events(conn, refund_id)]


def status(rt: Any, refund_id: str) -> str:
    with rt.engine.connect() as conn:
        refund = store.get_refund(conn, refund_id)
    assert refund is not None
    return refund.status


def sent(sandbox: Any) -> int:
    return sum(e["created"] for e in sandbox.ledger()["refunds"])


def test_above_the_threshold_waits_then_approve_sends_it(rt: Any, sandbox: Any) -> None:
    engine = Engine(rt)
    at, _ = persist(cobo("at", "100.00"), rt)  # not above: queued
    above, _ = persist(cobo("above", "100.01"), rt)
    assert (at.status, above.status) == ("queued", "awaiting_approval")
    assert above.next_action_at is None
    assert "awaiting approval" in reasons(rt, above.id)[0]

    # The dispatcher never claims it, even if it were due; a submit message does nothing.
    with rt.engine.begin() as conn:
        conn.execute(update(refund_table).values(next_action_at=utcnow() - timedelta(minutes=1)))
        claimed = {row.id for row in store.claim_due(conn, 60, 100)}
    assert claimed == {at.id}
    assert engine.submit(above.id) == "skipped"
    assert sent(sandbox) == 0

    with pytest.raises(ApprovalError, match="by: is required"):
        approve(rt, above.id, by="  ")
    approved = approve(rt, above.id, by="alice", note="ticket 42", publish=False)
    assert approved.status == "queued" and approved.detail["approval"]["by"] == "alice"
    assert approved.deadline > utcnow() + timedelta(hours=71)  # the clock starts again
    with rt.engine.begin() as conn:
        assert above.id in {row.id for row in store.claim_due(conn, 60, 100)}  # due now
    assert engine.submit(above.id) == "pending"
    assert sent(sandbox) == 1
    assert "awaiting_approval->queued: approved by alice: ticket 42" in reasons(rt, above.id)

    with pytest.raises(ApprovalError, match=rf"refund {above.id} is submitting|is pending, not awaiting_approval"):
        approve(rt, above.id, by="alice")


def test_deny_cancels_and_nothing_is_sent(rt: Any, sandbox: Any) -> None:
    refund, _ = persist(cobo("deny", "250.00"), rt)
    with pytest.raises(ApprovalError, match="note: is required"):
        deny(rt, refund.id, by="bob", note="")
    denied = deny(rt, refund.id, by="bob", note="wrong customer")
    assert denied.status == "cancelled" and denied.exclusive_key is None
    assert Engine(rt).submit(refund.id) == "skipped"
    assert sent(sandbox) == 0
    assert "awaiting_approval->cancelled: denied by bob: wrong customer" in reasons(rt, refund.id)
    with pytest.raises(ApprovalError, match="is cancelled, not awaiting_approval: nothing to approve"):
        approve(rt, refund.id, by="alice")


def test_a_row_stored_queued_above_the_threshold_is_held_at_send(rt: Any, sandbox: Any) -> None:
    """Batch imports build rows without the insert-time check: the send-time gate holds them."""
    request = check(cobo("batch-like", "500.00"), rt.accounts)
    values = refund_row(
        "rf_gate", request, exclusive_key=None, payment_key="order:gate", settings=rt.settings, now=utcnow()
    )
    with rt.engine.begin() as conn:
        store.insert_refund(conn, values)
    engine = Engine(rt)
    assert engine.submit("rf_gate") == "awaiting_approval"
    assert sent(sandbox) == 0
    approve(rt, "rf_gate", by="carol", publish=False)
    assert engine.submit("rf_gate") == "pending"  # approved: not held again
    assert sent(sandbox) == 1


def test_enqueue_does_not_publish_a_held_refund(rt: Any) -> None:
    result = enqueue_refund(cobo("held", "1000"), rt)
    assert not result.published and "awaiting approval" in result.message


def test_cli_approve_and_deny(rt: Any, sandbox: Any) -> None:
    refund, _ = persist(cobo("cli", "300.00"), rt)
    set_runtime(rt)
    try:
        runner = CliRunner()
        missing = runner.invoke(cli.app, ["refund", "approve", refund.id])
        assert missing.exit_code != 0  # --by is required
        done = runner.invoke(cli.app, ["refund", "approve", refund.id, "--by", "dana", "--note", "checked"])
        assert done.exit_code == 0, done.output
        again = runner.invoke(cli.app, ["refund", "deny", refund.id, "--by", "erin", "--note", "late"])
        assert again.exit_code == 1
        assert f"refund {refund.id} is queued, not awaiting_approval: nothing to deny" in again.output
    finally:
        set_runtime(None)
    assert status(rt, refund.id) == "queued"


# --- allow-list and configuration ------------------------------------------------------------------


def test_allowlist_refuses_other_destinations(sandbox: Any, sqlite_url: str, tmp_path: Path) -> None:
    listed = f'destination_allowlist = ["{EVM}", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"]'
    accounts = load_accounts(accounts_with(sandbox, listed))
    check(cobo("ok", "1.00"), accounts)
    check({**cobo("lower", "1.00"), "destination": EVM.lower()}, accounts)  # EVM case is only a checksum
    with pytest.raises(ValidationFailed) as caught:
        check({**cobo("other", "1.00"), "destination": "0x" + "ab" * 20}, accounts)
    assert str(caught.value) == "invalid refund: destination: not on account 'cobo-sandbox''s allow-list"

    allowlist_file = sandbox.accounts_file.parent / f"allow-{uuid.uuid4().hex[:8]}.txt"
    allowlist_file.write_text(f"# customers' own wallets\n\n{EVM}\n", encoding="utf-8")
    from_file = load_accounts(accounts_with(sandbox, f'destination_allowlist = "file:{allowlist_file.name}"'))
    check(cobo("file", "1.00"), from_file)
    with pytest.raises(ValidationFailed, match="allow-list"):
        check({**cobo("file2", "1.00"), "destination": "0x" + "cd" * 20}, from_file)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("destination_allowlist = []", "'destination_allowlist' must name at least one address"),
        (
            'destination_allowlist = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"]',
            "entry 1 ('0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD') checksum does not match",
        ),
        ('destination_allowlist = "file:missing.txt"', "cannot read"),
        ("approval_threshold = 1000.00", 'must be a decimal string such as "1000.00"'),
        ('approval_threshold = "-5"', "must be greater than zero"),
        ('approval_threshold = { ETH_USDT = "1e3" }', "[ETH_USDT] must be a plain decimal string"),
    ],
)
def test_bad_options_are_refused_at_load(sandbox: Any, options: str, message: str) -> None:
    with pytest.raises(AccountConfigError) as caught:
        load_accounts(accounts_with(sandbox, options))
    assert "account 'cobo-sandbox': option" in str(caught.value) and message in str(caught.value)


def test_threshold_per_currency(sandbox: Any) -> None:
    from config.account_policy import needs_approval

    accounts = load_accounts(accounts_with(sandbox, 'approval_threshold = { ETH_USDT = "100", "*" = "5" }'))
    account = accounts["cobo-sandbox"]
    request = parse_request(cobo("x", "50"))
    assert not needs_approval(account, request.amount, "ETH_USDT")
    assert needs_approval(account, request.amount, "TRON_USDT")  # falls to "*"
    only = load_accounts(accounts_with(sandbox, 'approval_threshold = { ETH_USDT = "100" }'))["cobo-sandbox"]
    assert needs_approval(only, request.amount, "BTC_BTC")  # unlisted, no "*": always held
    assert S.AWAITING_APPROVAL.value == "awaiting_approval"


def test_batch_counters_stay_exact_through_hold_and_deny(rt: Any, sandbox: Any) -> None:
    """A batch counts awaiting_approval under queued (its import counts every row as queued)."""
    from worker.batch import enqueue_batch, get_batch

    result = enqueue_batch([cobo("b-small", "1.00"), cobo("b-big", "900.00")], name="b", rt=rt, publish=False)
    assert result.batch is not None
    batch_id = result.batch.id
    with rt.engine.connect() as conn:
        big = store.get_by_key(conn, "b-big")
    assert big is not None and big.status == "queued"
    assert Engine(rt).submit(big.id) == "awaiting_approval"
    deny(rt, big.id, by="frank", note="duplicate")
    with rt.engine.connect() as conn:
        batch = get_batch(conn, batch_id)
    assert batch is not None
    assert (batch.n_queued, batch.n_cancelled, batch.inserted) == (1, 1, 2)
