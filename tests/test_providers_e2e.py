"""Issue #3's "must show", for all four providers, on the real broker: a real Celery worker process
and dispatcher, the sandbox over loopback HTTP, the run's own PostgreSQL database.

1. 50 refunds per provider, every sandbox scenario mixed with normal ones, reach the exact final
   status the sandbox + adapter imply, each created exactly once at the provider (sandbox ledger),
   429 / 500 / timeout-after-commit included; a timeout-after-commit is adopted by lookup, never resent
   (CoinVoyage has no idempotency key: lookup-before-resend alone keeps it at one).
2. A request signed with the wrong secret is refused by the sandbox and the worker turns it into
   `rejected` at the first attempt, with a reason naming the credentials (no retry loop).
3. An undocumented provider status ends in `needs_attention` with the raw value in `provider_status`.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers import get_adapter
from tests.conftest import SandboxServer, Stack, make_runtime, settings_env
from tests.test_pipeline import FINAL, clean
from worker import store
from worker.demo import ADDRESSES, own_payment
from worker.producer import enqueue_refund

pytestmark = pytest.mark.integration

PROVIDERS = ("cobo", "coincorner", "coinvoyage", "cryptomus")
C, F, R, NA = "completed", "failed", "rejected", "needs_attention"
# Scenario code (sandbox/core.py Scenario) -> the final status refundq must reach, per provider.
# 53 (SLOW) is ten times slower and still completes. Scenarios without a counterpart behave as NORMAL:
# CoinCorner has no failure status and no human step (51, 52, 59 complete); Cryptomus has no partial
# refund and no human step (52, 59 complete). 59 at Cobo / CoinVoyage waits in action_required until the
# test funds it in the sandbox, then completes.
EXPECTED: dict[str, dict[int, str]] = {
    # 52: PartiallyCompleted is kept for a person; its (short, in tests) deadline passes -> needs_attention.
    "cobo": {0: C, 51: F, 52: NA, 53: C, 54: C, 55: C, 56: C, 57: NA, 58: R, 59: C},
    "coincorner": {0: C, 51: C, 52: C, 53: C, 54: C, 55: C, 56: C, 57: NA, 58: R, 59: C},
    # 52: PENDING -> PARTIAL_PAYMENT -> EXPIRED, which is FAILED.
    "coinvoyage": {0: C, 51: F, 52: F, 53: C, 54: C, 55: C, 56: C, 57: NA, 58: R, 59: C},
    "cryptomus": {0: C, 51: F, 52: C, 53: C, 54: C, 55: C, 56: C, 57: NA, 58: R, 59: C},
}
CODES = list(EXPECTED["cobo"])
N = 50
# Scenario 57: the raw status each sandbox answers once the refund leaves its first phase.
UNDOCUMENTED = {"cobo": "Frozen", "coincorner": "-7", "coinvoyage": "ON_HOLD", "cryptomus": "refund_hold"}
# Sends each scenario takes: 429 and 500 create nothing, so one resend; 56 is adopted by lookup, no resend.
ATTEMPTS = {54: 2, 55: 2, 56: 1}
FAST_STACK = {"partial_deadline_hours": 0.001, "action_required_poll": 0.5}
CURRENCY = {"cobo": "ETH_USDT", "coincorner": "GBP", "coinvoyage": "USD", "cryptomus": "USDT"}


def refund_request(provider: str, i: int, code: int, run: str) -> dict[str, Any]:
    """A valid request (shapes from worker/demo.py) whose amount cents and `sbxNN` marker pick `code`.
    Every refund names its own invoice / pay-order (CoinCorner and Cryptomus refund one once)."""
    order = f"{run}-{i}" + (f"-sbx{code:02d}" if code else "")
    amount = Decimal(10 + i % 90) + Decimal(code) / 100
    # Cryptomus refunds a whole invoice: the sandbox invoice amount (`amt` marker) is the one we ask for,
    # or the worker's integrity check rightly flags the refund.
    invoice = order + "-amt" + format(amount, "f").replace(".", "_")
    fields: dict[str, Any] = {
        "cobo": {},
        "coincorner": {"order_id": order},
        "coinvoyage": {"payorder_id": order, "chain_id": 30000000000001},
        "cryptomus": {"order_id": invoice, "network": "tron"},
    }[provider]
    return own_payment(
        {
            "idempotency_key": f"{run}-{i}",
            "provider": provider,
            "account": f"{provider}-sandbox",
            "amount": str(amount),
            "currency": CURRENCY[provider],
            "destination": ADDRESSES[provider],
            "fields": fields,
        }
    )


def ledger_key(provider: str, refund_id: str, request: dict[str, Any]) -> str:
    """What names the refund in the sandbox ledger (refund_key or provider_refund_id)."""
    if provider in ("cobo", "coinvoyage"):
        return refund_id  # Cobo request_id / CoinVoyage metadata.refundq_refund_id = refundq's id
    return str(request["fields"]["order_id"])  # CoinCorner OrderId; Cryptomus order_id (refund_key: its uuid)


def provider_ledger(sandbox: SandboxServer, provider: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in sandbox.ledger()["refunds"]:
        if entry["provider"] == provider:
            out[entry["refund_key"]] = entry
            out[entry["provider_refund_id"]] = entry
    return out


def wait_final(
    rt: Any,
    ids: list[str],
    timeout: float,
    stack: Stack,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stack.assert_alive()
        with rt.engine.connect() as conn:
            refunds = {i: store.get_refund(conn, i) for i in ids}
        if all(r is not None and r.status in FINAL for r in refunds.values()) or time.monotonic() > deadline:
            return refunds
        if on_round is not None:
            on_round(refunds)
        time.sleep(0.3)


def reasons_of(rt: Any, refund_id: str) -> list[str]:
    with rt.engine.connect() as conn:
        return [e["reason"] or "" for e in store.events(conn, refund_id)]


def dump_tracebacks(log_dir: Path) -> None:
    for log in log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            sys.stderr.write(f"--- {log.name} ---\n{text[-4000:]}\n")


# --- 1. mixed scenarios: exact final status, created exactly once -----------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_mixed_scenarios_reach_expected_final_status_created_once(
    provider: str, stack_factory: Any, sandbox: SandboxServer, pg_url: str
) -> None:
    clean(pg_url)
    stack = stack_factory(pg_url, **FAST_STACK)
    stack.start_worker()
    stack.start_dispatcher()
    rt = make_runtime(pg_url, sandbox.accounts_file)
    run = f"e2e-{provider}-{time.time_ns()}"
    codes = [CODES[i % len(CODES)] for i in range(N)]
    requests = [refund_request(provider, i, code, run) for i, code in enumerate(codes)]
    ids = [enqueue_refund(r, rt).refund.id for r in requests]
    code_of = dict(zip(ids, codes, strict=True))
    funded: set[str] = set()

    def fund_waiting(refunds: dict[str, Any]) -> None:
        # A person funds / confirms the refunds waiting for one (scenario 59 at Cobo and CoinVoyage).
        for refund_id, r in refunds.items():
            if r is not None and r.status == "action_required" and refund_id not in funded:
                answer = httpx.post(f"{sandbox.base_url}/_sandbox/fund/{provider}/{refund_id}", timeout=5)
                answer.raise_for_status()
                funded.add(refund_id)

    refunds = wait_final(rt, ids, timeout=90, stack=stack, on_round=fund_waiting)

    not_final = {i: r.status for i, r in refunds.items() if r.status not in FINAL}
    assert not not_final, f"not final after 90 s: {Counter(not_final.values())}"
    wrong = [
        (code_of[i], EXPECTED[provider][code_of[i]], r.status, r.provider_status, r.last_error)
        for i, r in refunds.items()
        if r.status != EXPECTED[provider][code_of[i]]
    ]
    assert not wrong, f"{provider}: (scenario, expected, got, provider_status, last_error): {wrong}"
    if provider in ("cobo", "coinvoyage"):  # 59 really waited for a person there
        assert funded == {i for i in ids if code_of[i] == 59}

    # The sandbox ledger: every refund that was not refused exists once, and was asked for once.
    ledger = provider_ledger(sandbox, provider)
    accepted = [(i, req) for i, req in zip(ids, requests, strict=True) if refunds[i].status != "rejected"]
    keys = {ledger_key(provider, i, req) for i, req in accepted}
    assert keys <= set(ledger), f"not in the ledger: {keys - set(ledger)}"
    entries = {e["refund_key"] for e in ledger.values()}
    assert len(entries) == len(keys), f"{len(entries)} ledger entries for {len(keys)} accepted refunds"
    bad = [
        (code_of[i], ledger[ledger_key(provider, i, req)])
        for i, req in accepted
        if ledger[ledger_key(provider, i, req)]["created"] != 1
        or ledger[ledger_key(provider, i, req)]["create_calls"] != 1
    ]
    assert not bad, f"created / asked for more than once: {bad}"

    for refund_id, refund in refunds.items():
        code = code_of[refund_id]
        if code in ATTEMPTS:
            # A nonce refused past its re-signs (CoinCorner under concurrency) requeues: not executed, but counted.
            reasons = reasons_of(rt, refund_id)
            nonce_requeues = sum(r.startswith("not sent, retry in") and "nonce" in r for r in reasons)
            assert refund.attempts - nonce_requeues == ATTEMPTS[code], (code, refund.attempts, reasons)
        if code == 56:
            # Timeout after commit: outcome unknown, then the lookup adopted the refund; no resend.
            reasons = reasons_of(rt, refund_id)
            unknown = next((k for k, r in enumerate(reasons) if "outcome unknown" in r), None)
            found = next((k for k, r in enumerate(reasons) if "lookup found the refund" in r), None)
            assert unknown is not None and found is not None and unknown < found, reasons
            assert not any("claimed for send" in r for r in reasons[unknown:]), reasons
        if code == 57:
            assert refund.provider_status == UNDOCUMENTED[provider], (refund.provider_status, refund.last_error)
            assert "undocumented status" in (refund.last_error or ""), refund.last_error


# --- 2. wrong credentials: rejected at once, with a reason ------------------------------------------

# The secret file of each provider's sandbox account, and a wrong value of the same shape.
WRONG_SECRET: dict[str, tuple[str, Callable[[], str]]] = {
    "cobo": ("cobo_api_private_key", lambda: secrets.token_hex(32)),  # another valid Ed25519 seed
    "coincorner": ("coincorner_api_secret", lambda: secrets.token_hex(16).upper()),
    "coinvoyage": ("coinvoyage_api_secret", lambda: "sk_" + secrets.token_urlsafe(24)),
    "cryptomus": ("cryptomus_api_key", lambda: secrets.token_urlsafe(48)),
}
# Sandbox counters of refused signatures (CoinCorner counts none).
AUTH_COUNTER = {
    "cobo": "cobo:auth_rejections",
    "coinvoyage": "coinvoyage:bad_signatures",
    "cryptomus": "cryptomus:auth_failures",
}


def wrong_accounts(sandbox: SandboxServer, provider: str, directory: Path) -> Path:
    """A copy of the sandbox accounts where `provider`'s secret is wrong; the sandbox keeps the right one."""
    shutil.copytree(sandbox.accounts_file.parent, directory)
    name, make = WRONG_SECRET[provider]
    secret_file = directory / name
    right = secret_file.read_text(encoding="utf-8")
    wrong = make()
    assert wrong != right
    secret_file.write_text(wrong, encoding="utf-8")
    return directory / sandbox.accounts_file.name


