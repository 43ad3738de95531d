"""Exactly once when providers are slow, late or unsure (issue #9), in-process against the sandbox
over real HTTP and a real database. Each test stalls or delays one party at an exact moment, which
the chaos suite can only hit by chance."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text, update

from config.accounts import Accounts
from providers import get_adapter
from providers.base import PaymentReading, Request, Response
from providers.base import RefundStatus as S
from tests.conftest import make_runtime
from tests.test_engine import cobo, coinvoyage
from worker import ceiling, store
from worker.demo import own_payment
from worker.engine import Engine, spec_of
from worker.models import refund_table
from worker.producer import persist


def with_settle(rt: Any, seconds: float) -> Any:
    """The runtime with every account's settle time set to `seconds`."""
    rt.accounts = Accounts(
        {
            name: dataclasses.replace(a, options={**a.options, "settle_seconds": seconds})
            for name, a in rt.accounts.items()
        }
    )
    return rt


class Stall:
    """The real transport, except that a create (POST) stalls at one moment until released:
    before it is sent (a worker paused after renewing its claim) or after its answer came back
    (a worker paused before recording it)."""

    def __init__(self, inner: Any, *, before_send: bool = False, after_answer: bool = False) -> None:
        self.inner, self.before_send, self.after_answer = inner, before_send, after_answer
        self.reached, self.release = threading.Event(), threading.Event()

    def send(self, request: Request) -> Response:
        create = request.method == "POST"
        if create and self.before_send:
            self._stall()
        response: Response = self.inner.send(request)
        if create and self.after_answer:
            self._stall()
        return response

    def _stall(self) -> None:
        self.reached.set()
        assert self.release.wait(30), "the test never released the stalled call"


def status_of(rt: Any, refund_id: str) -> str:
    with rt.engine.connect() as conn:
        refund = store.get_refund(conn, refund_id)
    assert refund is not None
    return refund.status


def reasons(rt: Any, refund_id: str) -> list[str]:
    with rt.engine.connect() as conn:
        return [e["reason"] or "" for e in store.events(conn, refund_id)]


def expire_lease(rt: Any, refund_id: str) -> None:
    """The claim's lease runs out (what a long stall of its worker amounts to)."""
    with rt.engine.begin() as conn:
        conn.execute(
            update(refund_table)
            .where(refund_table.c.id == refund_id)
            .values(next_action_at=datetime.now(UTC) - timedelta(seconds=5))
        )


def run(target: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target(*args)), daemon=True)
    thread.start()
    return thread, out


def test_a_stale_worker_changes_nothing_in_the_next_claim(db_url: str, sandbox: Any) -> None:
    """Finding 1: worker A stalls after renewing its claim; its lease runs out, the dispatcher
    takes the claim over, worker B finds nothing at the provider and sends. A then sends and
    records its answer while B's request is in flight: A must change nothing (fenced), and what
    the provider told A is kept as a late answer; B's own answer is what the refund records."""
    rt_a = with_settle(make_runtime(db_url, sandbox.accounts_file), 0)
    rt_b = with_settle(make_runtime(db_url, sandbox.accounts_file), 0)
    rt_a.transport = a = Stall(rt_a.transport, before_send=True)
    rt_b.transport = b = Stall(rt_b.transport, after_answer=True)
    refund, _ = persist(cobo("fenced"), rt_a)

    worker_a, out_a = run(Engine(rt_a).submit, refund.id)
    assert a.reached.wait(10), "A never reached its send"
    expire_lease(rt_a, refund.id)
    Engine(rt_a).dispatch_once()
    assert status_of(rt_a, refund.id) == "unknown"

    worker_b, out_b = run(Engine(rt_b).submit, refund.id)  # lookup: absent (A never sent) -> send
    assert b.reached.wait(10), "B never got its answer"
    assert status_of(rt_a, refund.id) == "submitting"

    a.release.set()  # A wakes up, sends on its stale belief and tries to record the answer
    worker_a.join(15)
    assert not worker_a.is_alive()
    assert status_of(rt_a, refund.id) == "submitting", "the stale worker wrote into B's claim"
    assert out_a == ["lost_race"]
    assert any(r.startswith("late answer") for r in reasons(rt_a, refund.id))

    b.release.set()
    worker_b.join(15)
    assert out_b == ["pending"] and status_of(rt_a, refund.id) == "pending"
    assert sum("accepted by the provider" in r for r in reasons(rt_a, refund.id)) == 1
    # Cobo deduplicates on request_id: two create calls, one refund.
    (entry,) = sandbox.ledger()["refunds"]
    assert entry["created"] == 1 and entry["create_calls"] == 2


