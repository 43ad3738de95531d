"""The sandbox's timing faults (sandbox/core.py, scenarios 60-62) seen by a plain httpx client with
correctly signed requests from the production adapters: CoinVoyage (no idempotency key) and Cobo
(request_id dedup).

- DELAYED_EXECUTION: the create times out, the ledger has nothing right after, the refund appears
  once `execute_delay_seconds` have passed; a CoinVoyage create sent inside the window makes a second
  pay-order (`created` 2); a Cobo create sent after it is a duplicate.
- TRICKLED_ANSWER: a 1 s read timeout does not bound the call; the create lands after the last byte.
- ANSWER_LOST: a transport error, no HTTP status; the refund was created all the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from providers import get_adapter
from providers.base import RefundSpec, Request
from tests.conftest import SandboxServer
from worker.demo import ADDRESSES

DELAY = 2.0  # execute_delay_seconds: leaves a 1 s window after the client's 1 s timeout
CLIENT_TIMEOUT = 1.0
# Per-byte pauses short enough for a quick test, the bodies long enough (checked) to take over 1 s.
TRICKLE = {"coinvoyage": 0.002, "cobo": 0.003}
DEFAULTS = {"execute_delay_seconds": 3.0, "trickle_interval": 0.25}  # SandboxConfig's, restored after each test
PROVIDERS = ("coinvoyage", "cobo")
CURRENCY = {"cobo": "ETH_USDT", "coinvoyage": "USD"}


@pytest.fixture
def timing(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    sandbox.configure(execute_delay_seconds=DELAY, hang_seconds=3.0)
    try:
        yield sandbox
    finally:
        sandbox.configure(**DEFAULTS)


def make_spec(provider: str, code: int) -> tuple[RefundSpec, str]:
    """A refund whose `sbxNN` marker (and amount cents) pick scenario `code`; also its ledger key (Cobo's
    request_id and CoinVoyage's metadata refund id are both our refund id)."""
    run = f"t{time.time_ns()}"
    amount = Decimal(10) + Decimal(code) / 100
    by_provider: dict[str, dict[str, Any]] = {
        "cobo": {"order_id": f"{run}-sbx{code}"},
        "coinvoyage": {"payorder_id": f"{run}-sbx{code}", "chain_id": 30000000000001},
    }
    fields = by_provider[provider]
    return RefundSpec(f"rfd-{run}", amount, CURRENCY[provider], ADDRESSES[provider], fields), f"rfd-{run}"


class Nonces:
    """Fresh, increasing nonces in the adapter's unit (Cobo: ms; CoinVoyage: s, repeats allowed)."""

    def __init__(self, provider: str) -> None:
        self.provider, self.last = provider, 0

    def __call__(self) -> int:
        if self.provider == "coinvoyage":
            return int(time.time())
        self.last = max(self.last + 1, int(time.time() * 1000))
        return self.last


def create_request(sandbox: SandboxServer, provider: str, spec: RefundSpec, nonce: Callable[[], int]) -> Request:
    return get_adapter(provider).build_submit(spec, sandbox.accounts[f"{provider}-sandbox"], nonce())


def send(req: Request, timeout: httpx.Timeout | float) -> httpx.Response:
    with httpx.Client(timeout=timeout) as client:
        return client.request(req.method, req.url, headers=dict(req.headers), content=req.body)


def entry(sandbox: SandboxServer, provider: str, refund_key: str) -> dict[str, Any] | None:
    found = [e for e in sandbox.ledger()["refunds"] if e["provider"] == provider and e["refund_key"] == refund_key]
    assert len(found) <= 1
    return found[0] if found else None


def wait_for_entry(
    sandbox: SandboxServer, provider: str, refund_key: str, done: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    """Poll the ledger (bounded) until the refund's entry satisfies `done`."""
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        e = entry(sandbox, provider, refund_key)
        if e is not None and done(e):
            return e
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"{provider} {refund_key}: ledger {entry(sandbox, provider, refund_key)} after {within}s")


# --- DELAYED_EXECUTION ------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_delayed_execution_creates_after_the_delay(timing: SandboxServer, provider: str) -> None:
    spec, key = make_spec(provider, 60)
    nonce = Nonces(provider)
    with pytest.raises(httpx.ReadTimeout):
        send(create_request(timing, provider, spec, nonce), CLIENT_TIMEOUT)
    assert entry(timing, provider, key) is None  # received, not executed: a lookup now finds nothing
    e = wait_for_entry(timing, provider, key, lambda e: e["created"] == 1, within=DELAY + 3)
    assert e["create_calls"] == 1 and e["scenario"] == 60
    assert timing.ledger()["counters"][f"{provider}:timing:delayed_execution"] == 1


def test_delayed_execution_coinvoyage_create_inside_the_window_pays_twice(timing: SandboxServer) -> None:
    spec, key = make_spec("coinvoyage", 60)
    nonce = Nonces("coinvoyage")
    with pytest.raises(httpx.ReadTimeout):
        send(create_request(timing, "coinvoyage", spec, nonce), CLIENT_TIMEOUT)
    # A resend before the late execution: CoinVoyage has no idempotency key, so it makes a pay-order now...
    resent = send(create_request(timing, "coinvoyage", spec, nonce), 5.0)
    assert resent.status_code == 200
    first = entry(timing, "coinvoyage", key)
    assert first is not None and first["created"] == 1
    # ...and the delayed create makes another: the double payment a client avoids by waiting its settle time.
    e = wait_for_entry(timing, "coinvoyage", key, lambda e: e["created"] == 2, within=DELAY + 3)
    assert e["create_calls"] == 2


def test_delayed_execution_cobo_create_after_the_delay_is_a_duplicate(timing: SandboxServer) -> None:
    spec, key = make_spec("cobo", 60)
    nonce = Nonces("cobo")
    with pytest.raises(httpx.ReadTimeout):
        send(create_request(timing, "cobo", spec, nonce), CLIENT_TIMEOUT)
    wait_for_entry(timing, "cobo", key, lambda e: e["created"] == 1, within=DELAY + 3)
    again = send(create_request(timing, "cobo", spec, nonce), 5.0)
    assert again.status_code == 400 and again.json()["error_code"] == 12009
    e = entry(timing, "cobo", key)
    assert e is not None and e["created"] == 1 and e["create_calls"] == 2


def test_reset_cancels_a_pending_late_create(timing: SandboxServer) -> None:
    spec, key = make_spec("coinvoyage", 60)
    with pytest.raises(httpx.ReadTimeout):
        send(create_request(timing, "coinvoyage", spec, Nonces("coinvoyage")), CLIENT_TIMEOUT)
    timing.reset()
    time.sleep(DELAY)  # past the moment the late create was due
    assert entry(timing, "coinvoyage", key) is None


# --- TRICKLED_ANSWER --------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_trickled_answer_outlasts_a_read_timeout_and_commits_after_the_body(
    timing: SandboxServer, provider: str
) -> None:
    interval = TRICKLE[provider]
    timing.configure(trickle_interval=interval)
    spec, key = make_spec(provider, 61)
    req = create_request(timing, provider, spec, Nonces(provider))
    per_read = httpx.Timeout(CLIENT_TIMEOUT)  # every read bounded by 1 s; the call as a whole by nothing
    started = time.monotonic()
    with (
        httpx.Client(timeout=per_read) as client,
        client.stream(req.method, req.url, headers=dict(req.headers), content=req.body) as resp,
    ):
        length = int(resp.headers["content-length"])
        assert length * interval > CLIENT_TIMEOUT, "the body must take longer than one read timeout"
        chunks = resp.iter_raw()
        body = next(chunks)
        assert len(body) < length
        assert entry(timing, provider, key) is None  # mid-body: not committed yet
        body += b"".join(chunks)
    elapsed = time.monotonic() - started
    assert resp.status_code in (200, 201) and len(body) == length
    assert elapsed >= length * interval > CLIENT_TIMEOUT  # the server paused before every byte
    e = wait_for_entry(timing, provider, key, lambda e: e["created"] == 1, within=3)
    assert e["create_calls"] == 1
    answer = json.loads(body)
    refund_id = answer["refund_id"] if provider == "cobo" else answer["id"]
    assert refund_id == e["provider_refund_id"]  # the answer named the refund that was then created


