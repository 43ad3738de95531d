"""What the tasks do: submit (claim, nonce, sign, send, classify), resolve `unknown` refunds by
lookup before any resend, poll provider status, and dispatch due rows.

Every status change goes through `store.transition` (guarded UPDATE + event). A lost race
means another worker already acted: we stop, we never send on a stale belief.
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
from worker import store
from worker.breaker import CircuitOpen, Pass
from worker.lane import LaneBusy
from worker.models import Refund, utcnow
from worker.nonces import key_id
from worker.ratelimit import Throttled
from worker.runtime import Runtime
from worker.states import POLLED, allowed, is_terminal
from worker.transport import TransportError

log = structlog.get_logger("refundq.engine")
S = RefundStatus
NONCE_RESIGNS = 3  # a refused nonce means "not executed": re-sign at once, without counting an attempt
_READ_RETRY = (
    ErrorKind.RETRYABLE,
    ErrorKind.RATE_LIMITED,
    ErrorKind.AMBIGUOUS,
    ErrorKind.NONCE,
    ErrorKind.AUTH,
)


def spec_of(refund: Refund) -> RefundSpec:
    return RefundSpec(
        refund_id=refund.id,
        amount=refund.amount,
        currency=refund.currency,
        destination=refund.destination,
        fields=refund.fields,
        provider_refund_id=refund.provider_refund_id,
        created_at=refund.created_at,
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

    def _move(self, refund: Refund, frm: S, to: S, **kwargs: Any) -> bool:
        """Guarded transition in its own transaction. False when we lost the race."""
        try:
            with self.rt.engine.begin() as conn:
                store.transition(conn, refund.id, frm, to, **kwargs)
        except store.LostRace as exc:
            log.info("lost_race", detail=str(exc))
            return False
        log.info("status", frm=frm.value, to=to.value, reason=kwargs.get("reason"))
        return True

    def _attention(
        self,
        refund: Refund,
        frm: S,
        reason: str,
        *,
        response: Response | None = None,
        provider_status: str | None = None,
        **values: Any,
    ) -> str:
        """Hand the refund to an operator: needs_attention, nothing more scheduled."""
        self._move(
            refund,
            frm,
            S.NEEDS_ATTENTION,
            reason=reason,
            provider_status=provider_status,
            response=None if response is None else response_record(response),
            values={"next_action_at": None, **values},
        )
        return S.NEEDS_ATTENTION.value

    def _later(self, refund: Refund, status: S, seconds: float, error: str | None = None, **values: Any) -> None:
        changes: dict[str, Any] = {"next_action_at": utcnow() + timedelta(seconds=seconds), **values}
        if error is not None:
            changes["last_error"] = redact(error)[:2000]
        with self.rt.engine.begin() as conn:
            store.touch(conn, refund.id, status, changes)

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
        answer under their key's lane (LaneBusy when it stays taken). Not sent or a 5xx answer
        counts against the breaker; any other answer (4xx included: the provider is up) closes it."""
        if admitted is None:
            admitted = self._admit(account)
        lane: AbstractContextManager[object] = (
            self.rt.lane.held(account) if adapter.nonce_policy is NoncePolicy.INCREASING else nullcontext()
        )
        try:
            with lane:
                nonce = self.rt.nonces.next(account, adapter.nonce_policy, adapter.nonce_unit)
                response = self.rt.transport.send(build(nonce))
        except LaneBusy:
            self.rt.breaker.abandon(account, admitted)
            raise
        except TransportError as exc:
            if not exc.sent:
                self.rt.breaker.failure(account, str(exc))
            raise
        if response.status_code >= 500:
            self.rt.breaker.failure(account, f"HTTP {response.status_code}")
        else:
            self.rt.breaker.success(account)
        return response

    def _adopt(self, refund: Refund, frm: S, result: StatusResult, why: str, response: Response) -> str:
        """Record what the provider says it has (after a send or a lookup)."""
        now = utcnow()
        to = result.status
        values: dict[str, Any] = {
            "polls": 0,
            "last_error": None,
            "detail": {**refund.detail, **result.detail},
            "status_deadline": self._status_deadline(to, now),
            "next_action_at": None if is_terminal(to) else now + timedelta(seconds=self._poll_delay(to, 0)),
        }
        if result.provider_refund_id:
            values["provider_refund_id"] = result.provider_refund_id
        reason = why if not result.reason else f"{why}: {result.reason}"
        if not allowed(frm, to):
            to, reason = S.NEEDS_ATTENTION, f"provider reported {result.raw_status} ({to.value}) while {frm.value}"
            values["next_action_at"] = None
        self._move(
            refund,
            frm,
            to,
            reason=reason,
            provider_status=result.raw_status,
            response=response_record(response),
            values=values,
        )
        return to.value

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
                return self._claim_and_send(refund, S.QUEUED)
            if status is S.UNKNOWN:
                return self._resolve_unknown(refund)
            log.info("submit_skipped", status=status.value)
            return "skipped"

    def _claim_and_send(self, refund: Refund, frm: S) -> str:
        if refund.attempts >= self.settings.max_attempts:
            self._attention(
                refund, frm, f"gave up after {refund.attempts} send attempts: {refund.last_error or 'no answer'}"
            )
            return "gave_up"
        # Admission before the claim: while the breaker is open or the account's rate limit has
        # no token for a while, the refund goes back to the schedule as it is (no attempt counted).
        account = self.rt.accounts[refund.account]
        try:
            admitted = self._admit(account)
        except (CircuitOpen, Throttled) as exc:
            delay = exc.wait * random.uniform(1.0, 1.5)
            self._later(refund, frm, delay)
            log.info("send_deferred", why=str(exc), retry_in=round(delay, 2))
            return "circuit_open" if isinstance(exc, CircuitOpen) else "throttled"
        lease = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        if not self._move(
            refund,
            frm,
            S.SUBMITTING,
            reason="claimed for send",
            values={"attempts": refund.attempts + 1, "next_action_at": lease},
        ):
            self.rt.breaker.abandon(account, admitted)
            return "lost_race"
        refund = refund.model_copy(update={"status": S.SUBMITTING.value, "attempts": refund.attempts + 1})
        return self._send(refund, admitted)

    def _send(self, refund: Refund, admitted: Pass | None = None) -> str:
        """`admitted`: the first request was admitted before the claim; re-signs are admitted here."""
        adapter, account, spec = self._parts(refund)
        for resign in range(NONCE_RESIGNS + 1):
            # Renew the claim before every send. The threads pool enforces no time limit, so a
            # slow task must prove it still holds the row; if the dispatcher took it over
            # (lease expired -> unknown), sending now could pay twice.
            lease = utcnow() + timedelta(seconds=self.settings.lease_seconds)
            with self.rt.engine.begin() as conn:
                if not store.touch(conn, refund.id, S.SUBMITTING, {"next_action_at": lease}):
                    log.warning("claim_lost_before_send")
                    return "claim_lost"
            try:
                response = self.call(
                    adapter,
                    account,
                    lambda nonce: adapter.build_submit(spec, account, nonce),
                    admitted if resign == 0 else None,
                )
            except (LaneBusy, Throttled, CircuitOpen) as exc:
                # Nothing left (a refused nonce was not executed either): back to queued, and
                # this claim does not count as an attempt.
                delay = exc.wait * random.uniform(1.0, 1.5)
                self._move(
                    refund,
                    S.SUBMITTING,
                    S.QUEUED,
                    reason=f"not sent, back in {delay:.1f}s (no attempt counted): {exc}",
                    values={"attempts": refund.attempts - 1, "next_action_at": utcnow() + timedelta(seconds=delay)},
                )
                return "deferred"
            except TransportError as exc:
                if not exc.sent:
                    return self._requeue(refund, str(exc))
                return self._to_unknown(refund, str(exc), None)
            if random.random() < float(os.environ.get("REFUNDQ_CHAOS_KILL_AFTER_SEND") or 0):
                os._exit(1)  # chaos (worker/chaos.py): die between the provider's answer and the DB commit
            try:
                result = adapter.parse_submit(spec, account, response)
            except ProviderError as exc:
                if exc.kind is ErrorKind.RATE_LIMITED:
                    self.rt.limiter.penalize(account, exc.retry_after)
                if exc.kind is ErrorKind.NONCE:
                    # Key id only, never the key. Each re-sign is part of a burst worth a look.
                    if resign < NONCE_RESIGNS:
                        log.warning("nonce_rejected", resign=resign + 1, key_id=key_id(account))
                        continue
                    log.warning("nonce_rejected_burst", resigns=NONCE_RESIGNS, key_id=key_id(account))
                return self._submit_refused(refund, exc, response)
            return self._adopt(refund, S.SUBMITTING, result, "accepted by the provider", response)
        raise AssertionError("unreachable")

    def _requeue(self, refund: Refund, error: str, retry_after: float | None = None) -> str:
        delay = max(retry_after or 0.0, backoff(refund.attempts, self.settings.retry_initial, self.settings.retry_max))
        self._move(
            refund,
            S.SUBMITTING,
            S.QUEUED,
            reason=f"not sent, retry in {delay:.1f}s: {error}",
            values={
                "next_action_at": utcnow() + timedelta(seconds=delay),
                "last_error": redact(error)[:2000],
            },
        )
        return "requeued"

    def _to_unknown(self, refund: Refund, error: str, response: Response | None) -> str:
        self._move(
            refund,
            S.SUBMITTING,
            S.UNKNOWN,
            reason=f"outcome unknown, lookup before any resend: {error}",
            response=None if response is None else response_record(response),
            values={"next_action_at": utcnow() + timedelta(seconds=1), "last_error": redact(error)[:2000]},
        )
        return "unknown"

    def _submit_refused(self, refund: Refund, exc: ProviderError, response: Response) -> str:
        kind = exc.kind
        message = redact(str(exc))
        if kind in (ErrorKind.RETRYABLE, ErrorKind.RATE_LIMITED, ErrorKind.NONCE):
            return self._requeue(refund, message, exc.retry_after)
        if kind is ErrorKind.AMBIGUOUS:
            return self._to_unknown(refund, message, response)
        if kind is ErrorKind.UNMAPPED:
            return self._attention(
                refund, S.SUBMITTING, message, response=response, provider_status=exc.raw_status, last_error=message
            )
        why = "provider refused our credentials (check the account's keys)" if kind is ErrorKind.AUTH else "refused"
        # A refused refund frees its invoice for a corrected one.
        self._move(
            refund,
            S.SUBMITTING,
            S.REJECTED,
            reason=f"{why}: {message}",
            provider_status=exc.raw_status,
            response=response_record(response),
            values={"next_action_at": None, "last_error": message, "exclusive_key": None},
        )
        return S.REJECTED.value

    # --- unknown: look up before any resend -----------------------------------------------------

    def _resolve_unknown(self, refund: Refund) -> str:
        if utcnow() > refund.deadline:
            return self._attention(
                refund, S.UNKNOWN, "deadline passed before the provider could tell whether it has this refund"
            )
        adapter, account, spec = self._parts(refund)
        retry = backoff(refund.polls, self.settings.retry_initial, self.settings.retry_max)
        try:
            found, response = self._lookup(adapter, account, spec)
        except (LaneBusy, Throttled, CircuitOpen) as exc:
            self._later(refund, S.UNKNOWN, exc.wait * random.uniform(1.0, 1.5))
            log.info("lookup_deferred", why=str(exc))
            return "deferred"
        except TransportError as exc:
            self._later(refund, S.UNKNOWN, retry, f"lookup failed: {exc}", polls=refund.polls + 1)
            return "lookup_retry"
        except ProviderError as exc:
            if exc.kind is ErrorKind.RATE_LIMITED:
                self.rt.limiter.penalize(account, exc.retry_after)
            if exc.kind in _READ_RETRY:
                self._later(
                    refund,
                    S.UNKNOWN,
                    max(retry, exc.retry_after or 0),
                    f"lookup failed: {exc}",
                    polls=refund.polls + 1,
                )
                return "lookup_retry"
            to = S.REJECTED if exc.kind is ErrorKind.REJECTED else S.NEEDS_ATTENTION
            self._move(
                refund,
                S.UNKNOWN,
                to,
                reason=f"lookup: {redact(str(exc))}",
                provider_status=exc.raw_status,
                values={"next_action_at": None, "last_error": redact(str(exc))},
            )
            return to.value
        if found is not None:
            return self._adopt(refund, S.UNKNOWN, found, "lookup found the refund at the provider", response)
        log.info("lookup_absent")
        return self._claim_and_send(refund, S.UNKNOWN)

    def _lookup(self, adapter: Adapter, account: Account, spec: RefundSpec) -> tuple[StatusResult | None, Response]:
        """The provider's record of this refund, paging where its lookup is a list. A lookup that
        cannot finish within `lookup_max_pages` is an error (retried later), never "absent"."""
        for page in range(self.settings.lookup_max_pages):
            paged = replace(spec, lookup_page=page)
            response = self.call(adapter, account, partial(adapter.build_lookup, paged, account))
            try:
                return adapter.parse_lookup(paged, account, response), response
            except LookupNextPage:
                continue
        raise ProviderError(ErrorKind.RETRYABLE, f"lookup did not finish within {self.settings.lookup_max_pages} pages")

    # --- poll ------------------------------------------------------------------------------------

    def poll(self, refund_ids: Sequence[str]) -> dict[str, str]:
        """Poll a batch within the soft time limit (the threads pool enforces none); the rest of
        the batch stays claimed until its lease ends, then the dispatcher sends it again."""
        budget_end = time.monotonic() + self.settings.task_soft_time_limit
        out = {}
        for refund_id in refund_ids:
            if time.monotonic() > budget_end:
                out[refund_id] = "deferred"
                continue
            out[refund_id] = self.poll_one(refund_id)
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
                return self._attention(refund, status, f"deadline passed while {status.value}")
            adapter, account, spec = self._parts(refund)
            delay = self._poll_delay(status, refund.polls + 1)
            try:
                response = self.call(adapter, account, lambda nonce: adapter.build_status(spec, account, nonce))
                result = adapter.parse_status(spec, account, response)
            except (LaneBusy, Throttled, CircuitOpen) as exc:
                self._later(refund, status, exc.wait * random.uniform(1.0, 1.5))
                log.info("poll_deferred", why=str(exc))
                return "deferred"
            except TransportError as exc:
                self._later(refund, status, delay, f"poll failed: {exc}", polls=refund.polls + 1)
                return "poll_retry"
            except ProviderError as exc:
                if exc.kind is ErrorKind.RATE_LIMITED:
                    self.rt.limiter.penalize(account, exc.retry_after)
                if exc.kind in _READ_RETRY:
                    self._later(
                        refund,
                        status,
                        max(delay, exc.retry_after or 0),
                        f"poll failed: {exc}",
                        polls=refund.polls + 1,
                    )
                    return "poll_retry"
                # Undocumented status, or the provider no longer knows an accepted refund.
                message = redact(str(exc))
                return self._attention(
                    refund, status, message, response=response, provider_status=exc.raw_status, last_error=message
                )
            return self._apply_status(refund, status, result, response, delay)

    def _apply_status(self, refund: Refund, status: S, result: StatusResult, response: Response, delay: float) -> str:
        problems = integrity_problems(refund, result)
        if problems:  # the provider's record contradicts what we asked for: an operator decides
            return self._attention(
                refund,
                status,
                "integrity: " + "; ".join(problems),
                response=response,
                provider_status=result.raw_status,
                detail={**refund.detail, "integrity": integrity_record(refund, result, problems)},
            )
        if result.status is status:
            values: dict[str, Any] = {
                "polls": refund.polls + 1,
                "next_action_at": utcnow() + timedelta(seconds=delay),
            }
            with self.rt.engine.begin() as conn:
                if result.raw_status != refund.provider_status:
                    values["provider_status"] = result.raw_status
                    store.add_event(
                        conn,
                        refund.id,
                        status,
                        f"provider status {result.raw_status}",
                        response_record(response),
                    )
                store.touch(conn, refund.id, status, values)
            return status.value
        if not allowed(status, result.status):
            return self._attention(
                refund,
                status,
                f"provider moved the refund {status.value} -> {result.status.value} ({result.raw_status})",
                response=response,
                provider_status=result.raw_status,
            )
        return self._adopt(refund, status, result, "provider status", response)

    # --- dispatch --------------------------------------------------------------------------------

    def dispatch_once(self) -> dict[str, int]:
        """Claim due rows, push their next_action_at forward as a lease, publish their work."""
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        with self.rt.engine.begin() as conn:
            rows = store.claim_due(conn, now, lease, self.settings.dispatch_batch)
        sends: list[str] = []
        polls: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            status = S(row.status)
            if status is S.SUBMITTING:
                # Its lease ran out: the worker died mid-send. The request may have left.
                with self.rt.engine.begin() as conn:
                    try:
                        store.transition(
                            conn,
                            row.id,
                            S.SUBMITTING,
                            S.UNKNOWN,
                            reason="send lease expired (worker died mid-send); lookup first",
                        )
                    except store.LostRace:
                        continue
                sends.append(row.id)
            elif status in (S.QUEUED, S.UNKNOWN):
                sends.append(row.id)
            else:
                polls[row.account].append(row.id)
        batch = self.settings.poll_batch
        poll_groups = [ids[i : i + batch] for ids in polls.values() for i in range(0, len(ids), batch)]
        publish(sends, poll_groups)
        return {"claimed": len(rows), "sends": len(sends), "polls": sum(len(g) for g in poll_groups)}


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


def intake(payload: Mapping[str, Any], rt: Runtime) -> str:
    """Door (b): a producer's Celery message. Invalid input is recorded, never dropped."""
    from worker.producer import IdempotencyConflict, persist, publish_submit
    from worker.validation import ValidationFailed

    key = payload.get("idempotency_key") if isinstance(payload, Mapping) else None
    try:
        refund, created = persist(payload, rt)
    except (ValidationFailed, IdempotencyConflict) as exc:
        reasons = [str(e) for e in exc.errors] if isinstance(exc, ValidationFailed) else [str(exc)]
        with rt.engine.begin() as conn:
            store.record_rejected_intake(
                conn,
                str(key) if key is not None else None,
                payload if isinstance(payload, Mapping) else {"raw": repr(payload)},
                reasons,
            )
        log.warning("intake_rejected", idempotency_key=key, reasons=reasons)
        return "rejected"
    if created:
        publish_submit(refund.id, rt)
    log.info("intake_accepted" if created else "intake_duplicate", refund_id=refund.id)
    return refund.id
