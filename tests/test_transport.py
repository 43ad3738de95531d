"""The transport's one deadline per call: connect + send + the whole answer (finding 1 of #9:
httpx's timeouts bound each read, so a provider trickling a 200 kept a send alive past its claim)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from providers.base import Request
from tests.conftest import SandboxServer, free_port
from tests.test_sandbox_timing import CLIENT_TIMEOUT, DEFAULTS, Nonces, create_request, make_spec, send
from worker.errors import MaybeSent, NotSent
from worker.transport import ConnectFailed, NoAnswer, Transport

TRICKLED_ANSWER = 61


@pytest.fixture
def trickling(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    sandbox.configure(trickle_interval=0.01)  # a Cobo answer (~500 bytes) then takes about 5 s
    try:
        yield sandbox
    finally:
        sandbox.configure(**DEFAULTS)


def test_a_trickled_answer_is_cut_at_the_call_deadline(trickling: SandboxServer) -> None:
    nonce = Nonces("cobo")
    slow, _ = make_spec("cobo", TRICKLED_ANSWER)
    # Per-read timeouts alone: the same kind of answer arrives whole, long after one read timeout.
    assert send(create_request(trickling, "cobo", slow, nonce), CLIENT_TIMEOUT).status_code == 201
    again, _ = make_spec("cobo", TRICKLED_ANSWER)
    transport = Transport(connect_timeout=0.5, read_timeout=CLIENT_TIMEOUT)  # deadline 1.5 s in all
    try:
        with pytest.raises(NoAnswer) as caught:
            transport.send(create_request(trickling, "cobo", again, nonce))
    finally:
        transport.close()
    assert isinstance(caught.value, MaybeSent) and "deadline" in str(caught.value)


def test_a_normal_answer_passes_whole(sandbox: SandboxServer) -> None:
    spec, _ = make_spec("cobo", 0)
    transport = Transport(connect_timeout=1.0, read_timeout=2.0)
    try:
        response = transport.send(create_request(sandbox, "cobo", spec, Nonces("cobo")))
    finally:
        transport.close()
    assert response.status_code == 201 and response.body.startswith(b"{")


def test_nothing_listening_is_not_sent() -> None:
    transport = Transport(connect_timeout=1.0, read_timeout=1.0)
    try:
        with pytest.raises(ConnectFailed) as caught:
            transport.send(Request("POST", f"http://127.0.0.1:{free_port()}/x", {}, b"{}"))
    finally:
        transport.close()
    assert isinstance(caught.value, NotSent)
