"""What the four provider emulators share: the ledger, scenarios chosen by data, the lifecycle
clock, per-key nonce and rate-limit checks, and the fault switches tests flip at run time.

Scenarios are chosen by data so a test or the demo picks an outcome just by what it enqueues:
a marker `sbx<NN>` in a provider text field (order id, ...) wins; otherwise the cents of the
amount (`12.51` -> 51). Codes below 50 are normal refunds.

Timing faults (60-62) make a provider slow or lossy rather than wrong, each on the FIRST create call of a
refund only (so a resend behaves normally); every provider implements them through `timing_fault`:

- DELAYED_EXECUTION: the request is received in full, but the refund is created only
  `execute_delay_seconds` after receipt, by the same code path as a normal create (so a create that
  arrived meanwhile is treated as the provider treats a duplicate: Cobo request_id dedup, one refund per
  order / invoice at CoinCorner / Cryptomus, and at CoinVoyage, which has no idempotency key, a second
  pay-order: `created` 2). The answer is withheld for `hang_seconds` (or until the late creation, if
  later): the client times out, and a lookup before the delay finds nothing.
- TRICKLED_ANSWER: status line and headers at once, then the body one byte every `trickle_interval`
  seconds (Content-Length correct); the refund is created once the last byte is out ("committed late"),
  or on that schedule anyway if the client hangs up. Per-read timeouts never fire: only a deadline on
  the whole call bounds it (len(body) * trickle_interval seconds). An empty answer (CoinCorner) trickles
  TRICKLE_FILLER (JSON whitespace) instead.
- ANSWER_LOST: the refund is created, then the connection is closed without a byte of answer: the
  client sees a transport error (httpx RemoteProtocolError), never an HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from enum import IntEnum
from pathlib import Path
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from config.accounts import Accounts, resolve_secret


class Scenario(IntEnum):
    NORMAL = 0
    FAILED = 51  # the provider tries and fails
    PARTIAL = 52  # some transfers fail (Cobo PartiallyCompleted; others: failed)
    SLOW = 53  # lifecycle ten times slower
    RATE_LIMITED = 54  # first create call answers 429 with Retry-After, creates nothing
    SERVER_ERROR = 55  # first create call answers 500, creates nothing
    TIMEOUT_AFTER_COMMIT = 56  # first create call creates the refund, then never answers
    UNDOCUMENTED_STATUS = 57  # status reads answer a status no spec documents
    REJECTED = 58  # create refused (insufficient balance / already refunded)
    ACTION_REQUIRED = 59  # waits for a person: Cobo PendingConfirmation, CoinVoyage AWAITING_PAYMENT
    DELAYED_EXECUTION = 60  # first create: no answer; the refund appears execute_delay_seconds later
    TRICKLED_ANSWER = 61  # first create: the body trickles a byte per trickle_interval, then it commits
    ANSWER_LOST = 62  # first create: committed, then the connection closes without any answer


TIMING_FAULTS = frozenset({Scenario.DELAYED_EXECUTION, Scenario.TRICKLED_ANSWER, Scenario.ANSWER_LOST})
# What a trickled empty answer sends instead: whitespace any JSON reader skips, long enough to take time.
TRICKLE_FILLER = b" " * 64
# A create's commit: the provider's normal create code path, returning its answer.
Commit = Callable[[], Response]


_MARKER = re.compile(r"sbx(\d{2})")
_AMOUNT_MARKER = re.compile(r"amt(\d{1,12})(?:_(\d{1,8}))?")


def scenario_for(amount: Decimal | None = None, *texts: str | None) -> Scenario:
    for text in texts:
        if text and (m := _MARKER.search(text)):
            return _scenario(int(m.group(1)))
    if amount is None:
        return Scenario.NORMAL
    cents = int((amount * 100) % 100)
    return _scenario(cents)


def marked_amount(default: Decimal, *texts: str | None) -> Decimal:
    """The amount an `amt<units>[_<fraction>]` marker in the first marked text sets (`amt25_50` -> 25.50), else
    `default`. The Cryptomus and CoinCorner sandboxes mark invoices and orders this way."""
    for text in texts:
        if text and (m := _AMOUNT_MARKER.search(text)):
            return Decimal(f"{m.group(1)}.{m.group(2) or '00'}")
    return default


def _scenario(code: int) -> Scenario:
    try:
        return Scenario(code)
    except ValueError:
        return Scenario.NORMAL


class Phase(IntEnum):
    PENDING = 0
    PROCESSING = 1
    FINAL = 2


@dataclass
class SandboxConfig:
    step_seconds: float = 1.0  # time in each non-final phase
    latency_seconds: float = 0.0  # added to every provider call (benchmarks: a provider's round trip)
    hang_seconds: float = 60.0  # how long a timeout-after-commit / delayed-execution create withholds its answer
    execute_delay_seconds: float = 3.0  # DELAYED_EXECUTION: receipt -> the refund is created
    trickle_interval: float = 0.25  # TRICKLED_ANSWER: seconds between two bytes of the answer body
    timestamp_window_ms: int = 300_000  # Cobo / CoinVoyage: stale timestamps are refused
    strict_nonce: dict[str, bool] = field(default_factory=dict)  # provider -> enforce increasing nonces
    rate_limit: dict[str, float] = field(default_factory=dict)  # key id -> requests per second
    outage: dict[str, bool] = field(default_factory=dict)  # provider -> answer every call with 503


@dataclass
class LedgerEntry:
    provider: str
    key_id: str  # the API key / merchant the refund was created under (public part only)
    refund_key: str  # what identifies the refund at the provider (request_id, OrderId, ...)
    provider_refund_id: str
    scenario: int
    create_calls: int = 0  # signed create calls that named this refund (duplicates included)
    created: int = 0  # refund records actually created: must never exceed 1
    created_at: float = 0.0
    funded_at: float | None = None  # CoinVoyage: when the merchant funded the pay-order
    amount: str | None = None
    destination: str | None = None
    currency: str | None = None
    status_override: str | None = None  # drift injected behind refundq's back


class SandboxState:
    def __init__(
        self,
        accounts: Accounts,
        config: SandboxConfig | None = None,
        sandbox_secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.accounts = accounts
        # The sandbox's own keys (e.g. `cobo_response_private_key`), from the [sandbox] table.
        self.sandbox_secrets = dict(sandbox_secrets or {})
        self.config = config or SandboxConfig()
        self.ledger: dict[tuple[str, str, str], LedgerEntry] = {}
        self.counters: dict[str, int] = {}  # "provider:what" -> count (nonce_rejections, 429s, ...)
        self._last_nonce: dict[tuple[str, str], int] = {}
        self._seen_nonces: dict[tuple[str, str], float] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, updated)
        self._lock = threading.Lock()
        self._first_calls: set[tuple[str, str, str, str]] = set()
        # Creates still to execute (timing faults) -> their answers, for whoever still waits.
        self._late: dict[asyncio.TimerHandle, asyncio.Future[Response]] = {}

    # --- accounts -------------------------------------------------------------------------------

    def accounts_for(self, provider: str) -> list[Any]:
        return [a for a in self.accounts.values() if a.provider == provider]

    # --- counters and faults --------------------------------------------------------------------

    def count(self, provider: str, what: str) -> None:
        with self._lock:
            key = f"{provider}:{what}"
            self.counters[key] = self.counters.get(key, 0) + 1

    def first_time(self, provider: str, key_id: str, refund_key: str, fault: str) -> bool:
        """True on the first call for this refund and fault; faults fire once so retries succeed."""
        marker = (provider, key_id, refund_key, fault)
        with self._lock:
            if marker in self._first_calls:
                return False
            self._first_calls.add(marker)
            return True

    # --- nonce / timestamp checks ---------------------------------------------------------------

    def accept_increasing_nonce(self, provider: str, key_id: str, nonce: int) -> bool:
        """Strictly increasing per key, as CoinCorner (and exchanges) enforce."""
        if not self.config.strict_nonce.get(provider, provider == "coincorner"):
            return True
        with self._lock:
            last = self._last_nonce.get((provider, key_id), -1)
            if nonce <= last:
                self.counters[f"{provider}:nonce_rejections"] = self.counters.get(f"{provider}:nonce_rejections", 0) + 1
                return False
            self._last_nonce[(provider, key_id)] = nonce
            return True

    def accept_timestamp(self, provider: str, key_id: str, ts_ms: int, signature: str) -> str | None:
        """None when fresh and not replayed; else why not."""
        now_ms = int(time.time() * 1000)
        if abs(now_ms - ts_ms) > self.config.timestamp_window_ms:
            return "stale timestamp"
        with self._lock:
            cutoff = time.time() - self.config.timestamp_window_ms / 1000 * 2
            if len(self._seen_nonces) > 100_000:
                self._seen_nonces = {k: t for k, t in self._seen_nonces.items() if t > cutoff}
            marker = (f"{provider}:{key_id}", f"{ts_ms}:{signature}")
            if marker in self._seen_nonces:
                return "replayed nonce"
            self._seen_nonces[marker] = time.time()
        if self.config.strict_nonce.get(provider, False) and not self.accept_increasing_nonce(provider, key_id, ts_ms):
            return "nonce not increasing"
        return None

    def take_rate_token(self, key_id: str) -> float | None:
        """None when allowed; else seconds until a token is available (for Retry-After)."""
        rate = self.config.rate_limit.get(key_id)
        if not rate:
            return None
        now = time.monotonic()
        with self._lock:
            burst = max(rate, 1.0)  # a rate below 1/s must still let one call through
            tokens, updated = self._buckets.get(key_id, (burst, now))
            tokens = min(burst, tokens + (now - updated) * rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                # Calls let through, so tests can measure the observed rate on a limited key.
                self.counters[f"{key_id}:allowed"] = self.counters.get(f"{key_id}:allowed", 0) + 1
                return None
            self._buckets[key_id] = (tokens, now)
            self.counters[f"{key_id}:rate_limited"] = self.counters.get(f"{key_id}:rate_limited", 0) + 1
            return (1 - tokens) / rate

    # --- ledger ---------------------------------------------------------------------------------

    def find(self, provider: str, key_id: str, refund_key: str) -> LedgerEntry | None:
        return self.ledger.get((provider, key_id, refund_key))

    def record_create(
        self,
        provider: str,
        key_id: str,
        refund_key: str,
        *,
        provider_refund_id: str,
        scenario: Scenario,
        amount: Decimal | None = None,
        destination: str | None = None,
        currency: str | None = None,
        draft: bool = False,
    ) -> tuple[LedgerEntry, bool]:
        """Count a create call; create the refund unless it exists. Returns (entry, created_now).
        `draft`: the entry this call would create, neither stored nor counted (to render an answer
        before the commit, as TRICKLED_ANSWER does)."""
        fresh = LedgerEntry(
            provider=provider,
            key_id=key_id,
            refund_key=refund_key,
            provider_refund_id=provider_refund_id,
            scenario=int(scenario),
            created_at=time.time(),
            amount=None if amount is None else format(amount, "f"),
            destination=destination,
            currency=currency,
        )
        if draft:
            return fresh, True
        with self._lock:
            entry = self.ledger.get((provider, key_id, refund_key))
            if entry is None:
                entry = fresh
                self.ledger[(provider, key_id, refund_key)] = entry
                entry.create_calls, entry.created = 1, 1
                return entry, True
            entry.create_calls += 1
            return entry, False

    def count_create_call(self, provider: str, key_id: str, refund_key: str) -> None:
        """A create call refused before creating (duplicate, one-per-invoice): still counted."""
        with self._lock:
            entry = self.ledger.get((provider, key_id, refund_key))
            if entry is not None:
                entry.create_calls += 1

    def phase(self, entry: LedgerEntry, now: float | None = None) -> Phase:
        now = time.time() if now is None else now
        start = entry.funded_at if entry.scenario == Scenario.ACTION_REQUIRED else entry.created_at
        if start is None:
            return Phase.PENDING
        step = self.config.step_seconds * (10 if entry.scenario == Scenario.SLOW else 1)
        elapsed = now - start
        if elapsed < step:
            return Phase.PENDING
        if elapsed < 2 * step:
            return Phase.PROCESSING
        return Phase.FINAL

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "refunds": [asdict(e) for e in self.ledger.values()],
                "counters": dict(self.counters),
            }

    def reset(self) -> None:
        with self._lock:
            self.ledger.clear()
            self.counters.clear()
            self._last_nonce.clear()
            self._seen_nonces.clear()
            self._buckets.clear()
            self._first_calls.clear()
        for handle, done in self._late.items():  # a late create must not land in the emptied ledger
            handle.cancel()
            done.cancel()  # nor its withheld request wait for it forever
        self._late.clear()

    async def hang(self) -> None:
        await asyncio.sleep(self.config.hang_seconds)

    # --- timing faults --------------------------------------------------------------------------

    async def timing_fault(
        self,
        scenario: Scenario,
        provider: str,
        key_id: str,
        refund_key: str,
        commit: Commit,
        draft: Callable[[], Response],
    ) -> Response | None:
        """The answer to a create under a timing fault, on the refund's first create call only; None:
        answer normally. `commit` is the provider's normal create path; `draft` renders the answer it
        would give without committing (the trickle sends it before the commit)."""
        if scenario not in TIMING_FAULTS or not self.first_time(provider, key_id, refund_key, scenario.name):
            return None
        self.count(provider, f"timing:{scenario.name.lower()}")  # chaos reports what it injected
        if scenario == Scenario.DELAYED_EXECUTION:
            return await self.execute_late(commit)
        if scenario == Scenario.TRICKLED_ANSWER:
            return self.trickle(draft(), commit)
        commit()
        return LostAnswer()

    def later(self, delay: float, commit: Commit) -> asyncio.Future[Response]:
        """Run `commit` in `delay` seconds on the event loop, whatever becomes of the request that asked
        for it (its client may be long gone): a provider executes what it received."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Response] = loop.create_future()

        def fire() -> None:
            self._late.pop(handle, None)
            try:
                answer = commit()
            except Exception as exc:  # the withheld request fails with it rather than wait forever
                if not done.done():
                    done.set_exception(exc)
                raise
            if not done.done():  # the withheld request may have been cancelled (server shutdown)
                done.set_result(answer)

        handle = loop.call_later(max(0.0, delay), fire)
        self._late[handle] = done
        return done

    async def execute_late(self, commit: Commit) -> Response:
        """DELAYED_EXECUTION: create `execute_delay_seconds` after receipt; withhold the answer meanwhile."""
        done = self.later(self.config.execute_delay_seconds, commit)
        await asyncio.sleep(self.config.hang_seconds)
        return await done  # a client still waiting gets the late create's own answer

    def trickle(self, draft: Response, commit: Commit) -> StreamingResponse:
        """TRICKLED_ANSWER: `draft`'s status and headers now, its body a byte per `trickle_interval`."""
        body = bytes(draft.body) or TRICKLE_FILLER
        headers = dict(draft.headers)
        headers["content-length"] = str(len(body))  # a correct length: the last byte ends the answer
        return StreamingResponse(self._trickled(body, commit), draft.status_code, headers)

    async def _trickled(self, body: bytes, commit: Commit) -> AsyncIterator[bytes]:
        interval = self.config.trickle_interval
        sent = 0
        try:
            while sent < len(body):
                await asyncio.sleep(interval)
                yield body[sent : sent + 1]
                sent += 1
        finally:
            if sent == len(body):
                commit()  # the whole answer is out: committed late
            else:  # the client hung up: the provider still commits when its answer would have been out
                self.later((len(body) - sent) * interval, commit)


