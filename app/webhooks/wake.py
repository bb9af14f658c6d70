"""Wake-up calls for the deliverer, published after a commit. Losing one costs only latency:
the messages are in Postgres and the periodic sweep finds whatever is due."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog
from celery import Celery

from app.kit.dispatch import QUEUE, publisher

DELIVER_TASK = "stockout.webhooks.deliver"
SWEEP_TASK = "stockout.webhooks.sweep"

log = structlog.get_logger(__name__)


def publish(endpoint_ids: Sequence[uuid.UUID | str], celery: Celery | None = None) -> int:
    """One delivery task per endpoint id; returns how many reached the broker (never raises)."""
    app = celery or publisher()
    sent = 0
    for endpoint_id in endpoint_ids:
        try:
            app.send_task(
                DELIVER_TASK, args=[str(endpoint_id)], queue=QUEUE, retry=False, ignore_result=True
            )
        except Exception as exc:  # any broker failure: the sweep is the safety net
            log.warning("webhook_wakeup_failed", error=type(exc).__name__)
            return sent
        sent += 1
    return sent
