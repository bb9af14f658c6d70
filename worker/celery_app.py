"""The Celery app, configured for a money path. Each choice says why."""

from __future__ import annotations

from celery import Celery

from app.config import get_settings
from app.kit.dispatch import (
    QUEUE,
    RECONCILE_TASK,
    SWEEP_TASK,
    WEBHOOK_SWEEP_TASK,
    broker_options,
)

settings = get_settings()

app = Celery(
    "stockout",
    broker=settings.redis_url,
    include=["worker.boot", "worker.tasks", "worker.webhooks", "worker.reconcile"],
)
app.conf.update(
    task_default_queue=QUEUE,
    # Ack after the task ran, and requeue a task whose worker died: a lost message costs only
    # a duplicate, which the lease in Postgres turns away.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One message in hand per thread: nothing waits in a busy worker's buffer while another idles.
    worker_prefetch_multiplier=1,
    # No results are read, so none are stored (no backend growth).
    task_ignore_result=True,
    task_store_errors_even_if_ignored=False,
    # Many upstream calls in flight per node: a job spends almost all its time waiting on
    # iamport (50 ms and more). Celery's threads only receive, hand over and acknowledge
    # messages; the jobs run in one child process per usable core, each with its share of
    # these 32 as threads (worker/runner.py), so the cores are used without 32 processes.
    # (Prefork alone would run one task per process; threads alone are held to one core.)
    worker_pool="threads",
    worker_concurrency=32,
    # kombu's redis transport, with a restore of unacked messages that cannot stop a stop
    # (worker/broker.py).
    broker_transport="worker.broker:Transport",
    broker_transport_options=broker_options(),
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # When the broker connection drops, Celery can cancel running acks_late tasks (their
    # messages will be redelivered). A thread cannot be cancelled: Celery 5.6 exits the whole
    # worker trying (the threads pool has no kill_job). Nor is it needed:
    # the running task finishes its jobs in Postgres under their leases, and the redelivered
    # message later claims nothing. So a dropped connection leaves running tasks alone.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    # Soft shutdown: on SIGTERM, running tasks get this long to finish their current job.
    worker_soft_shutdown_timeout=10.0,
    worker_enable_soft_shutdown_on_idle=True,
    # Retries are scheduled in Postgres (next_attempt_at), never as ETA/countdown messages:
    # Redis redelivers those after the visibility timeout and they would run twice.
    worker_hijack_root_logger=False,
    # Celery's LoggingProxy makes every write to stdout/stderr its own record (a traceback
    # became one record per character); app.logs.capture_output does it per burst instead.
    worker_redirect_stdouts=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    # Beat rewrites its schedule file after every task it sends, so the file's age tells a
    # health check whether beat is alive (one small write per sweep interval).
    beat_sync_every=1,
    beat_schedule={
        "sweep": {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval_seconds,
            # A sweep stuck behind a backlog is useless once the next one is due.
            "options": {"queue": QUEUE, "expires": settings.sweep_interval_seconds * 2},
        },
        # Webhook messages due for a (re)try; same queue, so a plain worker consumes it.
        "webhooks-sweep": {
            "task": WEBHOOK_SWEEP_TASK,
            "schedule": settings.sweep_interval_seconds,
            "options": {"queue": QUEUE, "expires": settings.sweep_interval_seconds * 2},
        },
        # Look the payments of open and recently finished jobs up, in batches (worker/reconcile.py).
        "reconcile": {
            "task": RECONCILE_TASK,
            "schedule": settings.reconcile_interval_seconds,
            "options": {"queue": QUEUE, "expires": settings.reconcile_interval_seconds},
        },
    },
)
