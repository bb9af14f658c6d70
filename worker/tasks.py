"""The job tasks: thin wrappers that hand a message's jobs to the runner, and the sweep."""

from __future__ import annotations

import psycopg
import psycopg_pool
import redis
import structlog
from celery.exceptions import Reject

from app.config import get_settings
from app.jobs import store
from app.kit.db import pool
from app.kit.dispatch import CANCEL_TASK, QUEUE, SWEEP_TASK, PublishFailed, send_now
from app.kit.redis_conn import get_redis
from worker.celery_app import app
from worker.process_pool import ChildLost
from worker.runner import RUNNER

log = structlog.get_logger("worker")
SWEEP_MAX_ROUNDS = 20


@app.task(name=CANCEL_TASK)
def cancel_jobs(job_ids: list[str]) -> int:
    """Claim what is ready among `job_ids` and run each; returns how many were run.

    A message is a wake-up for up to DISPATCH_BATCH_SIZE jobs: they go to the job threads in
    groups (runner.group_size), so a message keeps several calls in flight, not one, while
    each group shares one hand-over and one database connection.
    """
    try:
        return RUNNER.run_message(job_ids, app.conf.worker_concurrency)
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        # Postgres unreachable: the jobs are queued there, and the sweep sends their message
        # again once it answers. One line, not a traceback per message.
        log.warning("database_unreachable", jobs=len(job_ids), error=type(exc).__name__)
        return 0
    except ChildLost:
        # As task_reject_on_worker_lost does for a prefork child: the message goes back to
        # the queue. Jobs the child had claimed keep their lease and are swept when it ends;
        # the others are terminal or leased, so running the message again costs a claim each.
        raise Reject("child process lost", requeue=True) from None


@app.task(name=SWEEP_TASK)
def sweep() -> int:
    """Publish due retry_wait jobs, queued jobs whose message was lost, and expired leases.

    Queued jobs only while the queue is empty: during a backlog longer than the dispatch
    grace, sending their messages again would only add wake-ups (and claims) behind the
    ones already waiting, every grace period, and so slow the drain that made them late. A
    message truly lost is sent again once the queue has drained.
    """
    settings = get_settings()
    try:
        with get_redis() as broker:
            queued = broker.llen(QUEUE) == 0
    except redis.RedisError:
        log.warning("sweep_skipped_broker_unreachable")
        return 0  # nothing could be sent either; the next sweep tries again
    total = 0
    with pool().connection() as conn:
        for _ in range(SWEEP_MAX_ROUNDS):
            ids = store.take_due(
                conn, settings.sweep_batch_size, settings.dispatch_grace_seconds, queued=queued
            )
            if ids:
                try:
                    send_now(ids, celery=app)
                except PublishFailed:
                    break  # their due_at moved on: the next sweep after the grace tries again
            total += len(ids)
            if len(ids) < settings.sweep_batch_size:
                break
    if total:
        log.info("sweep_dispatched", jobs=total)
    return total