def test_a_renewal_that_lost_its_lease_never_sends(db_url: str, sandbox: Any) -> None:
    """The dispatcher took the claim over between A's claim and A's renewal: A must not send."""
    rt = make_runtime(db_url, sandbox.accounts_file)
    refund, _ = persist(cobo("taken"), rt)
    with rt.engine.begin() as conn:
        claim = store.transition(
            conn,
            refund.id,
            S.QUEUED,
            S.SUBMITTING,
            values={"claim": refund_table.c.claim + 1, "next_action_at": timedelta(seconds=-1)},
        )
    assert Engine(rt).dispatch_once()["taken_over"] == 1
    with rt.engine.connect() as conn:
        stale = store.get_refund(conn, refund.id)
    assert stale is not None
    stale = stale.model_copy(update={"status": S.SUBMITTING.value, "claim": claim})
    assert Engine(rt)._send(stale) == "claim_lost"
    assert sandbox.ledger()["refunds"] == []


def late_request(provider: str) -> dict[str, Any]:
    """A refund whose first create the sandbox executes late (scenario 60, `sbx60`)."""
    from worker.demo import ADDRESSES

    order = f"late-{provider}-{time.time_ns()}-sbx60"
    fields = {
        "coinvoyage": {"payorder_id": order, "chain_id": 30000000000001},
        "coincorner": {"order_id": order},
        "cryptomus": {"order_id": order + "-amt12_00", "network": "tron"},
    }[provider]
    currency = {"coinvoyage": "USD", "coincorner": "GBP", "cryptomus": "USDT"}[provider]
    return own_payment(
        {
            "idempotency_key": order,
            "provider": provider,
            "account": f"{provider}-sandbox",
            "amount": "12.00",
            "currency": currency,
            "destination": ADDRESSES[provider],
            "fields": fields,
        }
    )


@pytest.mark.parametrize("provider", ["coinvoyage", "coincorner", "cryptomus"])
def test_absent_is_not_believed_before_the_settle_time(db_url: str, sandbox: Any, provider: str) -> None:
    """Findings 2 and 3: the provider receives the create, answers nothing, and executes it seconds
    later. A lookup one second after the timeout finds nothing (CoinCorner order `2`, Cryptomus
    invoice `paid`: "no refund visible"); resending then pays twice at CoinVoyage (no idempotency
    key) and sends twice elsewhere. The refund must stay unknown until the settle time, then adopt
    the late create: one create call, one refund."""
    sandbox.configure(execute_delay_seconds=2.5)
    rt = make_runtime(db_url, sandbox.accounts_file, http_read_timeout=1.0)
    refund, _ = persist(late_request(provider), rt)
    engine = Engine(rt)
    assert engine.submit(refund.id) == "unknown"
    deadline = time.monotonic() + 30
    while status_of(rt, refund.id) == "unknown" and time.monotonic() < deadline:
        time.sleep(0.3)
        engine.submit(refund.id)
    assert status_of(rt, refund.id) in ("pending", "processing", "completed")
    time.sleep(3)  # past the sandbox's delayed execution, whatever was sent
    entries = sandbox.ledger()["refunds"]
    assert sum(e["created"] for e in entries) == 1, entries
    assert sum(e["create_calls"] for e in entries) == 1, entries


