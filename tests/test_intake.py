"""Door (b)'s consumer: every message on the intake queue ends as one refund row or one
rejected-intake row, whatever its bytes; a crash between commit and ack records nothing twice."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from config.producers import Producer, Producers
from tests import messages
from tests.conftest import make_runtime
from worker import store
from worker.demo import own_payment
from worker.envelope import BadMessage, parse
from worker.intake import IntakeConsumer, intake_sources, quarantine_key, read_request
from worker.models import rejected_intake_table, utcnow
from worker.producer_auth import sign

# --- pure: reading the envelope ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(messages.KILLERS))
def test_the_shapes_that_stopped_workers_are_bad_messages(name: str) -> None:
    with pytest.raises(BadMessage):
        parse(messages.KILLERS[name])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (messages.v2("refundq.reconcile", [None], {}), "does not run from the intake queue"),
        (messages.v2("refundq.submit", ["rf_1"], {}), "does not run from the intake queue"),
        (messages.v2("refundq.intake", [], {}), "takes one argument"),
        (messages.v2("refundq.intake", [{}, {}], {}), "takes one argument"),
        (messages.v2("refundq.intake", ["text"], {}), "must be a JSON object"),
        (messages.v2("refundq.intake", [{}], {"priority": 1}), "kwargs.priority is not a known argument"),
        (messages.v2("refundq.intake", [{}], []), "kwargs must be an object"),
        (messages.envelope(b'[[{"a": NaN}], {}, {}]', {"task": "refundq.intake"}), "not valid JSON"),
        (messages.envelope(b"[" * 5000 + b"]" * 5000, {"task": "refundq.intake"}), "nested too deeply"),
        (messages.envelope(b"[[" + b"9" * 5000 + b"], {}, {}]", {"task": "refundq.intake"}), "not valid JSON"),
        (messages.envelope(b"\xff\xfe", {"task": "refundq.intake"}), "not valid JSON"),
        (messages.envelope(b"[]", {"task": "refundq.intake"}, body_encoding="zlib"), "body_encoding"),
        (b"x" * 70_000, "limit is 65536"),
    ],
)
def test_intake_refuses_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        read_request(raw, 65536)


def test_kwargs_null_and_protocol_1_are_read() -> None:
    """celery-node's sendTask(name, [request]) sends kwargs null; protocol 1 carries the task in the body."""
    request = {"idempotency_key": "k"}
    assert read_request(messages.v2("refundq.intake", [request], None), 65536) == (request, {})
    assert read_request(messages.v1("refundq.intake", [request], None), 65536) == (request, {})
    signed = messages.v2("refundq.intake", [request], {"producer": "shop", "signature": "v1=00"})
    assert read_request(signed, 65536)[1] == {"producer": "shop", "signature": "v1=00"}


# --- the consumer against real Redis and a real database -----------------------------------------


@pytest.fixture
def consumer(sandbox: Any, db_url: str) -> Any:
    rt = make_runtime(db_url, sandbox.accounts_file)
    _empty_queues(rt)
    return IntakeConsumer(rt)


def _empty_queues(rt: Any) -> None:
    rt.redis.delete(*intake_sources(), quarantine_key(rt.settings.redis_prefix))
    for pattern in ("intake:*", "quarantine*"):
        for key in rt.redis.scan_iter(match=f"{rt.settings.redis_prefix}:{pattern}"):
            rt.redis.delete(key)


def cobo(key: str, amount: str = "12.00") -> dict[str, Any]:
    return own_payment(
        {
            "idempotency_key": key,
            "provider": "cobo",
            "account": "cobo-sandbox",
            "amount": amount,
            "currency": "ETH_USDT",
            "destination": "0x" + "ab" * 20,
        }
    )


def push(rt: Any, *raws: bytes, queue: str = "refundq.intake") -> None:
    for raw in raws:
        rt.redis.lpush(queue, raw)


def drain(consumer: Any, rounds: int = 20) -> int:
    handled = 0
    for _ in range(rounds):
        n = consumer.step()
        if not n:
            return handled
        handled += n
    raise AssertionError("the intake queue did not drain")


def counts(rt: Any) -> tuple[int, int]:
    with rt.engine.connect() as conn:
        refunds = conn.execute(text("SELECT count(*) FROM refund")).scalar_one()
        rejected = conn.execute(text("SELECT count(*) FROM rejected_intake")).scalar_one()
    return refunds, rejected


def rejected_rows(rt: Any) -> list[dict[str, Any]]:
    with rt.engine.connect() as conn:
        query = select(rejected_intake_table).order_by(rejected_intake_table.c.id)
        return [dict(r._mapping) for r in conn.execute(query)]