@pytest.mark.parametrize("provider", PROVIDERS)
def test_wrong_secret_is_rejected_with_a_reason_not_retried(
    provider: str, sandbox: SandboxServer, pg_url: str, tmp_path: Path
) -> None:
    from worker.procs import Children

    clean(pg_url)
    accounts_file = wrong_accounts(sandbox, provider, tmp_path / "wrong-accounts")
    stack = Stack(pg_url, settings_env(pg_url, accounts_file), Children(tmp_path))
    try:
        stack.start_worker(concurrency=2)
        stack.start_dispatcher()
        rt = make_runtime(pg_url, accounts_file)
        request = refund_request(provider, 1, 0, f"auth-{provider}-{time.time_ns()}")
        refund_id = enqueue_refund(request, rt).refund.id

        refund = wait_final(rt, [refund_id], timeout=60, stack=stack)[refund_id]
        assert refund.status == "rejected", (refund.status, refund.last_error)
        time.sleep(1.5)  # a retry loop would show by now
        with rt.engine.connect() as conn:
            refund = store.get_refund(conn, refund_id)
        assert refund is not None
        reasons = reasons_of(rt, refund_id)
    finally:
        stack.children.stop_all()
        dump_tracebacks(tmp_path)

    assert refund.status == "rejected"
    # Where the provider reports the original payment, reading it comes first and is refused first.
    sends = 0 if get_adapter(provider).reads_payment else 1
    assert refund.attempts == sends, reasons
    assert sum("claimed for send" in r for r in reasons) == sends, reasons
    assert "auth" in (refund.last_error or "").lower(), refund.last_error
    assert any("provider refused our credentials" in r for r in reasons), reasons
    ledger = sandbox.ledger()
    assert not [e for e in ledger["refunds"] if e["provider"] == provider]
    if provider in AUTH_COUNTER:
        assert ledger["counters"].get(AUTH_COUNTER[provider]) == 1, ledger["counters"]