def test_a_duplicate_found_by_lookup_goes_to_an_operator_with_every_id(db_url: str, sandbox: Any) -> None:
    """Finding 5: two CoinVoyage pay-orders carry our refund id. A lookup must not adopt one of them."""
    rt = make_runtime(db_url, sandbox.accounts_file)
    refund, _ = persist(coinvoyage("twice"), rt)
    adapter, account = get_adapter("coinvoyage"), rt.accounts["coinvoyage-sandbox"]
    ids = []
    for i in range(2):  # what a double send left at the provider
        # The API refuses a second refund of one pay-order (422), so the second order refunds another
        # pay-order; the lookup matches on our refund id in the metadata either way.
        spec = spec_of(refund)
        spec = dataclasses.replace(spec, fields={**spec.fields, "payorder_id": f"{spec.fields['payorder_id']}-{i}"})
        nonce = rt.nonces.next(account, adapter.nonce_policy, adapter.nonce_unit)
        request = adapter.build_submit(spec, account, nonce)
        ids.append(adapter.parse_submit(spec, account, rt.transport.send(request)).provider_refund_id)
    with rt.engine.begin() as conn:
        store.transition(conn, refund.id, S.QUEUED, S.SUBMITTING)
        store.transition(conn, refund.id, S.SUBMITTING, S.UNKNOWN, values={"next_action_at": datetime.now(UTC)})
    assert Engine(rt).submit(refund.id) == "needs_attention"
    with rt.engine.connect() as conn:
        stored = store.get_refund(conn, refund.id)
    assert stored is not None and stored.status == "needs_attention"
    assert sorted(stored.detail["provider_refund_ids"]) == sorted(ids)


def test_one_refund_failing_does_not_stop_its_poll_batch(db_url: str, sandbox: Any) -> None:
    """Finding 6: an exception while polling one refund aborted the rest of its batch."""
    rt = make_runtime(db_url, sandbox.accounts_file)
    engine = Engine(rt)
    broken, _ = persist(cobo("broken"), rt)
    good, _ = persist(cobo("good"), rt)
    assert engine.submit(broken.id) == "pending" and engine.submit(good.id) == "pending"
    with rt.engine.begin() as conn:  # an account removed from the file while its refunds are open
        conn.execute(text("UPDATE refund SET account = 'retired' WHERE id = :id"), {"id": broken.id})
    out = engine.poll([broken.id, good.id])
    assert out[broken.id] == "error"
    assert out[good.id] in ("pending", "processing", "completed")


def test_a_nonce_counter_far_ahead_gives_the_refund_back_without_sending(db_url: str, sandbox: Any) -> None:
    """Finding 6: the allocator slept up to 50 s inside the claim and the lane, then crashed the
    task; the refund cycled submitting -> unknown -> resend. Now: back to queued, no attempt spent,
    nothing sent, within the allocator's short bound."""
    from worker.nonces import key_id

    rt = make_runtime(db_url, sandbox.accounts_file)
    refund, _ = persist(
        {
            "idempotency_key": "nonce-ahead",
            "provider": "coincorner",
            "account": "coincorner-sandbox",
            "amount": "12.00",
            "currency": "GBP",
            "destination": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
            "fields": {"order_id": "nonce-ahead-1"},
        },
        rt,
    )
    account = rt.accounts["coincorner-sandbox"]
    key = f"{rt.settings.redis_prefix}:nonce:coincorner:{key_id(account)}"
    rt.redis.set(key, str(int(time.time() * 1000) + 60_000))  # a minute ahead (ms nonces)
    reading = PaymentReading("order:nonce-ahead-1", Decimal(100), "GBP")
    try:
        # The payment read before the first send meets it first: later, nothing spent or sent.
        assert Engine(rt).submit(refund.id) == "payment_read_later"
        with rt.engine.begin() as conn:  # read meanwhile: now the send path itself meets it
            assert ceiling.admit_reading(conn, refund.id, reading) is None
        result = Engine(rt).submit(refund.id)  # the old code slept ~50 s here, then raised TimeoutError
    finally:
        rt.redis.delete(key)
    assert result == "queued", result
    with rt.engine.connect() as conn:
        stored = store.get_refund(conn, refund.id)
    assert stored is not None and stored.status == "queued" and stored.attempts == 0
    assert sandbox.ledger()["refunds"] == []


@pytest.mark.parametrize("provider", ["cobo", "coinvoyage"])
def test_a_lookup_found_by_a_late_answer_is_not_resent(db_url: str, sandbox: Any, provider: str) -> None:
    """A superseded claim was told "accepted"; the provider's list does not show it (yet). The
    lookup must not resend on "absent": an operator decides."""
    rt = with_settle(make_runtime(db_url, sandbox.accounts_file), 0)
    refund, _ = persist(cobo("late-ok") if provider == "cobo" else coinvoyage("late-ok"), rt)
    with rt.engine.begin() as conn:
        store.transition(conn, refund.id, S.QUEUED, S.SUBMITTING)
        store.transition(conn, refund.id, S.SUBMITTING, S.UNKNOWN, values={"next_action_at": timedelta(0)})
        store.add_late_answer(
            conn, refund.id, "claim 1 was taken over", {"outcome": "answer", "provider_refund_id": "P-1"}
        )
    assert Engine(rt).submit(refund.id) == "needs_attention"
    assert sandbox.ledger()["refunds"] == []


