"""Webhook delivery tasks. A task is only a wake-up: the outbox in Postgres says what to send.

`stockout.webhooks.deliver(endpoint_id)` sends that endpoint's due messages one by one, each
under a lease, until none is left that it may take (the per-endpoint in-flight cap is kept in
Postgres). `stockout.webhooks.sweep` (beat) wakes a sender for every endpoint with due
messages: retries whose time has come, wake-ups lost with Redis, leases of dead senders.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime

import structlog

from app import tracing
from app.config import Settings, get_settings
from app.kit import metrics
from app.kit.db import pool
from app.kit.dispatch import DELIVER_TASK, WEBHOOK_SWEEP_TASK, send_deliveries
from app.webhooks import claims, delivery, signing, urls
from worker.celery_app import app

log = structlog.get_logger("worker.webhooks")

# At most this many threads of a worker process send webhooks at once, whatever the queue
# holds: the rest stay free for cancellations. A wake-up that finds no slot does nothing; the
# sweep wakes the endpoint again.
DELIVERY_SLOTS = 16
_slots = threading.BoundedSemaphore(DELIVERY_SLOTS)
# One task stops after this long (and leaves the rest to the next wake-up), so a backlog
# does not pin a thread for ever.
TASK_BUDGET_SECONDS = 60.0
_rng = random.Random()


def lease_seconds(settings: Settings) -> float:
    """A claimed message stays ours for longer than one attempt can last."""
    return settings.webhook_timeout_seconds + 15


def body_of(payload: dict[str, object]) -> bytes:
    """The JSON body: type, timestamp, data (Postgres's jsonb keeps no key order)."""
    ordered = {k: payload[k] for k in ("type", "timestamp", "data") if k in payload}
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()


def deliver_one(settings: Settings, claimed: claims.Claimed) -> delivery.AttemptResult:
    """Sign and send one message now."""
    body = body_of(claimed.payload)
    headers = signing.headers(claimed.secrets, claimed.id, datetime.now(UTC), body.decode())
    with tracing.span("webhook delivery", _span_attributes(claimed), kind="client") as span:
        result = delivery.send(
            claimed.url,
            headers,
            body,
            settings.webhook_timeout_seconds,
            settings.webhook_allow_private_urls,
        )
        tracing.annotate(
            span,
            **{
                "stockout.webhook.outcome": result.outcome,
                "http.response.status_code": result.http_status,
            },
        )
    return result


def _span_attributes(claimed: claims.Claimed) -> dict[str, str | int]:
    """The receiver's host and port only: a URL's path and query may hold the receiver's own
    secret, and the signature headers are never recorded."""
    if not tracing.ACTIVE:
        return {}
    attributes: dict[str, str | int] = {
        "http.request.method": "POST",
        "stockout.webhook.message_id": claimed.id,
        "stockout.webhook.attempt": claimed.attempts,
    }
    try:
        _, host, port = urls.parse(claimed.url, allow_private=True)
    except urls.UrlRefused:
        return attributes
    return attributes | {"server.address": host, "server.port": port}


def drain(endpoint_id: uuid.UUID, settings: Settings) -> int:
    """Send the endpoint's due messages while this task may; returns how many were tried."""
    sent = 0
    until = time.monotonic() + TASK_BUDGET_SECONDS
    with pool().connection() as conn:
        while time.monotonic() < until:
            claimed = claims.claim(conn, endpoint_id, lease_seconds(settings))
            if claimed is None:
                break
            result = deliver_one(settings, claimed)
            status = delivery.next_status(result, claimed.attempts, settings.webhook_max_attempts)
            delay = delivery.retry_delay(
                claimed.attempts,
                settings.webhook_retry_base_seconds,
                settings.webhook_retry_max_seconds,
                _rng,
            )
            if not claims.finish(conn, claimed, result, status, delay):
                log.info("webhook_lease_lost", message_id=claimed.id)
            metrics.webhook_delivery(result.outcome)
            log.info(
                "webhook_attempt",
                message_id=claimed.id,
                endpoint_id=str(endpoint_id),
                outcome=result.outcome,
                http_status=result.http_status,
                status=status,
                attempts=claimed.attempts,
            )
            sent += 1
    return sent


@app.task(name=DELIVER_TASK)
def deliver(endpoint_id: str) -> int:
    """Send what is due for one endpoint, if a sending slot is free."""
    try:
        ep = uuid.UUID(str(endpoint_id))
    except ValueError:
        log.warning("bad_endpoint_id_in_message")
        return 0
    if not _slots.acquire(blocking=False):
        return 0
    try:
        return drain(ep, get_settings())
    finally:
        _slots.release()


@app.task(name=WEBHOOK_SWEEP_TASK)
def sweep() -> int:
    """Wake senders for every endpoint with due messages, as many as it has free slots."""
    with pool().connection() as conn:
        due = claims.due_endpoints(conn)
    ids = [ep for ep, n in due.items() for _ in range(n)]
    if ids:
        send_deliveries(ids, celery=app)
    return len(ids)
