"""`python -m bench.chaos`: the same run as `refundq chaos` (worker/chaos.py), for the bench folder."""

from __future__ import annotations

import argparse

from worker.chaos import ChaosOptions, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--refunds", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="default: REFUNDQ_DATABASE_URL")
    parser.add_argument("--redis-url", default=None, help="default: REFUNDQ_REDIS_URL; 'embedded': a private Redis")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--settle", type=float, default=120.0)
    parser.add_argument("--chaos-seconds", type=float, default=60.0)
    parser.add_argument("--kill-after-send", type=float, default=0.02)
    parser.add_argument("--restart-postgres", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--no-timing",
        dest="timing",
        action="store_false",
        help="no timing faults (delayed execution, trickled answer, answer lost) and no worker clock skew",
    )
    args = parser.parse_args(argv)
    return run_chaos(ChaosOptions(**vars(args)))


if __name__ == "__main__":
    raise SystemExit(main())
