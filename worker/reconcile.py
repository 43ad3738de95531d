"""Reconciliation: does the database still agree with the providers?

It re-reads from each provider (status reads only: it never sends a refund) the refunds that
are open at the provider, plus those that became completed/failed in the last N days (all, or
a sample), and compares amount, destination, token/currency, provider id and status with the
database (`engine.integrity_problems` plus the status for finished refunds). A disagreement is
recorded as an event and the refund moves to `needs_attention`, with both versions in the
event and in `refund.detail["drift"]`, in one transaction.

Scheduling: the dispatcher's leader calls `maybe_schedule` every tick; at most once per
`reconcile_interval` (a Redis key with that TTL, so restarts and a second dispatcher do not
double it) it selects the candidates and publishes `refundq.reconcile` tasks of
`reconcile_group` ids. `refundq reconcile --since 7d` runs the same comparison in-process.
Reads go through `Engine.call`, so each account's rate limit, breaker and nonce lane apply.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import select

from providers import get_adapter
from providers.base import ProviderError, RefundStatus, Response, StatusResult
from worker import store
from worker.actions import RESOLUTION
from worker.breaker import CircuitOpen
from worker.engine import Engine, integrity_problems, integrity_record, response_record, spec_of
from worker.errors import MaybeSent, NotSent
from worker.models import Refund, refund_table, utcnow
from worker.policy import Next, Op, decide, outcome_of
from worker.runtime import Runtime
from worker.states import POLLED
from worker.transport import ConnectFailed

log = structlog.get_logger("refundq.reconcile")
S = RefundStatus
R = refund_table.c
FINISHED = (S.COMPLETED, S.FAILED)  # terminal with a provider record that can still drift
ADMISSION_TRIES = 3  # waits for a rate token / lane before giving up on one refund this round
MAX_ADMISSION_WAIT = 5.0


@dataclass
class Finding:
    refund_id: str
    provider: str
    account: str
    status: str  # ours, before this run
    outcome: str  # ok | drift | error | skipped
    provider_status: str | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ReconcileReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(f.outcome for f in self.findings)

    @property
    def drift(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome == "drift"]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome == "error"]


def duplicates(refund: Refund, result: StatusResult, late: Sequence[dict[str, Any]]) -> list[str]:
    """Provider records of this refund beyond the one we hold: other records the provider reports,
    and ids that superseded claims were given (late answers)."""
    ours = refund.provider_refund_id or result.provider_refund_id
    others = set(result.others) | {str(a["provider_refund_id"]) for a in late if a.get("provider_refund_id")}
    others -= {ours, None, ""}
    if not others:
        return []
    return [f"duplicate: the provider holds this refund as {', '.join(sorted({str(ours), *others}))}"]


def parse_since(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `90s` (or a bare number of days)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    unit = text[-1] if text and text[-1] in units else "d"
    number = text[:-1] if text and text[-1] in units else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"--since {text!r}: expected e.g. 7d, 12h, 30m") from None
    if value < 0:
        raise ValueError("--since must not be negative")
    return timedelta(seconds=value * units[unit])


def candidate_rows(
    rt: Runtime, since: timedelta, sample: float = 1.0, rng: random.Random | None = None
) -> list[tuple[str, str]]:
    """(id, account) of the open-at-provider refunds, plus the completed/failed ones updated
    within `since` (a `sample` fraction of those, at random)."""
    rng = rng or random.Random()
    after = utcnow() - since
    with rt.engine.connect() as conn:
        open_rows = conn.execute(select(R.id, R.account).where(R.status.in_([s.value for s in POLLED])))
        out = [(r.id, r.account) for r in open_rows]
        done = conn.execute(
            select(R.id, R.account)
            .where(R.status.in_([s.value for s in FINISHED]), R.updated_at >= after)
            .order_by(R.id)
        )
        out += [(r.id, r.account) for r in done if sample >= 1 or rng.random() < sample]
    return out


def candidates(rt: Runtime, since: timedelta, sample: float = 1.0, rng: random.Random | None = None) -> list[str]:
    return [refund_id for refund_id, _ in candidate_rows(rt, since, sample, rng)]


class Reconciler:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.engine = Engine(rt)

    def _read(self, refund: Refund) -> Response:
        """One status read (never a send), admitted like every provider call."""
        adapter, account, spec = get_adapter(refund.provider), self.rt.accounts[refund.account], spec_of(refund)
        for attempt in range(ADMISSION_TRIES):
            try:
                return self.engine.call(adapter, account, lambda nonce: adapter.build_status(spec, account, nonce))
            except NotSent as exc:
                if attempt + 1 == ADMISSION_TRIES or isinstance(exc, CircuitOpen | ConnectFailed):
                    raise
                time.sleep(min(exc.wait, MAX_ADMISSION_WAIT))
        raise AssertionError("unreachable")

    def check(self, refund_id: str) -> Finding:
        with self.rt.engine.connect() as conn:
            refund = store.get_refund(conn, refund_id)
        if refund is None:
            return Finding(refund_id, "", "", "", "skipped", error="no such refund")
        status = S(refund.status)
        finding = Finding(refund.id, refund.provider, refund.account, refund.status, "ok")
        if status not in POLLED and status not in FINISHED:
            finding.outcome = "skipped"
            return finding
        resolution = refund.detail.get(RESOLUTION)
        if isinstance(resolution, dict) and (resolution.get("forced") or resolution.get("seen") != "found"):
            # An operator closed it on "absent" or by override: no provider record to compare it with
            # (a retry may now hold its Cobo request_id), so reading it would only report drift.
            finding.outcome, finding.error = "skipped", "operator-resolved without a provider record"
            return finding
        if refund.account not in self.rt.accounts:
            finding.outcome, finding.error = "error", f"account {refund.account} is not configured"
            return finding
        try:
            response = self._read(refund)
        except (NotSent, MaybeSent) as exc:
            finding.outcome, finding.error = "error", f"{type(exc).__name__}: {exc}"
            return finding
        adapter, account = get_adapter(refund.provider), self.rt.accounts[refund.account]
        try:
            result = adapter.parse_status(spec_of(refund), account, response)
        except ProviderError as exc:
            finding.error = f"{exc.kind.value}: {exc}"
            decision = decide(Op.RECONCILE, outcome_of(exc))
            if decision.penalty:
                self.rt.limiter.penalize(account, exc.retry_after)
            if decision.to is Next.STAY or status not in FINISHED:
                finding.outcome = "error"  # open refunds: the poller acts on its next poll
                return finding
            # A finished refund the provider no longer knows, or reports in an undocumented state.
            finding.problems = [f"status: ours {status.value}, provider read failed: {exc}"]
            return self._flag(refund, status, finding, None, response, exc.raw_status)
        finding.provider_status = result.raw_status
        problems = integrity_problems(refund, result)
        if status in FINISHED and result.status is not status:
            problems.insert(
                0, f"status: ours {status.value}, provider reports {result.status.value} ({result.raw_status})"
            )
        problems += duplicates(refund, result, self._late_answers(refund.id))
        if not problems:
            return finding
        finding.problems = problems
        return self._flag(refund, status, finding, result, response, result.raw_status)

    def _flag(
        self,
        refund: Refund,
        status: S,
        finding: Finding,
        result: StatusResult | None,
        response: Any,
        raw_status: str | None,
    ) -> Finding:
        """Drift: one event with both versions, and the move to needs_attention, in one transaction."""
        if result is not None:
            both = integrity_record(refund, result, finding.problems)
        else:
            both = {
                "problems": finding.problems,
                "ours": {"status": refund.status},
                "provider": {"error": finding.error},
            }
        record = {"drift": both, **({"response": response_record(response)} if response is not None else {})}
        text = "; ".join(finding.problems)
        try:
            with self.rt.engine.begin() as conn:
                store.add_event(conn, refund.id, status, f"reconcile: drift: {text}", record)
                store.transition(
                    conn,
                    refund.id,
                    status,
                    S.NEEDS_ATTENTION,
                    reason=f"reconcile: provider record disagrees: {text}",
                    provider_status=raw_status,
                    response=record,
                    values={"next_action_at": None, "detail": {**refund.detail, "drift": both}},
                )
        except store.LostRace:
            finding.outcome, finding.error = "skipped", "its status changed during the check"
            return finding
        finding.outcome = "drift"
        log.warning("reconcile_drift", refund_id=refund.id, problems=finding.problems)
        return finding

    def _late_answers(self, refund_id: str) -> list[dict[str, Any]]:
        with self.rt.engine.connect() as conn:
            return store.late_answers(conn, refund_id)

    def run(self, refund_ids: Sequence[str], progress: Callable[[int], None] | None = None) -> ReconcileReport:
        report = ReconcileReport()
        for refund_id in refund_ids:
            try:
                report.findings.append(self.check(refund_id))
            except Exception as exc:  # one refund's surprise must not stop the round
                log.error("reconcile_failed", refund_id=refund_id, error=f"{type(exc).__name__}: {exc}")
                report.findings.append(Finding(refund_id, "", "", "", "error", error=f"{type(exc).__name__}: {exc}"))
            if progress:
                progress(1)
        return report


def reconcile(
    rt: Runtime,
    since: timedelta | None = None,
    sample: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReconcileReport:
    """By hand (`refundq reconcile`): every candidate, in this process. progress(done, total)."""
    since = since if since is not None else timedelta(days=rt.settings.reconcile_days)
    ids = candidates(rt, since, rt.settings.reconcile_sample if sample is None else sample)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, len(ids))

    if progress:
        progress(0, len(ids))
    report = Reconciler(rt).run(ids, step)
    log.info("reconciled", **{k: v for k, v in report.counts.items()})
    return report


def schedule(rt: Runtime) -> int:
    """Select the candidates and publish `refundq.reconcile` tasks of `reconcile_group` ids,
    grouped per account. Returns how many refunds were scheduled."""
    from worker.app import celery_app

    rows = candidate_rows(rt, timedelta(days=rt.settings.reconcile_days), rt.settings.reconcile_sample)
    by_account: dict[str, list[str]] = {}
    for refund_id, account in rows:
        by_account.setdefault(account, []).append(refund_id)
    group = rt.settings.reconcile_group
    with celery_app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for refund_ids in by_account.values():
            for i in range(0, len(refund_ids), group):
                celery_app.send_task(
                    "refundq.reconcile", args=[refund_ids[i : i + group]], queue="refundq.poll", producer=producer
                )
    return len(rows)


def maybe_schedule(rt: Runtime) -> int | None:
    """At most once per `reconcile_interval` across dispatchers and restarts (Redis NX key with
    that TTL). None when not due; else how many refunds were scheduled."""
    interval = rt.settings.reconcile_interval
    if interval <= 0:
        return None
    key = f"{rt.settings.redis_prefix}:reconcile:scheduled"
    if not rt.redis.set(key, str(time.time()), nx=True, ex=max(1, int(interval))):
        return None
    try:
        n = schedule(rt)
    except Exception:
        rt.redis.delete(key)  # try again on the next tick
        raise
    log.info("reconcile_scheduled", refunds=n)
    return n
