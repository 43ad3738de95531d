"""One typed settings object, read from `REFUNDQ_*` environment variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REFUNDQ_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./refundq.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis key prefix for everything refundq stores beside Celery's own keys (nonces, locks, buckets).
    redis_prefix: str = "refundq"
    accounts_file: Path = Path("accounts.toml")

    log_format: str = Field(default="console", pattern="^(console|json)$")
    log_level: str = "INFO"

    # Celery / Redis. Every countdown and time limit must stay below the visibility timeout
    # (CELERY-PITFALLS #1, #5, #16); worker/app.py refuses to start otherwise.
    visibility_timeout: int = 300
    task_soft_time_limit: int = 60
    task_time_limit: int = 90
    max_countdown: int = 10
    worker_soft_shutdown_timeout: float = 30.0

    # HTTP to providers: connect/read well below the soft time limit.
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 20.0

    # Scheduling (seconds).
    dispatch_interval: float = 1.0
    dispatch_batch: int = 500
    lookup_max_pages: int = 50  # list-based lookups (CoinVoyage): 50 pages of 100 orders
    poll_batch: int = 50
    # A claim holds a row this long; longer than task_time_limit so a live task is never taken over.
    lease_seconds: int = 120
    # What a claim's lease must leave beyond the longest send (worker/app.py send_budget).
    lease_margin: float = Field(default=5.0, gt=0)
    publish_grace: float = 30.0
    poll_initial: float = 2.0
    poll_max: float = 300.0
    retry_initial: float = 2.0
    retry_max: float = 120.0
    max_attempts: int = 8
    deadline_hours: float = 72.0
    partial_deadline_hours: float = 24.0
    action_required_deadline_hours: float = 168.0
    action_required_poll: float = 600.0

    # Door (b) intake (worker/intake.py): messages per fetch, the size limit of one message, and
    # how long rejected messages are kept before the consumer prunes them.
    intake_batch: int = Field(default=500, ge=1, le=5000)
    intake_max_bytes: int = Field(default=64 * 1024, ge=1024)
    rejected_intake_days: float = Field(default=30.0, gt=0)

    # Bulk batches: rows per insert transaction; submit ids per fan-out message.
    batch_chunk: int = 10_000
    batch_publish_chunk: int = 500
    # Reconciliation (worker/reconcile.py): how often the dispatcher schedules it (seconds), how far
    # back terminal refunds are re-read (days), which fraction of those (1.0 = all), ids per task.
    # Its reads go through the engine's admission (each account's rate limit, breaker, lane).
    reconcile_interval: float = 3600.0
    reconcile_days: float = 7.0
    reconcile_sample: float = Field(default=1.0, gt=0, le=1)
    reconcile_group: int = 50

    # Shared per-key / per-account limits (issue #4). The ordered lane's TTL is connect + read
    # timeout + lane_ttl_margin, so it always outlives a request (a dead holder loses it then).
    lane_wait: float = Field(default=5.0, ge=0)  # longest wait for a key's ordered send lane
    lane_ttl_margin: float = Field(default=5.0, gt=0)
    # A wait for a rate token longer than this gives the refund back to the schedule (no sleeping).
    throttle_giveback: float = Field(default=2.0, ge=0)
    breaker_threshold: int = Field(default=5, ge=1)  # consecutive failures that open the breaker
    breaker_cooldown: float = Field(default=30.0, gt=0)  # seconds open before a half-open probe


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
