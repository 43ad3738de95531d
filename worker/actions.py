"""The one rule for operator actions, pure (no I/O): may refundq send a refund again, cancel it,
or may an operator resolve it?

A new send for an old refund is allowed only when the provider's own answer proves nothing was
paid for the old one:
- `rejected`: the provider refused the create (a read never concludes rejected);
- `failed`: the provider reported the refund failed, or an operator resolved it as failed after a
  fresh lookup proved it absent or failed at the provider (`refund resolve`);
- `cancelled` before any send claim (claim 0): nothing was ever sent.
Even then, a late answer (what a superseded claim was told, store.late_answers) saying the
provider accepted a send under another record blocks it. `needs_attention` is never retried
directly: the provider may hold it; `refund resolve` first. Everything else is open or paid.

worker/operator.py and worker/batch/retry.py apply it; the README documents it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from providers.base import RefundStatus as S
from worker.models import Refund

RESOLUTION = "resolution"  # refund.detail key of an operator's resolution
# Statuses in which a refund proved it paid nothing (or was never sent).
NOT_PAID = frozenset({S.FAILED.value, S.REJECTED.value, S.CANCELLED.value})
# Late-answer outcomes in which the provider said it did not execute the create.
NOT_EXECUTED = frozenset({"rejected", "auth", "retryable", "rate_limited", "nonce"})


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # why, in words; for a refusal, what to do instead


class Seen(StrEnum):
    """What a fresh lookup at the provider said (worker/operator.py makes it)."""

    FOUND = "found"  # a record of ours, in `status`
    ABSENT = "absent"  # proven absent, the settle time passed
    UNSETTLED = "unsettled"  # nothing found yet, but the provider may still execute a late create
    DUPLICATE = "duplicate"  # more than one record carries our refund
    CONTRADICTED = "contradicted"  # nothing found, yet a late answer says the provider accepted it
    UNSURE = "unsure"  # no answer that tells (error, timeout, undocumented status)
    NOT_ASKED = "not_asked"  # not admitted (breaker open, rate limit): nothing was sent


@dataclass(frozen=True)
class ProviderView:
    seen: Seen
    status: S | None = None  # FOUND: the unified status
    raw_status: str | None = None
    provider_refund_ids: tuple[str, ...] = ()
    text: str = ""  # error or settle detail, for the operator

    def summary(self) -> str:
        match self.seen:
            case Seen.FOUND:
                ids = f" as {', '.join(self.provider_refund_ids)}" if self.provider_refund_ids else ""
                return f"the provider holds it{ids}, status {self.status} ({self.raw_status!r})"
            case Seen.ABSENT:
                return "the provider proved it has no such refund"
            case Seen.DUPLICATE:
                many = self.provider_refund_ids
                return f"the provider holds it {len(many)} times: {', '.join(many)}"
        return f"{self.seen.value}: {self.text}" if self.text else self.seen.value

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seen": self.seen.value}
        if self.status is not None:
            out["status"] = self.status.value
        if self.raw_status is not None:
            out["raw_status"] = self.raw_status
        if self.provider_refund_ids:
            out["provider_refund_ids"] = list(self.provider_refund_ids)
        if self.text:
            out["text"] = self.text
        return out


@dataclass(frozen=True)
class Resolution:
    """What `refund resolve` records: its outcome is operator-resolved, never the provider's own."""

    to: S
    by: str
    note: str
    view: ProviderView
    forced: bool = False

    def record(self) -> dict[str, Any]:
        return {"as": self.to.value, "by": self.by, "note": self.note, "forced": self.forced, **self.view.record()}


def resolve_hint(refund_id: str) -> str:
    return f"resolve it first: refundq refund resolve {refund_id} --as failed|completed --by NAME --note '...'"


def _held(refund: Refund) -> str:
    raw = f" (status {refund.provider_status!r})" if refund.provider_status else ""
    return f"the provider may hold this refund{raw}"


def _late_acceptance(refund: Refund, late: Sequence[Mapping[str, Any]]) -> str | None:
    """A late answer that does not prove "not executed" under a record other than the refund's own."""
    for answer in late:
        if answer.get("error_kind") in NOT_EXECUTED:
            continue
        their_id = answer.get("provider_refund_id")
        if their_id and their_id == refund.provider_refund_id:
            continue  # the same record the refund's status describes
        said = answer.get("raw_status") or answer.get("outcome") or "an answer"
        return f"a superseded send was answered {said!r}{f' as {their_id}' if their_id else ''}"
    return None


