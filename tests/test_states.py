"""Every illegal edge is refused and changes nothing; every legal edge writes exactly one event."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from providers.base import RefundStatus as S
from worker import store
from worker.db import get_engine
from worker.models import event_table, utcnow
from worker.states import EDGES, TERMINAL, allowed


def _insert(conn, refund_id: str, status: S) -> None:
    now = utcnow()
    store.insert_refund(
        conn,
        {
            "id": refund_id,
            "idempotency_key": refund_id,
            "provider": "cobo",
            "account": "a",
            "amount": Decimal("1.00"),
            "currency": "ETH_USDT",
            "destination": "x",
            "fields": {},
            "status": status.value,
            "deadline": now + timedelta(hours=1),
            "detail": {},
            "created_at": now,
            "updated_at": now,
            "attempts": 0,
            "polls": 0,
        },
    )


def _events(conn, refund_id: str) -> int:
    return conn.execute(select(func.count()).where(event_table.c.refund_id == refund_id)).scalar_one()


def test_edges_cover_every_status_and_terminals_are_closed() -> None:
    assert set(EDGES) == set(S)
    for status in (S.REJECTED, S.CANCELLED):
        assert EDGES[status] == frozenset()
    # needs_attention is left only by an operator's `refund resolve` (worker/operator.py)
    assert EDGES[S.NEEDS_ATTENTION] == frozenset({S.COMPLETED, S.FAILED})
    # completed/failed only leave to needs_attention (drift found by reconciliation)
    assert EDGES[S.COMPLETED] == EDGES[S.FAILED] == frozenset({S.NEEDS_ATTENTION})
    assert {S.COMPLETED, S.FAILED, S.REJECTED, S.NEEDS_ATTENTION, S.CANCELLED} <= TERMINAL


def test_every_pair_of_statuses(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    for i, (frm, to) in enumerate(itertools.product(S, S)):
        refund_id = f"r{i}"
        with engine.begin() as conn:
            _insert(conn, refund_id, frm)
        with engine.begin() as conn:
            before = _events(conn, refund_id)
        if allowed(frm, to):
            with engine.begin() as conn:
                store.transition(conn, refund_id, frm, to, reason="test")
            with engine.connect() as conn:
                assert store.get_refund(conn, refund_id).status == to.value
                assert _events(conn, refund_id) == before + 1
        else:
            with pytest.raises(store.IllegalTransition, match=f"{frm} -> {to}"), engine.begin() as conn:
                store.transition(conn, refund_id, frm, to, reason="test")
            with engine.connect() as conn:
                assert store.get_refund(conn, refund_id).status == frm.value
                assert _events(conn, refund_id) == before


def test_lost_race_changes_nothing(db_url: str) -> None:
    engine = get_engine(db_url)
    with engine.begin() as conn:
        _insert(conn, "race", S.QUEUED)
    with engine.begin() as conn:
        store.transition(conn, "race", S.QUEUED, S.SUBMITTING)
    # A second worker still believes it is queued: its claim must fail and write nothing.
    with pytest.raises(store.LostRace), engine.begin() as conn:
        store.transition(conn, "race", S.QUEUED, S.SUBMITTING)
    with engine.connect() as conn:
        assert _events(conn, "race") == 2  # insert + one claim


def test_event_and_update_share_one_transaction(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    with engine.begin() as conn:
        _insert(conn, "tx", S.QUEUED)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        store.transition(conn, "tx", S.QUEUED, S.SUBMITTING)
        raise RuntimeError("crash before commit")
    with engine.connect() as conn:
        assert store.get_refund(conn, "tx").status == "queued"
        assert _events(conn, "tx") == 1
