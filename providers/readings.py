"""One status table, read the same way by every adapter's poll and lookup (contract: `providers.base.Reading`).

Pure helpers, no I/O. An adapter reads its table with `providers.base.read_status` (an undocumented raw status
raises UnmappedStatusError) and hands the entry to `read_result`, so a poll and a lookup of the same answer can
never disagree: they differ only where the contract says they do (NO_REFUND: PENDING on a poll, "absent" on a
lookup).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.base import ErrorKind, ProviderError, RawStatus, Reading, RefundStatus, StatusResult


def refund_status(entry: RawStatus, provider: str, raw: str) -> RefundStatus:
    """The unified status of a REFUND entry. For providers whose records are refunds only (Cobo, CoinVoyage):
    any other reading there is a table bug, reported as unmapped rather than guessed."""
    if entry.reading is not Reading.REFUND or entry.status is None:
        raise ProviderError(
            ErrorKind.UNMAPPED, f"{provider}: status {raw!r} is not a refund status here", raw_status=raw
        )
    return entry.status


def read_result(
    entry: RawStatus,
    raw: str,
    provider: str,
    *,
    lookup: bool,
    what: str,
    provider_refund_id: str | None,
    detail: Mapping[str, Any],
    http_status: int | None = None,
) -> StatusResult | None:
    """What one answer says about our refund, per the Reading contract.

    `what` names the record state in words for reasons and errors, e.g. "order status 2 (Complete)".
    Returns None only for NO_REFUND on a lookup (the proof of absence; the worker adds the settle time).
    """
    match entry.reading:
        case Reading.REFUND:
            status = refund_status(entry, provider, raw)
            return StatusResult(status, raw, provider_refund_id, detail=detail)
        case Reading.NO_REFUND:
            if lookup:
                return None
            # We hold the provider's acceptance: the refund is late, not absent. The worker's deadline applies.
            reason = f"refund not visible yet: {what}"
            return StatusResult(RefundStatus.PENDING, raw, provider_refund_id, reason=reason, detail=detail)
        case Reading.UNSURE:
            raise ProviderError(
                ErrorKind.UNSURE,
                f"{provider}: {what} cannot tell whether the refund exists yet",
                raw_status=raw,
                http_status=http_status,
            )
        case Reading.CONTRADICTS:
            # Never REJECTED: a send may have moved money, and this record cannot say where it went.
            reason = f"{what} contradicts a refund of ours: a person must reconcile it"
            return StatusResult(RefundStatus.NEEDS_ATTENTION, raw, provider_refund_id, reason=reason, detail=detail)
    raise AssertionError(f"unhandled reading {entry.reading!r}")  # pragma: no cover - Reading is closed