def may_send_again(refund: Refund, late: Sequence[Mapping[str, Any]] = ()) -> Verdict:
    """May refundq send a new attempt of this refund? `late`: its late answers (store.late_answers)."""
    status = S(refund.status)
    head = f"{refund.id}: {status.value}"
    if status is S.NEEDS_ATTENTION:
        return Verdict(False, f"{head} — {_held(refund)}; {resolve_hint(refund.id)}")
    if status is S.CANCELLED:
        if refund.claim:
            return Verdict(False, f"{head} after {refund.claim} send claim(s) — the provider may hold it; not retried")
        return Verdict(True, "cancelled before it was ever sent")
    if status is S.COMPLETED:
        return Verdict(False, f"{head} — the provider paid it")
    if status not in (S.REJECTED, S.FAILED):
        return Verdict(False, f"{head} — not final; the worker still follows it at the provider")
    late_said = _late_acceptance(refund, late)
    if late_said is not None:
        return Verdict(False, f"{head} — but {late_said}: the provider may hold it; an operator must check")
    if status is S.REJECTED:
        return Verdict(True, "the provider refused the create")
    resolution = refund.detail.get(RESOLUTION)
    if isinstance(resolution, Mapping):
        if resolution.get("forced"):  # never written for failed today; refuse rather than trust it
            return Verdict(False, f"{head} — resolved by override, not by the provider's answer")
        return Verdict(True, f"resolved as failed by {resolution.get('by')}: {resolution.get('seen')} at the provider")
    return Verdict(True, f"the provider reported it failed ({refund.provider_status!r})")


def provider_keeps_record(refund: Refund) -> bool:
    """Does the provider keep a final record under this attempt's id? It does when it reported the
    refund failed. A provider that deduplicates by refundq's id (Cobo request_id) would then refuse
    a retry under that id as a duplicate forever, so such a retry needs an id of its own; a retry of
    an attempt the provider has no record of (refused, proven absent) reuses the id instead, so a
    late execution of the old one and the retry cannot both be paid."""
    if S(refund.status) is not S.FAILED:
        return False
    resolution = refund.detail.get(RESOLUTION)
    if isinstance(resolution, Mapping):
        return bool(resolution.get("seen") == Seen.FOUND.value)
    return True


def may_cancel(refund: Refund) -> Verdict:
    """Cancel only what was never sent: queued and never claimed for a send."""
    status = S(refund.status)
    if status is not S.QUEUED:
        return Verdict(False, f"{refund.id}: {status.value} — only a queued refund never sent can be cancelled")
    if refund.claim:
        return Verdict(
            False, f"{refund.id}: queued again after {refund.claim} send claim(s) — the provider may hold it"
        )
    return Verdict(True, "queued, never sent")


def may_resolve(refund: Refund, to: S, view: ProviderView, *, force: bool = False) -> Verdict:
    """May an operator close this needs_attention refund as `to`, given a fresh lookup?
    `failed` (which allows a retry) needs the provider's proof: absent, or its record failed;
    never forced. `completed` needs its record completed, or `force` (recorded as an override)."""
    if S(refund.status) is not S.NEEDS_ATTENTION:
        return Verdict(False, f"{refund.id}: {refund.status} — only needs_attention refunds are resolved")
    said = view.summary()
    if to is S.FAILED:
        if force:
            return Verdict(False, f"{refund.id}: --force is refused with --as failed: a retry would rely on it")
        if view.seen is Seen.ABSENT:
            return Verdict(True, said)
        if view.seen is Seen.FOUND and view.status is S.FAILED:
            return Verdict(True, said)
        if view.seen is Seen.FOUND:
            return Verdict(False, f"{refund.id}: {said} — it may be paid; not failed")
        return Verdict(False, f"{refund.id}: {said} — no proof that nothing was paid; not failed")
    if to is S.COMPLETED:
        if view.seen is Seen.FOUND and view.status is S.COMPLETED:
            return Verdict(True, said)
        if force:
            return Verdict(True, f"override by the operator ({said})")
        return Verdict(False, f"{refund.id}: {said} — not completed there; --force records an override")
    return Verdict(False, f"{refund.id}: resolve --as completed or failed, not {to.value}")


def may_follow_up(refund: Refund, follow_ups: Sequence[tuple[str, Decimal]]) -> tuple[Verdict, Decimal]:
    """A follow-up refund pays what a partially completed refund did not: its amount, minus what the
    provider reports it paid, minus what live follow-ups of it already ask (`follow_ups`: (status,
    amount) of each). Only when the provider reported the paid amount. (verdict, remainder)."""
    zero = Decimal(0)
    if S(refund.status) is not S.PARTIALLY_COMPLETED:
        return Verdict(
            False, f"{refund.id} is {refund.status}: only a partially_completed refund has a remainder"
        ), zero
    if refund.settled_amount is None:
        why = "the provider did not report what it paid; look it up and resolve it instead"
        return Verdict(False, f"{refund.id}: {why}"), zero
    asked = sum((amount for status, amount in follow_ups if status not in NOT_PAID), zero)
    remainder = refund.amount - refund.settled_amount - asked
    if remainder <= 0:
        return (
            Verdict(
                False,
                f"ceiling: {refund.id} asked {refund.amount}, the provider paid {refund.settled_amount} and "
                f"follow-ups already ask {asked}: nothing remains to follow up",
            ),
            zero,
        )
    return Verdict(True, f"the provider paid {refund.settled_amount} of {refund.amount}"), remainder