class AnswerLost(Exception):
    """Raised inside the app after a committed create, so the server drops the connection unanswered."""


class LostAnswer(Response):
    """ANSWER_LOST: no status line, no headers, a closed connection.

    Returning without an answer, or raising before one, makes uvicorn answer 500 itself. So this starts
    a response the server must refuse (a header value with a line break: uvicorn's h11 and httptools
    protocols both validate before writing a byte, after marking the response started), then raises:
    a server with a started response closes the socket. Were the start written anyway, the client
    would still see the connection close mid-answer: a transport error either way."""

    def __init__(self) -> None:
        super().__init__(b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(Exception):  # the refusal we asked for
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-sandbox", b"answer\nlost")]})
        raise AnswerLost("ANSWER_LOST: the create was committed; its answer is dropped on purpose")


class QuietAnswerLost(logging.Filter):
    """Keeps uvicorn's "Exception in ASGI application" traceback for AnswerLost out of the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], AnswerLost))


def header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name) or headers.get(name.lower())


def load_sandbox_secrets(accounts_file: Path | None) -> dict[str, str]:
    if accounts_file is None:
        return {}
    import tomllib

    table = tomllib.loads(accounts_file.read_text(encoding="utf-8")).get("sandbox", {})
    return {
        key: resolve_secret(str(ref), account="sandbox", key=key, base_dir=accounts_file.parent).get_secret_value()
        for key, ref in table.items()
    }
