"""`refundq refund show/list` print stored producer and provider text inert: no terminal escape
sequence reaches the terminal, no Rich markup in the data is obeyed; `show KEY` also shows the
rejected intakes of a key that has a refund."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import insert, update
from typer.testing import CliRunner

from sandbox.accounts import write_sandbox_accounts
from tests.conftest import make_runtime
from worker import cli
from worker.demo import own_payment
from worker.models import refund_table, rejected_intake_table, utcnow
from worker.producer import persist
from worker.runtime import set_runtime

HOSTILE = "\x1b[2J\x1b]0;owned\x07[red]not red[/red] :smile: \x9b31m"
SHOWN = "\\x1b[2J\\x1b]0;owned\\x07[red]not red[/red] :smile: \\x9b31m"


@pytest.fixture
def rt(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    runtime = make_runtime(sqlite_url, write_sandbox_accounts(tmp_path / "acc", "http://127.0.0.1:9"))
    monkeypatch.setattr(cli, "console", Console(width=1000))  # no wrapping inside the asserted text
    set_runtime(runtime)
    yield runtime
    set_runtime(None)


def stored_refund(rt: Any, key: str) -> Any:
    refund, _ = persist(
        own_payment(
            {
                "idempotency_key": key,
                "provider": "cobo",
                "account": "cobo-sandbox",
                "amount": "12.50",
                "currency": "ETH_USDT",
                "destination": "0x" + "ab" * 20,
            }
        ),
        rt,
    )
    with rt.engine.begin() as conn:  # what a hostile provider could have answered
        conn.execute(
            update(refund_table)
            .where(refund_table.c.id == refund.id)
            .values(last_error=HOSTILE, provider_status="\x1b[5mPAID")
        )
    return refund


def reject(rt: Any, key: str, reason: str) -> None:
    with rt.engine.begin() as conn:
        conn.execute(
            insert(rejected_intake_table).values(
                idempotency_key=key, payload={"idempotency_key": key}, reasons=[reason], created_at=utcnow()
            )
        )


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def test_show_and_list_escape_control_characters_and_markup(rt: Any) -> None:
    refund = stored_refund(rt, "order-1-refund")
    for result in (invoke("refund", "show", refund.id), invoke("refund", "list")):
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x9b" not in result.output and "\x07" not in result.output
        assert "\\x1b[5mPAID" in result.output
    shown = invoke("refund", "show", refund.id).output
    assert SHOWN in shown  # markup and emoji codes printed as written, not obeyed


def test_show_key_shows_the_refund_and_its_rejected_intakes(rt: Any) -> None:
    refund = stored_refund(rt, "order-2-refund")
    reject(rt, "order-2-refund", "idempotency key 'order-2-refund' already names a refund with different amount")
    for lookup in ("order-2-refund", refund.id):
        result = invoke("refund", "show", lookup)
        assert result.exit_code == 0, result.output
        assert f"refund {refund.id}" in result.output  # the refund ...
        assert "rejected at intake 1x" in result.output and "different amount" in result.output  # ... and the rejection


def test_show_key_with_only_rejections_and_unknown_keys(rt: Any) -> None:
    reject(rt, "order-3-refund", "amount: " + HOSTILE)
    result = invoke("refund", "show", "order-3-refund")
    assert result.exit_code == 0 and "rejected at intake 1x" in result.output and "refund rf_" not in result.output
    assert "\x1b" not in result.output and SHOWN in result.output
    missing = invoke("refund", "show", "[red]nope\x1b")
    assert missing.exit_code == 1 and "[red]nope\\x1b" in missing.output
