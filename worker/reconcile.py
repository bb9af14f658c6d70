"""The `reconcile` task beat sends every RECONCILE_INTERVAL_SECONDS: a round over every
account (app/jobs/reconcile.py), with the outbox writing its webhook messages."""

from __future__ import annotations

import threading

from celery.signals import worker_shutting_down

from app.config import get_settings
from app.jobs.reconcile import reconcile_all
from app.kit.dispatch import RECONCILE_TASK
from app.kit.redis_conn import get_redis
from app.webhooks import outbox
from worker.celery_app import app

# Set at the first stop signal: a round ends between two batches, and its waits end at once,
# so the worker's stop is not held up by a round paced over minutes.
STOPPING = threading.Event()


@worker_shutting_down.connect
def _stop_rounds(**_: object) -> None:
    STOPPING.set()


@app.task(name=RECONCILE_TASK)
def reconcile() -> dict[str, int]:
    """Look up, settle what the payments prove, record drift; never a cancel or refund.
    Returns, per account, how many jobs it looked up."""
    settings = get_settings()
    with get_redis() as client:
        summaries = reconcile_all(
            settings,
            client,
            on_terminal=outbox.record_terminal,
            on_drift=outbox.record_drift,
            stop=STOPPING,
        )
    return {s.account: s.looked_up for s in summaries}
