"""What the tasks do: submit (claim, nonce, sign, send, classify), resolve `unknown` refunds by
lookup before any resend, poll provider status, and dispatch due rows.

Every status change goes through `store.transition` (guarded UPDATE + event), and every write
is guarded by the claim (fencing token) the refund had when it was loaded: a worker whose claim
was taken over changes nothing, and what its provider told it is kept as a late-answer event.
What happens after each outcome is the table in `worker/policy.py`; this module executes it.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

import structlog

from config.account_policy import needs_approval
from config.accounts import Account
from config.logging import redact
from providers import get_adapter
from providers.base import (
    Adapter,
    ErrorKind,
    LookupNextPage,
    NoncePolicy,
    ProviderError,
    RefundSpec,
    RefundStatus,
    Request,
    Response,
    StatusResult,
    json_or_none,
)
from worker import ceiling, store
from worker.approval import is_approved
from worker.breaker import Pass
from worker.errors import MaybeSent, NotSent
from worker.models import Refund, refund_table, utcnow
from worker.nonces import key_id
from worker.policy import Decision, Next, Op, Outcome, When, decide, outcome_of
from worker.ratelimit import Throttled
from worker.runtime import Runtime
from worker.states import POLLED, allowed, is_terminal
from worker.transport import ConnectFailed

log = structlog.get_logger("refundq.engine")
S = RefundStatus
NONCE_RESIGNS = 3  # a refused nonce means "not executed": re-sign at once, without counting an attempt
LOOKUP_SOON = 1.0  # seconds until the first lookup after an ambiguous send
# refund.detail key of a retry: the first attempt's id, which a provider that deduplicates by
# refundq's id (Cobo request_id) is sent again (RefundSpec.original_id).
REQUEST_ID_OF = "request_id_of"


def spec_of(refund: Refund) -> RefundSpec:
    return RefundSpec(
        refund_id=refund.id,
        amount=refund.amount,
        currency=refund.currency,
        destination=refund.destination,
        fields=refund.fields,
        provider_refund_id=refund.provider_refund_id,
        created_at=refund.created_at,
        original_id=refund.detail.get(REQUEST_ID_OF) or None,
    )


def backoff(n: int, initial: float, cap: float) -> float:
    """Capped exponential with jitter in [50 %, 100 %]: spread out, never longer than the cap."""
    return min(cap, initial * 2 ** min(n, 30)) * random.uniform(0.5, 1.0)


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None


def integrity_problems(refund: Refund, result: StatusResult) -> list[str]:
    """Where the provider's answer contradicts what was requested, each as "field: ours != theirs".
    Only what the provider reports is compared (StatusResult.detail "amount", "destination",
    "currency"; the provider refund id once we hold one); amounts as Decimal."""
    problems: list[str] = []
    detail = result.detail or {}
    if detail.get("amount") not in (None, ""):
        theirs = _decimal(detail["amount"])
        if theirs is None or theirs != refund.amount:
            problems.append(f"amount: requested {format(refund.amount, 'f')}, provider reports {detail['amount']}")
    reported = detail.get("destination")
    if isinstance(reported, str) and reported:
        ours = refund.destination
        same = reported.lower() == ours.lower() if ours.startswith("0x") else reported == ours
        if not same:
            problems.append(f"destination: requested {ours}, provider reports {reported}")
    currency = detail.get("currency")
    if isinstance(currency, str) and currency and currency.upper() != refund.currency.upper():
        problems.append(f"currency: requested {refund.currency}, provider reports {currency}")
    ours_id, their_id = refund.provider_refund_id, result.provider_refund_id
    if ours_id and their_id and their_id != ours_id:
        problems.append(f"provider refund id: ours {ours_id}, provider reports {their_id}")
    return problems


def integrity_record(refund: Refund, result: StatusResult, problems: list[str]) -> dict[str, Any]:
    """Both versions, for the event and refund.detail."""
    return {
        "problems": problems,
        "ours": {
            "status": refund.status,
            "amount": format(refund.amount, "f"),
            "destination": refund.destination,
            "currency": refund.currency,
            "provider_refund_id": refund.provider_refund_id,
        },
        "provider": {
            "status": result.status.value,
            "raw_status": result.raw_status,
            "provider_refund_id": result.provider_refund_id,
            **{k: str(v) for k, v in (result.detail or {}).items() if k in ("amount", "destination", "currency")},
        },
    }


def response_record(response: Response) -> dict[str, Any]:
    body = json_or_none(response.body)
    return {
        "http_status": response.status_code,
        "body": body if body is not None else redact(response.body[:1000].decode("utf-8", "replace")),
    }


@contextmanager
def _bound(refund: Refund) -> Iterator[None]:
    with structlog.contextvars.bound_contextvars(
        refund_id=refund.id, provider=refund.provider, account=refund.account, attempt=refund.attempts
    ):
        yield


class Engine:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.settings

    # --- helpers ---------------------------------------------------------------------------------

    def _load(self, refund_id: str) -> Refund | None:
        with self.rt.engine.connect() as conn:
            return store.get_refund(conn, refund_id)

    def _parts(self, refund: Refund) -> tuple[Adapter, Account, RefundSpec]:
        return get_adapter(refund.provider), self.rt.accounts[refund.account], spec_of(refund)

    def settle_seconds(self, account: Account) -> float:
        """How long after an ambiguous send a lookup's "absent" is not yet believed."""
        return float(account.option("settle_seconds", get_adapter(account.provider).settle_seconds))

    def _move(self, refund: Refund, to: S, *, answer: Mapping[str, Any] | None = None, **kwargs: Any) -> bool:
        """Guarded transition under the refund's claim, in its own transaction. False when the
        row moved on or the claim was taken over; then, for a send, `answer` (what the provider
        told us) is kept as a late-answer event for the next lookup and for reconciliation."""
        frm = S(refund.status)
        try:
            with self.rt.engine.begin() as conn:
                store.transition(conn, refund.id, frm, to, claim=refund.claim, **kwargs)
        except store.LostRace as exc:
            log.info("lost_race", detail=str(exc))
            if answer is not None and frm is S.SUBMITTING:
                with self.rt.engine.begin() as conn:
                    store.add_late_answer(conn, refund.id, f"claim {refund.claim} was taken over", answer)
                log.warning("late_answer", claim=refund.claim, **{k: v for k, v in answer.items() if k != "response"})
            return False
        log.info("status", frm=frm.value, to=to.value, reason=kwargs.get("reason"))
        return True

    def _attention(
        self,
        refund: Refund,
        reason: str,
        *,
        response: Response | None = None,
        provider_status: str | None = None,
        answer: Mapping[str, Any] | None = None,
        **values: Any,
    ) -> str:
        """Hand the refund to an operator: needs_attention, nothing more scheduled."""
        self._move(
            refund,
            S.NEEDS_ATTENTION,
            reason=reason,
            provider_status=provider_status,
            response=None if response is None else response_record(response),
            answer=answer,
            values={"next_action_at": None, **values},
        )
        return S.NEEDS_ATTENTION.value

    def _later(self, refund: Refund, seconds: float, error: str | None = None, **values: Any) -> bool:
        """Keep the status, act again `seconds` from now (database clock). False if it moved."""
        changes: dict[str, Any] = {"next_action_at": timedelta(seconds=seconds), **values}
        if error is not None:
            changes["last_error"] = redact(error)[:2000]
        with self.rt.engine.begin() as conn:
            return store.touch(conn, refund.id, S(refund.status), changes, claim=refund.claim)

    def _status_deadline(self, status: S, now: datetime) -> datetime | None:
        if status is S.PARTIALLY_COMPLETED:
            return now + timedelta(hours=self.settings.partial_deadline_hours)
        if status is S.ACTION_REQUIRED:
            return now + timedelta(hours=self.settings.action_required_deadline_hours)
        return None

    def _poll_delay(self, status: S, polls: int) -> float:
        if status is S.ACTION_REQUIRED:
            return self.settings.action_required_poll
        return backoff(polls, self.settings.poll_initial, self.settings.poll_max)

    def _delay(self, refund: Refund, op: Op, when: When, exc: BaseException | None) -> float:
        if when is When.WAIT and isinstance(exc, NotSent):
            return exc.wait * random.uniform(1.0, 1.5)
        if when is When.SOON:
            return LOOKUP_SOON
        retry_after = exc.retry_after if isinstance(exc, ProviderError) else None
        if op is Op.POLL:
            base = self._poll_delay(S(refund.status), refund.polls + 1)
        else:
            n = refund.attempts if op is Op.SEND else refund.polls
            base = backoff(n, self.settings.retry_initial, self.settings.retry_max)
        return max(base, retry_after or 0.0)

    def _admit(self, account: Account) -> Pass:
        """Leave to send one request to the account: its breaker, then a rate token (sleeping at
        most `throttle_giveback` for a reserved one). CircuitOpen / Throttled carry the wait."""
        admitted = self.rt.breaker.allow(account)
        wait = self.rt.limiter.wait_for_token(account, self.settings.throttle_giveback)
        if wait > 0:
            self.rt.breaker.abandon(account, admitted)
            raise Throttled(account.name, wait)
        return admitted

    def call(
        self,
        adapter: Adapter,
        account: Account,
        build: Callable[[int], Request],
        admitted: Pass | None = None,
    ) -> Response:
        """Every provider request goes through here. Admission (`_admit`) unless the caller did it.
        Providers whose nonces must arrive in order allocate the nonce, sign, send and read the
        answer under their key's lane (LaneBusy when it stays taken). Every wait here is bounded
        (worker/app.py checks they fit in a claim's lease). Not sent or a 5xx answer counts against
        the breaker; any other answer (4xx included: the provider is up) closes it."""
        if admitted is None:
            admitted = self._admit(account)
        lane: AbstractContextManager[object] = (
            self.rt.lane.held(account) if adapter.nonce_policy is NoncePolicy.INCREASING else nullcontext()
        )
        try:
            with lane:
                nonce = self.rt.nonces.next(account, adapter.nonce_policy, adapter.nonce_unit)
                response = self.rt.transport.send(build(nonce))
        except ConnectFailed as exc:
            self.rt.breaker.failure(account, str(exc))
            raise
        except NotSent:
            self.rt.breaker.abandon(account, admitted)
            raise
        if response.status_code >= 500:
            self.rt.breaker.failure(account, f"HTTP {response.status_code}")
        else:
            self.rt.breaker.success(account)
        return response

    # --- the policy, executed --------------------------------------------------------------------

    def _after(
        self,
        refund: Refund,
        op: Op,
        outcome: Outcome,
        *,
        exc: BaseException | None = None,
        result: StatusResult | None = None,
        response: Response | None = None,
    ) -> str:
        """Do what worker/policy.py says follows `outcome` of `op` on this refund."""
        decision = decide(op, outcome)
        account = self.rt.accounts[refund.account]
        if decision.penalty and isinstance(exc, ProviderError):
            self.rt.limiter.penalize(account, exc.retry_after)
        if decision.to is Next.ADOPT:
            assert result is not None and response is not None
            return self._adopt(refund, result, decision.reason, response)
        if decision.to is Next.RESEND:
            return self._claim_and_send(refund)
        message = None if exc is None else redact(str(exc))
        if decision.to is Next.STAY:
            polls = {} if decision.when is When.WAIT else {"polls": refund.polls + 1}
            error = None if message is None else f"{op.value}: {message}"
            delay = self._delay(refund, op, decision.when, exc)
            if not self._later(refund, delay, error, **polls):
                return "lost_race"
            log.info(f"{op.value}_later", outcome=outcome.value, retry_in=round(delay, 2))
            return "deferred" if decision.when is When.WAIT else f"{op.value}_retry"
        return self._to(refund, op, decision, exc, message, response, _answer_record(outcome, None, exc, response))

    def _to(
        self,
        refund: Refund,
        op: Op,
        decision: Decision,
        exc: BaseException | None,
        message: str | None,
        response: Response | None,
        answer: Mapping[str, Any] | None,
    ) -> str:
        """A move to the decision's fixed status."""
        to = S(decision.to)
        raw = exc.raw_status if isinstance(exc, ProviderError) else None
        if to is S.NEEDS_ATTENTION:
            return self._attention(
                refund,
                message or decision.reason,
                response=response,
                provider_status=raw,
                answer=answer,
                **({"last_error": message} if message else {}),
            )
        delay = None if decision.when is When.NEVER else self._delay(refund, op, decision.when, exc)
        values: dict[str, Any] = {"next_action_at": None if delay is None else timedelta(seconds=delay)}
        if message is not None:
            values["last_error"] = message[:2000]
        if to is S.UNKNOWN:
            # The request may still be executed by the provider: absent is not believed before this.
            values["settle_until"] = timedelta(seconds=self.settle_seconds(self.rt.accounts[refund.account]))
        if op is Op.SEND and not decision.counted:
            values["attempts"] = refund.attempts - 1
        reason = decision.reason if message is None else f"{decision.reason}: {message}"
        if to is S.QUEUED and delay is not None:
            reason += f" (again in {delay:.1f}s)"
        moved = self._move(
            refund,
            to,
            reason=reason,
            provider_status=raw,
            response=None if response is None else response_record(response),
            answer=answer,
            values=values,
        )
        return to.value if moved else "lost_race"

    def _adopt(self, refund: Refund, result: StatusResult, why: str, response: Response) -> str:
        """Record what the provider says it has (after a send, a lookup or a poll)."""
        frm = S(refund.status)
        now = utcnow()
        to = result.status
        answer = _answer_record(Outcome.ANSWER, result, None, response)
        values: dict[str, Any] = {
            "polls": 0,
            "last_error": None,
            "detail": {**refund.detail, **result.detail},
            "status_deadline": self._status_deadline(to, now),
            "next_action_at": None if is_terminal(to) else timedelta(seconds=self._poll_delay(to, 0)),
        }
        if result.provider_refund_id:
            values["provider_refund_id"] = result.provider_refund_id
        if result.settled_amount is not None:
            values["settled_amount"] = result.settled_amount
        if result.fee is not None:
            values["fee"] = result.fee
        reason = why if not result.reason else f"{why}: {result.reason}"
        if not allowed(frm, to):
            return self._attention(
                refund,
                f"provider reported {result.raw_status} ({to.value}) while {frm.value}",
                response=response,
                provider_status=result.raw_status,
                answer=answer,
            )
        moved = self._move(
            refund,
            to,
            reason=reason,
            provider_status=result.raw_status,
            response=response_record(response),
            answer=answer,
            values=values,
        )
        return to.value if moved else "lost_race"

    def _duplicate(self, refund: Refund, op: Op, ids: Sequence[str], response: Response | None) -> str:
        """More than one provider record of this refund: every id, to an operator."""
        ids = sorted(set(ids))
        return self._attention(
            refund,
            f"{op.value}: the provider holds this refund {len(ids)} times: {', '.join(ids)}",
            response=response,
            detail={**refund.detail, "provider_refund_ids": ids},
        )

    # --- submit ----------------------------------------------------------------------------------

    def submit(self, refund_id: str) -> str:
        """Entry point of the submit task: sends a queued refund, resolves an unknown one.
        Any other status means this delivery is a duplicate: do nothing."""
        refund = self._load(refund_id)
        if refund is None:
            log.warning("submit_missing", refund_id=refund_id)
            return "missing"
        with _bound(refund):
            status = S(refund.status)
            if status is S.QUEUED:
                return self._hold_for_approval(refund) or self._check_payment(refund) or self._claim_and_send(refund)
            if status is S.UNKNOWN:
                return self._resolve_unknown(refund)
            log.info("submit_skipped", status=status.value)
            return "skipped"

    def _hold_for_approval(self, refund: Refund) -> str | None:
        """The send-time gate: a queued refund above its account's approval threshold that no
        person approved is held (queued -> awaiting_approval) instead of sent. Catches rows stored
        queued without the insert-time check (batch imports) and thresholds lowered since. None:
        go on and send."""
        account = self.rt.accounts.get(refund.account)
        if account is None or is_approved(refund) or not needs_approval(account, refund.amount, refund.currency):
            return None
        held = self._move(
            refund,
            S.AWAITING_APPROVAL,
            reason="held before sending: amount above the account's approval_threshold, not approved",
            values={"next_action_at": None},
        )
        return S.AWAITING_APPROVAL.value if held else "lost_race"

    def _check_payment(self, refund: Refund) -> str | None:
        """Before the first send of a refund whose provider reports the original payment (CoinCorner,
        Cryptomus): read the payment, once per payment (a stored reading is used again), and judge
        the refund against it under the payment's lock (worker/ceiling.py). Above the ceiling, or
        a payment the provider does not know: rejected, nothing sent. None: go on and send."""
        adapter, account, spec = self._parts(refund)
        if not adapter.reads_payment or refund.attempts or refund.payment_key is None:
            return None
        with self.rt.engine.connect() as conn:
            reading = ceiling.stored_reading(conn, refund.account, refund.payment_key)
        if reading is None:
            if utcnow() > refund.deadline:
                return self._attention(refund, "deadline passed before the provider reported the original payment")
            try:
                response = self.call(adapter, account, lambda nonce: adapter.build_payment(spec, account, nonce))
                reading = adapter.parse_payment(spec, account, response)
            except ProviderError as exc:
                if exc.kind is ErrorKind.REJECTED:
                    return self._refuse_unsent(refund, f"the provider does not know the original payment: {exc}")
                if exc.kind is ErrorKind.AUTH:  # as a send would be: rejected, never looped on
                    why = f"the provider refused our credentials reading the original payment: {exc}"
                    return self._refuse_unsent(refund, why)
                return self._read_later(refund, exc)
            except (NotSent, MaybeSent) as exc:  # a read: nothing was executed either way
                return self._read_later(refund, exc)
        try:
            with self.rt.engine.begin() as conn:
                error = ceiling.admit_reading(conn, refund.id, reading)
                if error is None:
                    why = f"payment {reading.key}: {format(reading.amount, 'f')} {reading.currency} paid; within it"
                    if not store.touch(conn, refund.id, S.QUEUED, {}, claim=refund.claim):
                        raise store.LostRace(refund.id, S.QUEUED, S.QUEUED)
                    store.add_event(conn, refund.id, S.QUEUED, why)
        except store.LostRace:
            return "lost_race"
        return None if error is None else self._refuse_unsent(refund, str(error))

    def _refuse_unsent(self, refund: Refund, why: str) -> str:
        values = {"next_action_at": None, "last_error": redact(why)[:2000]}
        moved = self._move(refund, S.REJECTED, reason=f"refused before sending: {redact(why)}", values=values)
        return S.REJECTED.value if moved else "lost_race"

    def _read_later(self, refund: Refund, exc: BaseException) -> str:
        retry_after = exc.retry_after if isinstance(exc, ProviderError) else None
        delay = max(backoff(refund.polls, self.settings.retry_initial, self.settings.retry_max), retry_after or 0.0)
        if isinstance(exc, NotSent):
            delay = max(delay, exc.wait)
        if not self._later(refund, delay, f"payment read: {exc}", polls=refund.polls + 1):
            return "lost_race"
        return "payment_read_later"

    def _claim_and_send(self, refund: Refund) -> str:
        """Claim a queued refund, or an unknown one whose lookup proved it absent, and send it.
        The claim bumps the fencing token; from unknown it also needs the settle time passed."""
        frm = S(refund.status)
        if refund.attempts >= self.settings.max_attempts:
            return self._attention(
                refund, f"gave up after {refund.attempts} send attempts: {refund.last_error or 'no answer'}"
            )
        # Admission before the claim: while the breaker is open or the account's rate limit has
        # no token for a while, the refund goes back to the schedule as it is (no attempt counted).
        account = self.rt.accounts[refund.account]
        try:
            admitted = self._admit(account)
        except NotSent as exc:
            delay = exc.wait * random.uniform(1.0, 1.5)
            self._later(refund, delay)
            log.info("send_deferred", why=str(exc), retry_in=round(delay, 2))
            return "deferred"
        try:
            with self.rt.engine.begin() as conn:
                claim = store.transition(
                    conn,
                    refund.id,
                    frm,
                    S.SUBMITTING,
                    reason="claimed for send"
                    if frm is S.QUEUED
                    else "claimed for send again: the provider proved it has none",
                    claim=refund.claim,
                    guard=store.settled(conn) if frm is S.UNKNOWN else None,
                    values={
                        "claim": refund_table.c.claim + 1,
                        "attempts": refund.attempts + 1,
                        "next_action_at": timedelta(seconds=self.settings.lease_seconds),
                    },
                )
        except store.LostRace:
            self.rt.breaker.abandon(account, admitted)
            if frm is S.UNKNOWN and refund.settle_until is not None:
                # Most likely not settled yet: look again once it is, on the database's clock (a
                # lost race changes nothing).
                due = {"next_action_at": refund_table.c.settle_until}
                with self.rt.engine.begin() as conn:
                    later = store.touch(conn, refund.id, S.UNKNOWN, due, claim=refund.claim)
                if later:
                    log.info("absent_not_settled", settle_until=refund.settle_until.isoformat())
                    return "settling"
            return "lost_race"
        log.info("status", frm=frm.value, to="submitting", claim=claim)
        refund = refund.model_copy(
            update={"status": S.SUBMITTING.value, "attempts": refund.attempts + 1, "claim": claim}
        )
        return self._send(refund, admitted, fresh=True)

    def _renew(self, refund: Refund) -> bool:
        with self.rt.engine.begin() as conn:
            return store.touch(
                conn,
                refund.id,
                S.SUBMITTING,
                {"next_action_at": timedelta(seconds=self.settings.lease_seconds)},
                claim=refund.claim,
            )

    def _send(self, refund: Refund, admitted: Pass | None = None, *, fresh: bool = False) -> str:
        """`admitted`: the first request was admitted before the claim; re-signs are admitted here.
        `fresh`: the claim was committed just now, with a full lease: it counts as the first renewal."""
        adapter, account, spec = self._parts(refund)
        for resign in range(NONCE_RESIGNS + 1):
            # Renew the claim before every send: the request's every wait and the call itself fit
            # in one lease (worker/app.py), and a claim taken over since is never sent on.
            if not (fresh and resign == 0) and not self._renew(refund):
                log.warning("claim_lost_before_send", claim=refund.claim)
                return "claim_lost"
            try:
                response = self.call(
                    adapter,
                    account,
                    lambda nonce: adapter.build_submit(spec, account, nonce),
                    admitted if resign == 0 else None,
                )
            except (NotSent, MaybeSent) as exc:
                return self._after(refund, Op.SEND, outcome_of(exc), exc=exc)
            if random.random() < float(os.environ.get("REFUNDQ_CHAOS_KILL_AFTER_SEND") or 0):
                os._exit(1)  # chaos (worker/chaos.py): die between the provider's answer and the DB commit
            try:
                result = adapter.parse_submit(spec, account, response)
            except ProviderError as exc:
                if exc.kind is ErrorKind.NONCE:
                    # Key id only, never the key. Each re-sign is part of a burst worth a look.
                    if resign < NONCE_RESIGNS:
                        log.warning("nonce_rejected", resign=resign + 1, key_id=key_id(account))
                        continue
                    log.warning("nonce_rejected_burst", resigns=NONCE_RESIGNS, key_id=key_id(account))
                return self._after(refund, Op.SEND, outcome_of(exc), exc=exc, response=response)
            if result.others:
                return self._duplicate(refund, Op.SEND, [result.provider_refund_id or "", *result.others], response)
            return self._after(refund, Op.SEND, Outcome.ANSWER, result=result, response=response)
        raise AssertionError("unreachable")

    # --- unknown: look up before any resend -----------------------------------------------------

    def _resolve_unknown(self, refund: Refund) -> str:
        if utcnow() > refund.deadline:
            return self._attention(refund, "deadline passed before the provider could tell whether it has this refund")
        adapter, account, spec = self._parts(refund)
        try:
            found, response = self._lookup(adapter, account, spec)
        except (NotSent, MaybeSent, ProviderError) as exc:
            return self._after(refund, Op.LOOKUP, outcome_of(exc), exc=exc)
        with self.rt.engine.connect() as conn:
            late = store.late_answers(conn, refund.id)
        late_ids = {str(a["provider_refund_id"]) for a in late if a.get("provider_refund_id")}
        if found is not None:
            ids = {found.provider_refund_id, *found.others, *late_ids} - {None, ""}
            if found.others or len(ids) > 1:
                return self._duplicate(refund, Op.LOOKUP, [str(i) for i in ids], response)
            return self._after(refund, Op.LOOKUP, Outcome.ANSWER, result=found, response=response)
        if any(a.get("outcome") == Outcome.ANSWER.value for a in late):
            # A superseded claim was told "accepted", yet the lookup finds nothing: never resend.
            return self._attention(
                refund,
                "lookup finds nothing, but the provider accepted this refund from an earlier claim (late answer)",
                response=response,
            )
        log.info("lookup_absent")
        return self._after(refund, Op.LOOKUP, Outcome.ABSENT, response=response)

    def look_up(self, refund: Refund) -> StatusResult | None:
        """A fresh lookup for an operator (`refundq refund resolve`): admitted like every call
        (breaker, rate token: NotSent when not admitted), a 429 drains the bucket as for a worker.
        None: the provider proved it has no such refund (the caller judges the settle time).
        Raises NotSent, MaybeSent or ProviderError when the provider could not tell."""
        adapter, account, spec = self._parts(refund)
        try:
            return self._lookup(adapter, account, spec)[0]
        except ProviderError as exc:
            if decide(Op.LOOKUP, outcome_of(exc)).penalty:
                self.rt.limiter.penalize(account, exc.retry_after)
            raise

    def _lookup(self, adapter: Adapter, account: Account, spec: RefundSpec) -> tuple[StatusResult | None, Response]:
        """The provider's record of this refund, paging where its lookup is a list. A lookup that
        cannot finish within `lookup_max_pages` is unsure (retried later), never "absent"."""
        for page in range(self.settings.lookup_max_pages):
            paged = replace(spec, lookup_page=page)
            response = self.call(adapter, account, partial(adapter.build_lookup, paged, account))
            try:
                return adapter.parse_lookup(paged, account, response), response
            except LookupNextPage:
                continue
        raise ProviderError(ErrorKind.UNSURE, f"lookup did not finish within {self.settings.lookup_max_pages} pages")

    # --- poll ------------------------------------------------------------------------------------

    def poll(self, refund_ids: Sequence[str]) -> dict[str, str]:
        """Poll a batch within the soft time limit (the threads pool enforces none); the rest of
        the batch stays claimed until its lease ends, then the dispatcher sends it again. One
        refund's surprise never stops the others: it is logged and that refund polled again later."""
        budget_end = time.monotonic() + self.settings.task_soft_time_limit
        out = {}
        for refund_id in refund_ids:
            if time.monotonic() > budget_end:
                out[refund_id] = "deferred"
                continue
            try:
                out[refund_id] = self.poll_one(refund_id)
            except Exception as exc:
                log.error("poll_failed", refund_id=refund_id, error=redact(f"{type(exc).__name__}: {exc}"))
                out[refund_id] = "error"
        return out

    def poll_one(self, refund_id: str) -> str:
        refund = self._load(refund_id)
        if refund is None:
            return "missing"
        status = S(refund.status)
        if status not in POLLED:
            return "skipped"
        with _bound(refund):
            if utcnow() > (refund.status_deadline or refund.deadline):
                return self._attention(refund, f"deadline passed while {status.value}")
            adapter, account, spec = self._parts(refund)
            response: Response | None = None
            try:
                response = self.call(adapter, account, lambda nonce: adapter.build_status(spec, account, nonce))
                result = adapter.parse_status(spec, account, response)
            except (NotSent, MaybeSent, ProviderError) as exc:
                return self._after(refund, Op.POLL, outcome_of(exc), exc=exc, response=response)
            if result.others:
                return self._duplicate(refund, Op.POLL, [result.provider_refund_id or "", *result.others], response)
            return self._apply_status(refund, result, response)

    def _apply_status(self, refund: Refund, result: StatusResult, response: Response) -> str:
        status = S(refund.status)
        problems = integrity_problems(refund, result)
        if problems:  # the provider's record contradicts what we asked for: an operator decides
            return self._attention(
                refund,
                "integrity: " + "; ".join(problems),
                response=response,
                provider_status=result.raw_status,
                detail={**refund.detail, "integrity": integrity_record(refund, result, problems)},
            )
        if result.status is not status:
            return self._after(refund, Op.POLL, Outcome.ANSWER, result=result, response=response)
        values: dict[str, Any] = {
            "polls": refund.polls + 1,
            "next_action_at": timedelta(seconds=self._poll_delay(status, refund.polls + 1)),
        }
        with self.rt.engine.begin() as conn:
            if result.raw_status != refund.provider_status:
                values["provider_status"] = result.raw_status
                store.add_event(
                    conn, refund.id, status, f"provider status {result.raw_status}", response_record(response)
                )
            store.touch(conn, refund.id, status, values, claim=refund.claim)
        return status.value

    # --- dispatch --------------------------------------------------------------------------------

    def dispatch_once(self) -> dict[str, int]:
        """Take over expired send claims (to unknown: lookup first), claim due rows by pushing
        their next_action_at forward as a lease, publish their work. All on the database clock."""
        lease = self.settings.lease_seconds
        sends: list[str] = []
        with self.rt.engine.begin() as conn:
            for row in store.expired_claims(conn, self.settings.dispatch_batch):
                # Guarded by the claim and by the lease still being expired in the UPDATE itself:
                # a renewal committed a moment ago wins, and the worker goes on with its send.
                try:
                    store.transition(
                        conn,
                        row.id,
                        S.SUBMITTING,
                        S.UNKNOWN,
                        reason=f"send lease expired (claim {row.claim}: its worker died or stalled); lookup first",
                        claim=row.claim,
                        guard=store.lease_expired(conn),
                        values={
                            "next_action_at": timedelta(seconds=lease),
                            "settle_until": timedelta(seconds=self.settle_seconds(self.rt.accounts[row.account])),
                        },
                    )
                except store.LostRace:
                    continue
                sends.append(row.id)
        taken_over = len(sends)
        with self.rt.engine.begin() as conn:
            rows = store.claim_due(conn, lease, self.settings.dispatch_batch)
        polls: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            if S(row.status) in (S.QUEUED, S.UNKNOWN):
                sends.append(row.id)
            else:
                polls[row.account].append(row.id)
        batch = self.settings.poll_batch
        poll_groups = [ids[i : i + batch] for ids in polls.values() for i in range(0, len(ids), batch)]
        publish(sends, poll_groups)
        return {
            "taken_over": taken_over,
            "claimed": len(rows),
            "sends": len(sends),
            "polls": sum(len(g) for g in poll_groups),
        }