def test_every_message_leaves_one_trace(consumer: Any) -> None:
    rt = consumer.rt
    good = [messages.intake(cobo(f"good-{i}")) for i in range(3)]
    bad = [
        *messages.KILLERS.values(),
        messages.intake({**cobo("neg"), "amount": "-1"}),
        messages.v2("refundq.reconcile", [None], {}),
        messages.v2("refundq.intake", [cobo("nokw")], None),  # kwargs null: accepted
        b"",
        b"\x00\xff" * 10,
    ]
    push(rt, *good, *bad)
    assert drain(consumer) == len(good) + len(bad)
    refunds, rejected = counts(rt)
    assert (refunds, rejected) == (4, len(bad) - 1)
    rows = rejected_rows(rt)
    assert {r["queue"] for r in rows} == {"refundq.intake"}
    assert all(r["reasons"] and r["message_id"] for r in rows)
    neg = next(r for r in rows if r["idempotency_key"] == "neg")
    assert neg["reasons"] == ["amount: must be greater than zero"] and neg["payload"]["amount"] == "-1"
    assert any("\\x00" in (r["raw"] or "") for r in rows)  # raw bytes kept, escaped


def test_priorities_and_eta_are_not_held(consumer: Any) -> None:
    """A message published with a priority or an ETA 400 s ahead is stored now, not held."""
    rt = consumer.rt
    ahead = (utcnow() + timedelta(seconds=400)).isoformat()
    push(rt, messages.v2("refundq.intake", [cobo("eta")], {}, eta=ahead))
    push(rt, messages.intake(cobo("prio")), queue=intake_sources()[2])
    drain(consumer)
    with rt.engine.connect() as conn:
        assert store.get_by_key(conn, "eta") is not None
        assert store.get_by_key(conn, "prio") is not None


def test_a_crash_after_commit_records_nothing_twice(consumer: Any) -> None:
    """The consumer commits, then dies before deleting its processing list: the next consumer
    adopts the list and handles every message again; no second row appears."""
    rt = consumer.rt
    push(rt, messages.intake(cobo("once")), *messages.KILLERS.values(), messages.intake(cobo("bad", "0")))
    consumer.record(consumer.fetch())  # committed; the DEL that acks never happens
    first = counts(rt)
    assert first == (1, 5)
    heir = IntakeConsumer(rt)
    assert heir.adopt_orphans() == 0  # the owner's heartbeat still says it is alive
    rt.redis.delete(consumer.heartbeat)
    assert heir.adopt_orphans() == 6
    assert drain(heir) == 6
    assert counts(rt) == first


def test_quarantined_messages_are_recorded_with_their_queue(consumer: Any) -> None:
    from worker.broker import quarantine_record

    rt = consumer.rt
    key = quarantine_key(rt.settings.redis_prefix)
    rt.redis.lpush(key, quarantine_record("refundq.submit", b"{not json", "envelope is not valid JSON"))
    rt.redis.lpush(key, b"pushed straight onto the quarantine list")
    drain(consumer)
    rows = rejected_rows(rt)
    assert [(r["queue"], r["reasons"][0][:20]) for r in rows] == [
        ("refundq.submit", "envelope is not vali"),
        ("quarantine", "not a quarantine rec"),
    ]
    assert rows[0]["raw"] == "{not json"


def test_secrets_in_a_rejected_message_are_scrubbed(consumer: Any, sandbox: Any) -> None:
    rt = consumer.rt
    secret = next(v for v in rt.accounts.secret_values() if len(v) >= 12)
    from config.logging import register_secrets

    register_secrets([secret])
    push(rt, messages.intake({**cobo("leak", "-1"), "destination": secret}), b"junk " + secret.encode())
    drain(consumer)
    dumped = json.dumps([{k: str(v) for k, v in r.items()} for r in rejected_rows(rt)])
    assert secret not in dumped and secret.lower() not in dumped


def test_a_request_the_database_refuses_is_recorded(sandbox: Any, pg_url: str) -> None:
    """Strings PostgreSQL refuses (NUL, a lone surrogate, a key over the column) must end as a
    rejected row naming the problem, never as an acked, vanished message."""
    rt = make_runtime(pg_url, sandbox.accounts_file)
    _empty_queues(rt)
    with rt.engine.begin() as conn:
        conn.execute(text("TRUNCATE refund_event, rejected_intake, refund, payment CASCADE"))
    consumer = IntakeConsumer(rt)
    raws = [
        messages.intake(cobo("nul\x00key")),
        messages.intake({**cobo("nul-field"), "fields": {"note": "a\x00b"}}),
        messages.intake({**cobo("surrogate"), "fields": {"note": "\ud800"}}),
        messages.intake(cobo("k" * 300)),
        messages.intake({**cobo("nan"), "fields": {"x": float("nan")}}),
    ]
    push(rt, *raws)
    assert drain(consumer) == len(raws)
    assert counts(rt) == (0, len(raws))