# --- 3. an undocumented provider status -------------------------------------------------------------


def test_undocumented_status_needs_attention_with_raw_value(
    stack_factory: Any, sandbox: SandboxServer, pg_url: str
) -> None:
    """Scenario 57, which every sandbox implements: one refund per provider on one stack."""
    clean(pg_url)
    stack = stack_factory(pg_url)
    stack.start_worker(concurrency=4)
    stack.start_dispatcher()
    rt = make_runtime(pg_url, sandbox.accounts_file)
    run = f"undoc-{time.time_ns()}"
    ids = {p: enqueue_refund(refund_request(p, k, 57, run), rt).refund.id for k, p in enumerate(PROVIDERS)}

    refunds = wait_final(rt, list(ids.values()), timeout=60, stack=stack)

    for provider, refund_id in ids.items():
        refund = refunds[refund_id]
        assert refund.status == "needs_attention", (provider, refund.status, refund.last_error)
        assert refund.provider_status == UNDOCUMENTED[provider], (provider, refund.provider_status)
        assert f"undocumented status {UNDOCUMENTED[provider]!r}" in (refund.last_error or ""), refund.last_error
        reasons = reasons_of(rt, refund_id)
        assert "undocumented status" in reasons[-1], reasons
        assert refund.attempts == 1, reasons
