"""The Celery app's routing table and the startup checks that keep a claim longer than any send."""

from __future__ import annotations

import os

import pytest
from redis import Redis

from config.settings import Settings
from tests.conftest import TEST_REDIS_URL
from worker.app import QUEUES, celery_app, check_invariants, make_celery


def test_every_registered_task_has_a_route_to_a_consumed_queue() -> None:
    """A task without a route lands on the default queue: a beat-sent reconcile used to run on the
    submit queue. Walk what is registered, not a list kept by hand."""
    celery_app.loader.import_default_modules()
    ours = sorted(name for name in celery_app.tasks if name.startswith("refundq."))
    assert {"refundq.submit", "refundq.poll", "refundq.reconcile"} <= set(ours)
    assert "refundq.intake" not in ours  # door (b)'s queue is read by worker/intake.py, not Celery
    routes = celery_app.conf.task_routes
    for name in ours:
        assert name in routes, f"{name} has no route"
        queue = celery_app.amqp.router.route({}, name)["queue"].name
        assert queue == routes[name]["queue"] and queue in QUEUES, (name, queue)


# Task limits that every case below satisfies, so only the lease rule is under test.
LIMITS = {"task_soft_time_limit": 26, "task_time_limit": 30}


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        # 2 (rate token) + 5 (lane) + 0.5 (nonce) + 5 + 20 (call) = 32.5, plus the 5 s margin
        ({"lease_seconds": 35}, True),
        ({"lease_seconds": 40}, False),
        ({"lease_seconds": 40, "lane_wait": 10}, True),
        ({"lease_seconds": 40, "throttle_giveback": 6}, True),
        ({"lease_seconds": 40, "lease_margin": 8}, True),
    ],
)
def test_a_lease_that_a_send_could_outlive_is_refused(changes: dict[str, float], refused: bool) -> None:
    problems = check_invariants(make_celery(Settings(**LIMITS, **changes)).conf)  # type: ignore[arg-type]
    named = [p for p in problems if "longest send" in p]
    assert bool(named) is refused, problems
    assert all(f"lease_seconds ({changes['lease_seconds']}s)" in p for p in named)


def test_the_send_budget_counts_every_wait_and_the_call() -> None:
    from worker.app import send_budget

    s = Settings()
    assert send_budget(s) == s.throttle_giveback + s.lane_wait + 0.5 + s.http_connect_timeout + s.http_read_timeout


def test_leader_release_never_deletes_the_next_leaders_lease() -> None:
    """`release` was a GET then a DEL: if our lease expired and the next leader took it between the
    two, we deleted theirs and two dispatchers led. The proxy makes that interleaving happen."""
    from worker.dispatcher import LeaderLease

    real = Redis.from_url(TEST_REDIS_URL)
    key = f"lease-release-{os.getpid()}"

    class TakenOverBetweenGetAndDelete:
        taken = False

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def get(self, name: str) -> object:
            value = real.get(name)
            real.set(name, b"next-leader", px=5000)  # ours expired; the next leader took it
            self.taken = True
            return value

    proxy = TakenOverBetweenGetAndDelete()
    ours = LeaderLease(proxy, key, 5000)  # type: ignore[arg-type]
    try:
        assert ours.hold()
        real.set(key, b"next-leader", px=5000)
        ours.release()
        assert real.get(key) == b"next-leader"
        real.set(key, ours.token, px=5000)
        ours.release()  # a release that reads first lets the takeover in between: it must not delete it
        assert real.get(key) == (b"next-leader" if proxy.taken else None)
    finally:
        real.delete(key)
