"""The refund lifecycle: which status may follow which. Pure; the store enforces it."""

from __future__ import annotations

from providers.base import RefundStatus as S

# Statuses a provider can report once it has the refund.
PROVIDER_REPORTED = frozenset(
    {S.PENDING, S.PROCESSING, S.ACTION_REQUIRED, S.PARTIALLY_COMPLETED, S.COMPLETED, S.FAILED}
)
TERMINAL = frozenset({S.COMPLETED, S.FAILED, S.REJECTED, S.NEEDS_ATTENTION, S.CANCELLED})
# Statuses the dispatcher polls at the provider.
POLLED = frozenset({S.PENDING, S.PROCESSING, S.ACTION_REQUIRED, S.PARTIALLY_COMPLETED})

_OPEN_AT_PROVIDER = PROVIDER_REPORTED | {S.NEEDS_ATTENTION}

EDGES: dict[S, frozenset[S]] = {
    # A person decides (`refundq refund approve` / `deny`); nothing else moves it, and the
    # dispatcher never claims it (not in store.DUE_STATUSES).
    S.AWAITING_APPROVAL: frozenset({S.QUEUED, S.CANCELLED}),
    # -> awaiting_approval: the send-time gate (Engine.submit) for rows stored queued above the
    # threshold (a batch import, or a threshold lowered after the refund was stored).
    S.QUEUED: frozenset({S.SUBMITTING, S.CANCELLED, S.NEEDS_ATTENTION, S.REJECTED, S.AWAITING_APPROVAL}),
    # After a send: accepted (any provider status), refused, failed before send (back to
    # queued), or ambiguous (unknown).
    S.SUBMITTING: _OPEN_AT_PROVIDER | {S.QUEUED, S.UNKNOWN, S.REJECTED},
    # A lookup adopts what the provider has, or proves it absent and re-sends (submitting). Never
    # rejected: a read cannot prove that a request which may have been executed was refused.
    S.UNKNOWN: _OPEN_AT_PROVIDER | {S.SUBMITTING},
    S.PENDING: _OPEN_AT_PROVIDER - {S.PENDING},
    S.PROCESSING: _OPEN_AT_PROVIDER - {S.PROCESSING},
    S.ACTION_REQUIRED: _OPEN_AT_PROVIDER - {S.ACTION_REQUIRED},
    S.PARTIALLY_COMPLETED: frozenset({S.PROCESSING, S.COMPLETED, S.FAILED, S.NEEDS_ATTENTION}),
    # Terminal for automation; reconciliation may still flag drift on a finished refund.
    S.COMPLETED: frozenset({S.NEEDS_ATTENTION}),
    S.FAILED: frozenset({S.NEEDS_ATTENTION}),
    S.REJECTED: frozenset(),
    # Only an operator leaves it (`refundq refund resolve`, worker/operator.py), after a fresh
    # lookup at the provider; automation never does.
    S.NEEDS_ATTENTION: frozenset({S.COMPLETED, S.FAILED}),
    S.CANCELLED: frozenset(),
}


def allowed(frm: S, to: S) -> bool:
    return to in EDGES[frm]


def is_terminal(status: S) -> bool:
    return status in TERMINAL
