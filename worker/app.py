"""The Celery app. Messages carry ids only (JSON); state lives in SQL, so results are ignored.

The worker refuses to start when the settings break an invariant from CELERY-PITFALLS.md:
a countdown or time limit at or above the visibility timeout means duplicate runs.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init
from kombu import Exchange, Queue

from config.settings import Settings, get_settings

# The queues Celery consumes. Door (b)'s queue is read by refundq's own consumer (worker/intake.py),
# which no message shape can stop; Celery's consumers read through worker/broker.py's gate.
QUEUES = ("refundq.submit", "refundq.poll")
INTAKE_QUEUE = "refundq.intake"
# Every task refundq registers, and its queue: one table, so no task falls to a default queue
# (tests/test_app.py walks the registered tasks against it).
ROUTES = {
    "refundq.submit": "refundq.submit",
    "refundq.submit_many": "refundq.submit",
    "refundq.poll": "refundq.poll",
    "refundq.reconcile": "refundq.poll",
    "refundq.dispatch": "refundq.poll",
}


def send_budget(settings: Settings) -> float:
    """The longest a send can take after its claim was renewed: a rate token (re-signs are admitted
    after the renewal), the ordered lane, a nonce, then the call's one deadline."""
    from worker.nonces import MAX_WAIT

    call = settings.http_connect_timeout + settings.http_read_timeout
    return settings.throttle_giveback + settings.lane_wait + MAX_WAIT + call


def celery_config(settings: Settings) -> dict[str, Any]:
    vt = {"visibility_timeout": settings.visibility_timeout}
    return {
        "broker_url": settings.redis_url,
        "broker_transport": "worker.broker:Transport",
        "broker_transport_options": vt,
        "result_backend_transport_options": vt,
        # Also top level: some kombu/celery code paths read it there (celery #7651).
        "visibility_timeout": settings.visibility_timeout,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_expires": 3600,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        # One direct exchange per queue, named like it: what any Celery client creates for `queue=NAME`.
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        "task_default_queue": "refundq.submit",
        "task_routes": {
            **{name: {"queue": queue} for name, queue in ROUTES.items()},
            "refundq.intake": {"queue": INTAKE_QUEUE},  # sent by Python producers, never run by Celery
        },
        "refundq_max_countdown": settings.max_countdown,
        "refundq_http_budget": settings.http_connect_timeout + settings.http_read_timeout,
        "refundq_send_budget": send_budget(settings),
        "refundq_lease_margin": settings.lease_margin,
        "refundq_lease_seconds": settings.lease_seconds,
    }


def check_invariants(conf: Any) -> list[str]:
    """Every broken invariant, in words an operator can act on. Empty when all hold."""
    problems = []
    vt = (conf.broker_transport_options or {}).get("visibility_timeout")
    if not vt:
        problems.append("broker_transport_options.visibility_timeout is not set")
        vt = 3600
    if (conf.result_backend_transport_options or {}).get("visibility_timeout") != vt:
        problems.append("result_backend_transport_options.visibility_timeout differs from the broker's")
    if not conf.task_acks_late:
        problems.append("task_acks_late must be True (a crash would lose the task)")
    if not conf.task_reject_on_worker_lost:
        problems.append("task_reject_on_worker_lost must be True (a killed child would ack its task)")
    if conf.worker_prefetch_multiplier != 1:
        problems.append(f"worker_prefetch_multiplier must be 1, is {conf.worker_prefetch_multiplier}")
    if not conf.task_ignore_result:
        problems.append("task_ignore_result must be True (state lives in SQL; results would fill Redis)")
    if conf.accept_content != ["json"] or conf.task_serializer != "json":
        problems.append("only JSON may be accepted and sent (no pickle)")
    soft, hard = conf.task_soft_time_limit, conf.task_time_limit
    if not soft or not hard or not soft < hard:
        problems.append(f"task_soft_time_limit ({soft}) must be set and below task_time_limit ({hard})")
    if hard and hard >= vt:
        problems.append(f"task_time_limit ({hard}s) must be below the visibility timeout ({vt}s)")
    countdown = conf.get("refundq_max_countdown", 0)
    if countdown >= vt:
        problems.append(f"the longest countdown ({countdown}s) must be below the visibility timeout ({vt}s)")
    budget = conf.get("refundq_http_budget", 0)
    if soft and budget >= soft:
        problems.append(f"HTTP connect+read timeouts ({budget}s) must be below task_soft_time_limit ({soft}s)")
    lease = conf.get("refundq_lease_seconds", 0)
    if hard and lease <= hard:
        problems.append(f"lease_seconds ({lease}s) must exceed task_time_limit ({hard}s)")
    send = conf.get("refundq_send_budget", budget)
    margin = conf.get("refundq_lease_margin", 5.0)
    if lease <= send + margin:
        # The claim is renewed before each send: the send's every wait and the call must end inside
        # the lease, or the dispatcher takes the claim over while the request may still be executed.
        problems.append(
            f"lease_seconds ({lease}s) must exceed the longest send ({send:g}s: rate, lane and nonce waits"
            f" plus the call deadline) by {margin:g}s"
        )
    return problems


def make_celery(settings: Settings) -> Celery:
    app = Celery("refundq", include=["tasks.refunds"])
    app.conf.update(celery_config(settings))
    return app


celery_app = make_celery(get_settings())


@worker_init.connect
def _refuse_broken_config(sender: Any = None, **_: Any) -> None:
    problems = check_invariants(celery_app.conf)
    if problems:
        # SystemExit passes through Celery's signal dispatch (it only catches Exception).
        raise SystemExit("refundq worker refuses to start:\n  - " + "\n  - ".join(problems))