def test_only_refusal_or_cancellation_frees_the_invoice(db_url: str, sandbox: Any) -> None:
    """Finding 4: a refund that may have been paid keeps its one-refund-per-invoice key (unknown can
    no longer become rejected); a refused or cancelled one frees it, whatever path moved it."""
    from worker.states import allowed

    assert not allowed(S.UNKNOWN, S.REJECTED)
    rt = make_runtime(db_url, sandbox.accounts_file)
    request = {
        "idempotency_key": "invoice-key",
        "provider": "coincorner",
        "account": "coincorner-sandbox",
        "amount": "12.00",
        "currency": "GBP",
        "destination": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
        "fields": {"order_id": "invoice-1"},
    }
    first, _ = persist(request, rt)
    second, _ = persist({**request, "idempotency_key": "invoice-key-2", "fields": {"order_id": "invoice-2"}}, rt)
    with rt.engine.begin() as conn:
        store.transition(conn, first.id, S.QUEUED, S.SUBMITTING)
        store.transition(conn, first.id, S.SUBMITTING, S.UNKNOWN)
        store.transition(conn, first.id, S.UNKNOWN, S.NEEDS_ATTENTION)
        store.transition(conn, second.id, S.QUEUED, S.CANCELLED)
    with rt.engine.connect() as conn:
        kept, freed = store.get_refund(conn, first.id), store.get_refund(conn, second.id)
    assert kept is not None and kept.exclusive_key is not None
    assert freed is not None and freed.exclusive_key is None


def test_a_worker_clock_behind_does_not_shorten_its_claim(
    db_url: str, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1 (one clock): the lease was written with the worker's clock and judged with the
    dispatcher's. A worker 100 s behind wrote a lease already past; the dispatcher took the claim
    over while the request was in flight. Leases are now written and judged on the database clock."""
    import worker.engine

    rt = make_runtime(db_url, sandbox.accounts_file)  # lease_seconds 60 < the 100 s skew
    rt.transport = stall = Stall(rt.transport, before_send=True)
    monkeypatch.setattr(worker.engine, "utcnow", lambda: datetime.now(UTC) - timedelta(seconds=100))
    refund, _ = persist(cobo("skewed"), rt)
    worker_a, out = run(Engine(rt).submit, refund.id)
    assert stall.reached.wait(10)  # claimed and renewed on the worker's clock
    monkeypatch.undo()  # the dispatcher's clock is true
    Engine(make_runtime(db_url, sandbox.accounts_file)).dispatch_once()
    assert status_of(rt, refund.id) == "submitting", "the claim was taken over while its send was in flight"
    stall.release.set()
    worker_a.join(15)
    assert out == ["pending"]


def test_an_unknown_refund_on_an_invoice_the_provider_does_not_know_ends_rejected(db_url: str, sandbox: Any) -> None:
    """Found by chaos: a worker died after sending a Cryptomus refund for an invoice Cryptomus does not
    know. Its lookup answers the documented "Payment was not found", which is proof that no refund is
    on that invoice: after the settle time it is resent, and that send's own refusal ends it."""
    from worker.demo import ADDRESSES

    rt = with_settle(make_runtime(db_url, sandbox.accounts_file), 0)
    refund, _ = persist(
        {
            "idempotency_key": "no-invoice",
            "provider": "cryptomus",
            "account": "cryptomus-sandbox",
            "amount": "12.58",
            "currency": "USDT",
            "destination": ADDRESSES["cryptomus"],
            "fields": {"order_id": "no-invoice-sbx58-amt12_58", "network": "tron"},
        },
        rt,
    )
    with rt.engine.begin() as conn:
        store.transition(conn, refund.id, S.QUEUED, S.SUBMITTING)
        store.transition(conn, refund.id, S.SUBMITTING, S.UNKNOWN, values={"next_action_at": datetime.now(UTC)})
    assert Engine(rt).submit(refund.id) == "rejected"
    assert any("claimed for send again" in r for r in reasons(rt, refund.id))
