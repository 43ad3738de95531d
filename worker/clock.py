"""This process's wall clock, with an optional skew for fault injection (`REFUNDQ_CLOCK_SKEW`,
seconds, set by `refundq chaos` on some workers). Nothing that decides safety reads it: leases,
settle times and due times are judged on the database's clock, nonces on Redis's."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

SKEW = float(os.environ.get("REFUNDQ_CLOCK_SKEW") or 0)


def now() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=SKEW)


def time_ns() -> int:
    return time.time_ns() + int(SKEW * 1_000_000_000)
