"""Operator actions on one refund: resolve, retry, cancel (`refundq refund resolve|retry|cancel`).

Each applies the one rule of worker/actions.py and writes an event naming who and why, taken
or refused. A retry is a new refund row (its own id, key `<key>#retryN`, `retry_of` = the old
one) whose `detail.request_id_of` holds the id the provider knows the old attempt by: a provider
that deduplicates by refundq's id (Cobo `request_id`) is sent that id again, so it can never pay
the same refund twice even if the rule's evidence was wrong. Not when the provider keeps a failed
record under that id (actions.provider_keeps_record): it would refuse the retry forever.
worker/batch/retry.py uses the same helpers per page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import Connection

from providers.base import ProviderError
from providers.base import RefundStatus as S
from worker import ceiling, store
from worker.actions import (
    RESOLUTION,
    ProviderView,
    Resolution,
    Seen,
    Verdict,
    may_cancel,
    may_follow_up,
    may_resolve,
    may_send_again,
    provider_keeps_record,
)
from worker.engine import REQUEST_ID_OF, Engine
from worker.errors import MaybeSent, NotSent
from worker.models import Refund, refund_table
from worker.producer import publish_submit, refund_values
from worker.runtime import Runtime
from worker.text import escape_controls
from worker.validation import ValidationFailed, check

log = structlog.get_logger("refundq.operator")
MAX_NAME = 100
MAX_NOTE = 1000


class ActionRefused(Exception):
    """The rule refused the action; nothing was sent or changed (an event records the refusal)."""


@dataclass(frozen=True)
class Done:
    refund_id: str  # the refund acted on (for a retry: the new one)
    reason: str
    view: ProviderView | None = None  # resolve: what the provider said


def operator_text(value: str, what: str, limit: int) -> str:
    """--by / --note: required, one line, bounded (it goes into events verbatim)."""
    text = value.strip()
    if not text:
        raise ValueError(f"{what}: must not be empty")
    if len(text) > limit:
        raise ValueError(f"{what}: at most {limit} characters")
    if escape_controls(text) != text:
        raise ValueError(f"{what}: must not hold control characters")
    return text


def _load(conn: Connection, refund_id: str) -> Refund:
    refund = store.get_refund(conn, refund_id) or store.get_by_key(conn, refund_id)
    if refund is None:
        raise LookupError(f"no refund with id or key {refund_id!r}")
    return refund


def _refused(rt: Runtime, refund: Refund, action: str, by: str, verdict: Verdict, response: Any = None) -> None:
    with rt.engine.begin() as conn:
        store.add_event(conn, refund.id, S(refund.status), f"{action} by {by} refused: {verdict.reason}", response)
    log.info("operator_refused", refund_id=refund.id, action=action, by=by, reason=verdict.reason)
    raise ActionRefused(verdict.reason)


def _move(rt: Runtime, refund: Refund, to: S, meanwhile: str, **kwargs: Any) -> None:
    """One guarded transition from the status the rule judged; ActionRefused when it moved since."""
    try:
        with rt.engine.begin() as conn:
            store.transition(conn, refund.id, S(refund.status), to, **kwargs)
    except store.LostRace:
        raise ActionRefused(f"{refund.id}: {meanwhile}") from None


def _why(verdict: Verdict, note: str | None) -> str:
    return verdict.reason if not note else f"{verdict.reason}; note: {note}"


# --- retry ---------------------------------------------------------------------------------------


def retry_key(key: str) -> str:
    """`k` -> `k#retry1`, `k#retry1` -> `k#retry2`: a new attempt has a key of its own."""
    base, sep, n = key.rpartition("#retry")
    if sep and n.isdigit():
        return f"{base}#retry{int(n) + 1}"
    return f"{key}#retry1"


def judge_retry(refund: Refund, late: Sequence[Mapping[str, Any]], retried: str | None) -> Verdict:
    if retried is not None:
        return Verdict(False, f"{refund.id}: already retried as {retried}")
    return may_send_again(refund, late)


def _request_like(old: Refund, key: str, amount: Decimal) -> dict[str, Any]:
    """A producer's request for a new refund of the same payment to the same destination."""
    return {
        "idempotency_key": key,
        "provider": old.provider,
        "account": old.account,
        "amount": format(amount, "f"),
        **({} if old.paid_amount is None else {"paid_amount": format(old.paid_amount, "f")}),
        "currency": old.currency,
        "destination": old.destination,
        "fields": old.fields,
    }


