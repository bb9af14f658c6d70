"""Accepting a stockout event: idempotent by event_id, one job per imp_uid, by constraints alone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC

from app.config import Settings
from app.db import UnitOfWork
from app.errors import EventConflict
from app.jobs import store
from app.jobs.decide import Method, OnPaid
from app.schemas import EventCreate


@dataclass(frozen=True)
class Accepted:
    created: bool  # False for a replay of a known event


def content_hash(event: EventCreate) -> str:
    """A digest of what the event says, blind to payment order and repeated imp_uids."""
    occurred = event.occurred_at.astimezone(UTC).isoformat() if event.occurred_at else None
    payments = sorted(
        (p.imp_uid, p.merchant_uid or "", p.pay_method) for p in event.unique_payments()
    )
    canonical = json.dumps(
        [event.sku, event.reason, occurred, payments, event.on_paid], separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def accept_event(uow: UnitOfWork, event: EventCreate, settings: Settings) -> Accepted:
    """Record the event and its jobs in the unit of work; the new jobs are published after it.

    Concurrent duplicates are settled by the primary key on events.event_id (the losers wait
    for the winner's commit, then see its row); concurrent events naming one imp_uid by the
    unique constraint on jobs.imp_uid.
    """
    digest = content_hash(event)
    received = store.insert_event(
        uow.conn, event.event_id, event.sku, event.reason, event.occurred_at, digest
    )
    if received is None:
        if store.event_hash(uow.conn, event.event_id) != digest:
            raise EventConflict(f"event {event.event_id} is known with different content")
        return Accepted(created=False)
    jobs = [
        store.NewJob(p.imp_uid, p.merchant_uid, Method(p.pay_method))
        for p in event.unique_payments()
    ]
    on_paid = OnPaid(event.on_paid or settings.on_paid)
    created = store.insert_jobs(
        uow.conn, event.event_id, jobs, on_paid, event.reason, settings.dispatch_grace_seconds
    )
    uow.publish(created)
    return Accepted(created=True)