def test_producer_signatures(sandbox: Any, sqlite_url: str) -> None:
    """Once producers are configured: unsigned, wrongly signed and other-account messages are
    refused and recorded; a correctly signed one for an allowed account is stored."""
    rt = make_runtime(sqlite_url, sandbox.accounts_file)
    secret, other = "s" * 40, "o" * 40
    from pydantic import SecretStr

    rt.producers = Producers(
        {
            "shop": Producer("shop", SecretStr(secret), frozenset({"cobo-sandbox"})),
            "ops": Producer("ops", SecretStr(other), frozenset({"cryptomus-sandbox"})),
        }
    )
    _empty_queues(rt)
    consumer = IntakeConsumer(rt)
    ok = cobo("signed")
    push(
        rt,
        messages.intake(ok, producer="shop", signature=sign(ok, secret)),
        messages.intake(cobo("unsigned")),
        messages.intake(cobo("wrong"), producer="shop", signature=sign(cobo("wrong"), other)),
        messages.intake(cobo("tampered"), producer="shop", signature=sign(cobo("tampered", "1.00"), secret)),
        messages.intake(cobo("not-theirs"), producer="ops", signature=sign(cobo("not-theirs"), other)),
    )
    drain(consumer)
    rows = {r["idempotency_key"]: r for r in rejected_rows(rt)}
    assert counts(rt) == (1, 4)
    assert rows["unsigned"]["reasons"][0].startswith("producer: is required")
    assert rows["wrong"]["reasons"][0].startswith("signature:")
    assert rows["tampered"]["reasons"][0].startswith("signature:")
    assert rows["not-theirs"]["reasons"][0].startswith("account:") and rows["not-theirs"]["producer"] == "ops"
    assert secret not in json.dumps([r["reasons"] for r in rows.values()])


def test_old_rejections_are_pruned(consumer: Any) -> None:
    rt = consumer.rt
    push(rt, b"old junk", b"new junk")
    drain(consumer)
    with rt.engine.begin() as conn:
        conn.execute(
            text("UPDATE rejected_intake SET created_at = :t WHERE raw = 'old junk'"),
            {"t": utcnow() - timedelta(days=rt.settings.rejected_intake_days + 1)},
        )
    assert consumer.prune() == 1
    assert consumer.prune() == 0  # one prune per PRUNE_EVERY, across consumers
    assert [r["raw"] for r in rejected_rows(rt)] == ["new junk"]


def test_a_queue_key_of_another_type_is_set_aside(consumer: Any) -> None:
    """A producer that SETs the queue name: every pop would fail with WRONGTYPE. The key is renamed
    (kept for a person to read) and intake goes on."""
    rt = consumer.rt
    rt.redis.set("refundq.intake", "not a list")
    assert consumer.step() == 0
    assert rt.redis.type("refundq.intake") == b"none"
    kept = list(rt.redis.scan_iter(f"{quarantine_key(rt.settings.redis_prefix)}:wrongtype:refundq.intake:*"))
    assert len(kept) == 1 and rt.redis.get(kept[0]) == b"not a list"
    push(rt, messages.intake(cobo("after")))
    assert drain(consumer) == 1 and counts(rt) == (1, 0)


def test_rounds_are_bounded_and_stray_entries_recorded(sandbox: Any, sqlite_url: str) -> None:
    """A round takes at most intake_batch items, a list left from a failed round included; bytes
    pushed straight onto a processing list are recorded, not a reason to fail every round."""
    rt = make_runtime(sqlite_url, sandbox.accounts_file, intake_batch=5)
    _empty_queues(rt)
    consumer = IntakeConsumer(rt)
    push(rt, *(f"junk {i}".encode() for i in range(12)))
    rt.redis.lpush(consumer.processing, b"no delivery number", b"7|99|a source that does not exist")
    assert consumer.step() == 5  # the 2 stray entries and 3 new items
    assert [consumer.step() for _ in range(4)] == [5, 4, 0, 0]
    rows = rejected_rows(rt)
    assert len(rows) == 14 and len({r["message_id"] for r in rows}) == 14
    assert sum(r["reasons"] == ["not a delivery record"] for r in rows) == 2
