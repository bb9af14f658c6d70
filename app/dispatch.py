"""Publishing job ids to the broker, after the commit, as a wake-up call that may be lost."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from functools import lru_cache

import structlog
from celery import Celery

from app.config import get_settings

QUEUE = "stockout"
CANCEL_TASK = "stockout.cancel_jobs"
SWEEP_TASK = "stockout.sweep"

log = structlog.get_logger(__name__)


def broker_options() -> dict[str, object]:
    """Redis transport options shared by the API's publisher and the worker."""
    return {
        # Fail fast when Redis is down: the job is already safe in Postgres.
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 10,
        # Unacked messages come back after this; the lease in Postgres makes that harmless.
        "visibility_timeout": 3600,
    }


@lru_cache
def publisher() -> Celery:
    """A Celery app used only to send tasks by name (the API never imports the worker)."""
    settings = get_settings()
    celery = Celery("stockout-publisher", broker=settings.redis_url, set_as_current=False)
    celery.conf.update(
        broker_transport_options=broker_options(),
        broker_connection_retry=False,
        broker_connection_timeout=2,
        task_default_queue=QUEUE,
    )
    return celery


def chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def publish_jobs(job_ids: Sequence[uuid.UUID | str], celery: Celery | None = None) -> int:
    """Send the ids in small batches; returns how many batches reached the broker.

    A failure is logged, never raised: the jobs are committed and the sweeps will publish
    them again once their dispatch grace has passed.
    """
    settings = get_settings()
    app = celery or publisher()
    sent = 0
    ids = [str(i) for i in job_ids]
    for batch in chunks(ids, settings.dispatch_batch_size):
        try:
            app.send_task(CANCEL_TASK, args=[batch], queue=QUEUE, retry=False, ignore_result=True)
        except Exception as exc:  # any broker failure: the sweep is the safety net
            log.warning(
                "publish_failed",
                jobs=len(ids) - sent * settings.dispatch_batch_size,
                error=type(exc).__name__,
            )
            return sent
        sent += 1
    return sent