def test_trickled_answer_commits_even_when_the_client_hangs_up(timing: SandboxServer) -> None:
    """A client that gives up mid-answer (its own deadline) does not stop the provider's commit."""
    interval = TRICKLE["coinvoyage"]
    timing.configure(trickle_interval=interval)
    spec, key = make_spec("coinvoyage", 61)
    req = create_request(timing, "coinvoyage", spec, Nonces("coinvoyage"))
    with (
        httpx.Client(timeout=CLIENT_TIMEOUT) as client,
        client.stream(req.method, req.url, headers=dict(req.headers), content=req.body) as resp,
    ):
        length = int(resp.headers["content-length"])
        next(resp.iter_raw())  # then hang up
    assert entry(timing, "coinvoyage", key) is None
    wait_for_entry(timing, "coinvoyage", key, lambda e: e["created"] == 1, within=length * interval + 3)


# --- ANSWER_LOST ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_answer_lost_is_a_transport_error_after_the_commit(timing: SandboxServer, provider: str) -> None:
    spec, key = make_spec(provider, 62)
    with pytest.raises(httpx.TransportError) as info:
        send(create_request(timing, provider, spec, Nonces(provider)), 5.0)
    assert isinstance(info.value, httpx.RemoteProtocolError)  # a dropped connection, not a status
    e = entry(timing, provider, key)
    assert e is not None and e["created"] == 1 and e["create_calls"] == 1
