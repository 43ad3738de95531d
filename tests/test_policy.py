"""The outcome policy table (worker/policy.py) against the state machine, and the rules that
make "exactly once" hold whatever a provider answers."""

from __future__ import annotations

import pytest

from providers.base import ErrorKind, ProviderError
from providers.base import RefundStatus as S
from worker.errors import MaybeSent, NotSent
from worker.lane import LaneBusy
from worker.policy import FROM, POLICY, Next, Op, Outcome, When, decide, outcome_of
from worker.states import allowed
from worker.transport import ConnectFailed, NoAnswer


def test_every_operation_has_a_decision_for_every_outcome() -> None:
    missing = [(op, o) for op in Op for o in Outcome if (op, o) not in POLICY]
    assert missing == []
    assert {o.value for o in Outcome} >= {k.value for k in ErrorKind}  # every provider error kind


@pytest.mark.parametrize(("op", "outcome"), sorted(POLICY))
def test_each_fixed_move_is_an_edge_of_the_state_machine(op: Op, outcome: Outcome) -> None:
    decision = POLICY[(op, outcome)]
    if isinstance(decision.to, S):
        for frm in FROM[op]:
            assert allowed(frm, decision.to), f"{op}/{outcome}: {frm} -> {decision.to} is not an edge"
    if decision.to is Next.RESEND:
        assert all(allowed(frm, S.SUBMITTING) for frm in FROM[op])


def test_only_a_proven_absence_resends() -> None:
    resends = [key for key, d in POLICY.items() if d.to is Next.RESEND]
    assert resends == [(Op.LOOKUP, Outcome.ABSENT)]


@pytest.mark.parametrize("outcome", list(Outcome))
def test_a_lookup_never_ends_rejected_or_failed(outcome: Outcome) -> None:
    """A read cannot prove that a request which may have been executed was refused: anything short
    of found / proven absent keeps it unknown (or hands it to an operator)."""
    assert decide(Op.LOOKUP, outcome).to not in (S.REJECTED, S.FAILED, S.QUEUED)


@pytest.mark.parametrize("outcome", [Outcome.NO_ANSWER, Outcome.AMBIGUOUS, Outcome.UNSURE])
def test_a_send_that_may_have_executed_is_looked_up(outcome: Outcome) -> None:
    assert decide(Op.SEND, outcome).to is S.UNKNOWN


def test_not_sent_spends_no_attempt_and_waits_its_own_wait() -> None:
    decision = decide(Op.SEND, Outcome.NOT_SENT)
    assert decision.to is S.QUEUED and not decision.counted and decision.when is When.WAIT


@pytest.mark.parametrize("outcome", [Outcome.DUPLICATE, Outcome.UNMAPPED])
@pytest.mark.parametrize("op", list(Op))
def test_duplicates_and_undocumented_statuses_go_to_an_operator(op: Op, outcome: Outcome) -> None:
    assert decide(op, outcome).to is S.NEEDS_ATTENTION


def test_reconciliation_never_sends() -> None:
    assert all(
        d.to is not Next.RESEND and d.to is not Next.ADOPT for (op, _), d in POLICY.items() if op is Op.RECONCILE
    )


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (LaneBusy("k", 1.0), Outcome.NOT_SENT),
        (ConnectFailed("ConnectError: not sent"), Outcome.CONNECT_FAILED),
        (NoAnswer("ReadTimeout"), Outcome.NO_ANSWER),
        (ProviderError(ErrorKind.UNSURE, "can't tell"), Outcome.UNSURE),
        (ProviderError(ErrorKind.AMBIGUOUS, "5xx"), Outcome.AMBIGUOUS),
    ],
)
def test_exceptions_map_to_their_family(exc: BaseException, outcome: Outcome) -> None:
    assert outcome_of(exc) is outcome
    assert isinstance(exc, NotSent | MaybeSent | ProviderError)


def test_a_bug_is_not_an_outcome() -> None:
    with pytest.raises(TypeError):
        outcome_of(KeyError("x"))