def retry_values(old: Refund, rt: Runtime, *, batch_id: str | None = None) -> dict[str, Any]:
    """The new attempt's row, validated as a producer's request is (ValidationFailed)."""
    request = check(_request_like(old, retry_key(old.idempotency_key), old.amount), rt.accounts)
    values = refund_values(request, rt, batch_id=batch_id)
    values["retry_of"] = old.id
    # The id the provider knows the old attempt by, kept through retries of retries
    # (RefundSpec.original_id), unless the provider keeps a failed record under it.
    if not provider_keeps_record(old):
        values["detail"] = {REQUEST_ID_OF: old.detail.get(REQUEST_ID_OF) or old.id}
    return values


def hand_over(conn: Connection, old: Refund, new_id: str, text: str) -> bool:
    """The old row gives way to its retry (guarded on the judged version) and says so in an event."""
    if not store.hand_over(conn, old):
        return False
    store.add_event(conn, old.id, S(old.status), f"retried as {new_id} {text}")
    return True


def retry(rt: Runtime, refund_id: str, *, by: str, note: str | None = None, publish: bool = True) -> Done:
    """A new attempt of one refund, if the rule allows it; published for the worker at once."""
    by = operator_text(by, "--by", MAX_NAME)
    note = operator_text(note, "--note", MAX_NOTE) if note else None
    with rt.engine.begin() as conn:
        old = _load(conn, refund_id)
        verdict = judge_retry(old, store.late_answers(conn, old.id), store.retried_as(conn, old.id))
        values: dict[str, Any] | None = None
        if verdict.allowed:
            try:
                values = retry_values(old, rt)
            except ValidationFailed as exc:
                verdict = Verdict(False, f"{old.id}: the retry would be invalid: {exc}")
        if values is not None and (refused := ceiling.admit(conn, [ceiling.claim_of(values)])):
            verdict, values = Verdict(False, f"{old.id}: the retry is refused: {refused[0][1]}"), None
        if values is not None:
            why = _why(verdict, note)
            if not hand_over(conn, old, values["id"], f"by {by}: {why}"):
                raise ActionRefused(f"{old.id}: it changed meanwhile; look again")
            store.insert_refund(conn, values, reason=f"retry of {old.id} by {by}: {why}")
    if values is None:
        _refused(rt, old, "retry", by, verdict)
    assert values is not None
    if publish:
        publish_submit(values["id"], rt)
    log.info("operator_retry", refund_id=old.id, retry_id=values["id"], by=by)
    return Done(values["id"], verdict.reason)


# --- follow-up -----------------------------------------------------------------------------------


def follow_up(rt: Runtime, refund_id: str, *, by: str, note: str | None = None, publish: bool = True) -> Done:
    """A new refund for what a partially completed one did not pay (actions.may_follow_up), linked
    by `follow_up_of`, within its payment's ceiling. Judged under the payment's lock, so two
    operators at once cannot both follow up the same remainder. The old refund is final from then
    on (no more polls): the follow-up carries the rest."""
    by = operator_text(by, "--by", MAX_NAME)
    note = operator_text(note, "--note", MAX_NOTE) if note else None
    with rt.engine.begin() as conn:
        old = _load(conn, refund_id)
        if old.payment_key is not None:
            ceiling.lock(conn, {(old.account, old.payment_key): (old.currency, old.paid_amount)})
        earlier = store.follow_ups(conn, old.id)
        verdict, remainder = may_follow_up(old, earlier)
        values: dict[str, Any] | None = None
        if verdict.allowed:
            try:
                values = _follow_up_values(old, remainder, len(earlier) + 1, rt)
            except ValidationFailed as exc:
                verdict = Verdict(False, f"{old.id}: the follow-up would be invalid: {exc}")
        if values is not None and (refused := ceiling.admit(conn, [ceiling.claim_of(values)])):
            verdict, values = Verdict(False, f"{old.id}: the follow-up is refused: {refused[0][1]}"), None
        if values is not None:
            # Final from here: never polled again, and the claim bumped so a poll in flight changes nothing.
            final = {"next_action_at": None, "claim": refund_table.c.claim + 1}
            if not store.touch(conn, old.id, S.PARTIALLY_COMPLETED, final, claim=old.claim):
                raise ActionRefused(f"{old.id}: it changed meanwhile; look again")
            why = _why(verdict, note)
            store.insert_refund(conn, values, reason=f"follow-up of {old.id} by {by}: {why}")
            store.add_event(conn, old.id, S(old.status), f"follow-up {values['id']} for {remainder} by {by}: {why}")
    if values is None:
        _refused(rt, old, "follow-up", by, verdict)
    assert values is not None
    if publish:
        publish_submit(values["id"], rt)
    log.info("operator_follow_up", refund_id=old.id, follow_up_id=values["id"], by=by, amount=str(remainder))
    return Done(values["id"], verdict.reason)


