"""The `reconcile` task beat sends every RECONCILE_INTERVAL_SECONDS: a round over every
account (app/jobs/reconcile.py), with the outbox writing its webhook messages."""

from __future__ import annotations

from app.config import get_settings
from app.jobs.reconcile import reconcile_all
from app.kit.dispatch import RECONCILE_TASK
from app.kit.redis_conn import get_redis
from app.webhooks import outbox
from worker.celery_app import app


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
        )
    return {s.account: s.looked_up for s in summaries}
