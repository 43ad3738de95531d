"""The outcome policy, as data: after each operation on a refund and what came of it, what
happens next. The engine executes this table and nothing else decides; tests/test_policy.py
checks every row against the state machine's edges and that no (operation, outcome) is missing.

Operations: SEND (from submitting, under a claim), LOOKUP (from unknown: does the provider have
it?), POLL (from a polled status), RECONCILE (a finished or open refund re-read).
Outcomes: the two "no answer" families of worker/errors.py, the provider's error kinds, and
what an answer said (a status, absent, a duplicate).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from providers.base import ErrorKind, ProviderError
from providers.base import RefundStatus as S
from worker.errors import MaybeSent, NotSent
from worker.states import POLLED
from worker.transport import ConnectFailed


class Op(StrEnum):
    SEND = "send"
    LOOKUP = "lookup"
    POLL = "poll"
    RECONCILE = "reconcile"


class Outcome(StrEnum):
    NOT_SENT = "not_sent"  # lane busy, throttled, circuit open, no nonce yet: nothing left
    CONNECT_FAILED = "connect_failed"  # certainly not sent, but the provider is unreachable
    NO_ANSWER = "no_answer"  # sent, no complete answer within the call deadline
    ANSWER = "answer"  # the provider reports our refund in a status
    ABSENT = "absent"  # a lookup proved the provider has no refund of ours
    DUPLICATE = "duplicate"  # more than one provider record carries our refund
    # The provider answered with an error of this kind:
    RETRYABLE = ErrorKind.RETRYABLE.value
    RATE_LIMITED = ErrorKind.RATE_LIMITED.value
    NONCE = ErrorKind.NONCE.value
    AUTH = ErrorKind.AUTH.value
    REJECTED = ErrorKind.REJECTED.value
    AMBIGUOUS = ErrorKind.AMBIGUOUS.value
    UNMAPPED = ErrorKind.UNMAPPED.value
    UNSURE = ErrorKind.UNSURE.value


class Next(StrEnum):
    STAY = "stay"  # keep the status, act again later
    ADOPT = "adopt"  # take the status the provider reports (if the state machine allows it)
    RESEND = "resend"  # claim and send again (only after the settle time: store.settled)


class When(StrEnum):
    WAIT = "wait"  # after the NotSent error's own wait (lane, bucket, breaker), jittered
    BACKOFF = "backoff"  # capped exponential with jitter, raised to any Retry-After
    SOON = "soon"  # a lookup in about a second (absent is believed only after settling anyway)
    POLL = "poll"  # the poll schedule of the new status
    NEVER = "never"  # terminal: nothing more is scheduled


@dataclass(frozen=True)
class Decision:
    to: S | Next
    counted: bool = True  # SEND: the claim counts as an attempt (False: given back)
    penalty: bool = False  # drain the account's rate bucket for the Retry-After
    when: When = When.BACKOFF
    reason: str = ""


_attention = Decision(S.NEEDS_ATTENTION, when=When.NEVER)
_wait = Decision(Next.STAY, counted=False, when=When.WAIT, reason="not sent")
_retry = Decision(Next.STAY, reason="read failed")
_unknown = Decision(S.UNKNOWN, when=When.SOON, reason="outcome unknown, lookup before any resend")

POLICY: dict[tuple[Op, Outcome], Decision] = {
    # --- send (from submitting) ---
    (Op.SEND, Outcome.NOT_SENT): Decision(S.QUEUED, counted=False, when=When.WAIT, reason="not sent"),
    (Op.SEND, Outcome.CONNECT_FAILED): Decision(S.QUEUED, reason="not sent"),
    (Op.SEND, Outcome.NO_ANSWER): _unknown,
    (Op.SEND, Outcome.ANSWER): Decision(Next.ADOPT, when=When.POLL, reason="accepted by the provider"),
    (Op.SEND, Outcome.ABSENT): _attention,  # a create answer never says absent: contradiction
    (Op.SEND, Outcome.DUPLICATE): Decision(S.NEEDS_ATTENTION, when=When.NEVER, reason="duplicate at the provider"),
    (Op.SEND, Outcome.RETRYABLE): Decision(S.QUEUED, reason="not executed"),
    (Op.SEND, Outcome.RATE_LIMITED): Decision(S.QUEUED, penalty=True, reason="rate limited"),
    (Op.SEND, Outcome.NONCE): Decision(S.QUEUED, reason="nonce refused after re-signing"),
    (Op.SEND, Outcome.AUTH): Decision(
        S.REJECTED, when=When.NEVER, reason="provider refused our credentials (check the account's keys)"
    ),
    (Op.SEND, Outcome.REJECTED): Decision(S.REJECTED, when=When.NEVER, reason="refused"),
    (Op.SEND, Outcome.AMBIGUOUS): _unknown,
    (Op.SEND, Outcome.UNSURE): _unknown,
    (Op.SEND, Outcome.UNMAPPED): _attention,
    # --- lookup (from unknown): only a proven, settled absence allows a resend ---
    (Op.LOOKUP, Outcome.NOT_SENT): _wait,
    (Op.LOOKUP, Outcome.CONNECT_FAILED): _retry,
    (Op.LOOKUP, Outcome.NO_ANSWER): _retry,
    (Op.LOOKUP, Outcome.ANSWER): Decision(Next.ADOPT, when=When.POLL, reason="lookup found the refund at the provider"),
    (Op.LOOKUP, Outcome.ABSENT): Decision(Next.RESEND, reason="lookup: the provider has no such refund"),
    (Op.LOOKUP, Outcome.DUPLICATE): Decision(
        S.NEEDS_ATTENTION, when=When.NEVER, reason="lookup found the refund more than once"
    ),
    (Op.LOOKUP, Outcome.RETRYABLE): _retry,
    (Op.LOOKUP, Outcome.RATE_LIMITED): Decision(Next.STAY, penalty=True, reason="read failed"),
    (Op.LOOKUP, Outcome.NONCE): _retry,
    (Op.LOOKUP, Outcome.AUTH): _retry,  # fixing the account's keys resumes it; deadline otherwise
    (Op.LOOKUP, Outcome.REJECTED): _retry,  # a read cannot prove a refund refused: never rejected here
    (Op.LOOKUP, Outcome.AMBIGUOUS): _retry,
    (Op.LOOKUP, Outcome.UNSURE): _retry,
    (Op.LOOKUP, Outcome.UNMAPPED): _attention,
    # --- poll (from pending / processing / action_required / partially_completed) ---
    (Op.POLL, Outcome.NOT_SENT): _wait,
    (Op.POLL, Outcome.CONNECT_FAILED): _retry,
    (Op.POLL, Outcome.NO_ANSWER): _retry,
    (Op.POLL, Outcome.ANSWER): Decision(Next.ADOPT, when=When.POLL, reason="provider status"),
    (Op.POLL, Outcome.ABSENT): _attention,  # the provider no longer knows an accepted refund
    (Op.POLL, Outcome.DUPLICATE): Decision(S.NEEDS_ATTENTION, when=When.NEVER, reason="duplicate at the provider"),
    (Op.POLL, Outcome.RETRYABLE): _retry,
    (Op.POLL, Outcome.RATE_LIMITED): Decision(Next.STAY, penalty=True, reason="read failed"),
    (Op.POLL, Outcome.NONCE): _retry,
    (Op.POLL, Outcome.AUTH): _retry,
    (Op.POLL, Outcome.REJECTED): _attention,  # e.g. "no refund for this request_id" after acceptance
    (Op.POLL, Outcome.AMBIGUOUS): _retry,
    (Op.POLL, Outcome.UNSURE): _retry,
    (Op.POLL, Outcome.UNMAPPED): _attention,
    # --- reconcile (open or finished refunds; reads only, never a send) ---
    (Op.RECONCILE, Outcome.NOT_SENT): Decision(Next.STAY, when=When.NEVER, reason="not read"),
    (Op.RECONCILE, Outcome.CONNECT_FAILED): Decision(Next.STAY, when=When.NEVER, reason="not read"),
    (Op.RECONCILE, Outcome.NO_ANSWER): Decision(Next.STAY, when=When.NEVER, reason="not read"),
    # An answer is compared (status, amount, ...) and only a difference moves it: see reconcile.py.
    (Op.RECONCILE, Outcome.ANSWER): Decision(Next.STAY, when=When.NEVER, reason="compared"),
    (Op.RECONCILE, Outcome.ABSENT): _attention,
    (Op.RECONCILE, Outcome.DUPLICATE): _attention,
    (Op.RECONCILE, Outcome.RETRYABLE): Decision(Next.STAY, when=When.NEVER, reason="read failed"),
    (Op.RECONCILE, Outcome.RATE_LIMITED): Decision(Next.STAY, penalty=True, when=When.NEVER, reason="read failed"),
    (Op.RECONCILE, Outcome.NONCE): Decision(Next.STAY, when=When.NEVER, reason="read failed"),
    (Op.RECONCILE, Outcome.AUTH): Decision(Next.STAY, when=When.NEVER, reason="read failed"),
    # A finished refund the provider no longer knows or shows in an undocumented state: an operator.
    (Op.RECONCILE, Outcome.REJECTED): _attention,
    (Op.RECONCILE, Outcome.AMBIGUOUS): Decision(Next.STAY, when=When.NEVER, reason="read failed"),
    (Op.RECONCILE, Outcome.UNSURE): Decision(Next.STAY, when=When.NEVER, reason="read failed"),
    (Op.RECONCILE, Outcome.UNMAPPED): _attention,
}

#: the statuses each operation starts from
FROM: dict[Op, frozenset[S]] = {
    Op.SEND: frozenset({S.SUBMITTING}),
    Op.LOOKUP: frozenset({S.UNKNOWN}),
    Op.POLL: POLLED,
    Op.RECONCILE: POLLED | {S.COMPLETED, S.FAILED},
}


def decide(op: Op, outcome: Outcome) -> Decision:
    return POLICY[(op, outcome)]


def outcome_of(exc: BaseException) -> Outcome:
    """The outcome an exception stands for. Anything else is a bug and propagates."""
    if isinstance(exc, ConnectFailed):
        return Outcome.CONNECT_FAILED
    if isinstance(exc, NotSent):
        return Outcome.NOT_SENT
    if isinstance(exc, MaybeSent):
        return Outcome.NO_ANSWER
    if isinstance(exc, ProviderError):
        return Outcome(exc.kind.value)
    raise TypeError(f"not a provider-call outcome: {type(exc).__name__}")