def _follow_up_values(old: Refund, amount: Decimal, n: int, rt: Runtime) -> dict[str, Any]:
    request = check(_request_like(old, f"follow-up:{old.id}:{n}", amount), rt.accounts)
    return {**refund_values(request, rt, batch_id=old.batch_id), "follow_up_of": old.id}


# --- cancel --------------------------------------------------------------------------------------


def cancel(rt: Runtime, refund_id: str, *, by: str, note: str | None = None) -> Done:
    """queued -> cancelled, only while it was never claimed for a send (guarded by claim 0)."""
    by = operator_text(by, "--by", MAX_NAME)
    note = operator_text(note, "--note", MAX_NOTE) if note else None
    with rt.engine.connect() as conn:
        refund = _load(conn, refund_id)
    verdict = may_cancel(refund)
    if not verdict.allowed:
        _refused(rt, refund, "cancel", by, verdict)
    _move(
        rt,
        refund,
        S.CANCELLED,
        "a worker claimed it meanwhile; not cancelled",
        reason=f"cancelled by {by}: {_why(verdict, note)}",
        claim=refund.claim,
        values={"next_action_at": None},
    )
    log.info("operator_cancel", refund_id=refund.id, by=by)
    return Done(refund.id, verdict.reason)


# --- resolve -------------------------------------------------------------------------------------


def look(rt: Runtime, refund: Refund) -> ProviderView:
    """Ask the provider now (engine lookup, admitted like every call) and say what it proves."""
    try:
        found = Engine(rt).look_up(refund)
    except NotSent as exc:
        return ProviderView(Seen.NOT_ASKED, text=f"not asked: {exc}; try again in {exc.wait:.0f}s")
    except MaybeSent as exc:
        return ProviderView(Seen.UNSURE, text=f"no answer: {exc}")
    except ProviderError as exc:
        return ProviderView(Seen.UNSURE, raw_status=exc.raw_status, text=f"{exc.kind.value}: {exc}")
    with rt.engine.connect() as conn:
        late = store.late_answers(conn, refund.id)
        settled = store.is_settled(conn, refund.id)
    late_ids = {str(a["provider_refund_id"]) for a in late if a.get("provider_refund_id")}
    if found is None:
        if late_ids or any(a.get("outcome") == "answer" for a in late):
            return ProviderView(Seen.CONTRADICTED, text="a superseded send was accepted, yet the lookup finds nothing")
        if not settled:
            return ProviderView(Seen.UNSETTLED, text=f"nothing found yet; settling until {refund.settle_until}")
        return ProviderView(Seen.ABSENT)
    named = {found.provider_refund_id or "", *found.others, *late_ids} - {""}
    ids = tuple(sorted(named))
    if len(ids) > 1:
        return ProviderView(Seen.DUPLICATE, provider_refund_ids=ids)
    return ProviderView(Seen.FOUND, status=found.status, raw_status=found.raw_status, provider_refund_ids=ids)


def resolve(rt: Runtime, refund_id: str, to: S, *, by: str, note: str, force: bool = False) -> Done:
    """needs_attention -> completed|failed after a fresh lookup, if the rule allows it. The outcome
    is marked operator-resolved (event and detail.resolution, with what the provider said)."""
    by = operator_text(by, "--by", MAX_NAME)
    note = operator_text(note, "--note", MAX_NOTE)
    with rt.engine.connect() as conn:
        refund = _load(conn, refund_id)
    if S(refund.status) is not S.NEEDS_ATTENTION:  # no provider call for what cannot be resolved
        _refused(rt, refund, f"resolve --as {to.value}", by, may_resolve(refund, to, ProviderView(Seen.NOT_ASKED)))
    view = look(rt, refund)
    verdict = may_resolve(refund, to, view, force=force)
    if not verdict.allowed:
        _refused(rt, refund, f"resolve --as {to.value}", by, verdict, {"provider": view.record()})
    resolution = Resolution(to, by, note, view, forced=force and not (view.seen is Seen.FOUND and view.status is to))
    values: dict[str, Any] = {"next_action_at": None, "detail": {**refund.detail, RESOLUTION: resolution.record()}}
    if view.seen is Seen.FOUND and view.provider_refund_ids and not refund.provider_refund_id:
        values["provider_refund_id"] = view.provider_refund_ids[0]
    override = " (override)" if resolution.forced else ""
    _move(
        rt,
        refund,
        to,
        "it changed meanwhile; look again",
        reason=f"operator-resolved as {to.value}{override} by {by}: {note} (provider: {view.summary()})",
        provider_status=view.raw_status if view.seen is Seen.FOUND else None,
        response={RESOLUTION: resolution.record()},
        values=values,
    )
    log.info("operator_resolve", refund_id=refund.id, to=to.value, by=by, forced=resolution.forced)
    return Done(refund.id, verdict.reason, view)