def _answer_record(
    outcome: Outcome, result: StatusResult | None, exc: BaseException | None, response: Response | None
) -> dict[str, Any] | None:
    """What the provider told us, for a late-answer event (ids and statuses only; no bodies).
    None when the provider told us nothing."""
    if response is None and result is None:
        return None
    record: dict[str, Any] = {"outcome": outcome.value}
    if response is not None:
        record["http_status"] = response.status_code
    if result is not None:
        record.update(
            status=result.status.value,
            raw_status=result.raw_status,
            provider_refund_id=result.provider_refund_id,
            others=list(result.others),
        )
    if isinstance(exc, ProviderError):
        record.update(error_kind=exc.kind.value, raw_status=exc.raw_status, code=exc.code)
    return record


def publish(sends: Sequence[str], poll_groups: Sequence[Sequence[str]]) -> None:
    """Publish many task messages over one producer connection."""
    if not sends and not poll_groups:
        return
    from worker.app import celery_app

    with celery_app.producer_or_acquire() as producer:
        for refund_id in sends:
            celery_app.send_task("refundq.submit", args=[refund_id], queue="refundq.submit", producer=producer)
        for group in poll_groups:
            celery_app.send_task("refundq.poll", args=[list(group)], queue="refundq.poll", producer=producer)
