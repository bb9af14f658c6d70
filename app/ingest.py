"""Accepting a stockout event: idempotent by event_id, one job per imp_uid, by constraints alone."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.errors import EventConflict
from app.schemas import EventCreate
from app.webhooks.outbox import connection_of, record_linked


@dataclass(frozen=True)
class Accepted:
    created: bool  # False for a replay of a known event
    new_job_ids: list[uuid.UUID]  # jobs this event created: publish them after the commit


def content_hash(event: EventCreate) -> str:
    """A digest of what the event says, blind to payment order and repeated imp_uids."""
    occurred = event.occurred_at.astimezone(UTC).isoformat() if event.occurred_at else None
    payments = sorted((p.imp_uid, p.merchant_uid or "") for p in event.unique_payments())
    canonical = json.dumps([event.sku, event.reason, occurred, payments], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def accept_event(session: Session, event: EventCreate, grace_seconds: float) -> Accepted:
    """Record the event and its jobs in the caller's transaction.

    Concurrent duplicates are settled by the primary key on events.event_id (the losers wait
    for the winner's commit, then see its row); concurrent events naming one imp_uid by the
    unique constraint on jobs.imp_uid. imp_uids are inserted in sorted order so two such
    events always lock in the same order and cannot deadlock.
    """
    digest = content_hash(event)
    inserted = session.execute(
        text(
            "INSERT INTO events (event_id, sku, reason, occurred_at, content_hash) "
            "VALUES (:e, :sku, :reason, :occurred, :hash) ON CONFLICT (event_id) DO NOTHING "
            "RETURNING event_id"
        ),
        {
            "e": event.event_id,
            "sku": event.sku,
            "reason": event.reason,
            "occurred": event.occurred_at,
            "hash": digest,
        },
    ).first()
    if inserted is None:
        known = session.execute(
            text("SELECT content_hash FROM events WHERE event_id = :e"), {"e": event.event_id}
        ).scalar_one()
        if known != digest:
            raise EventConflict(f"event {event.event_id} is known with different content")
        return Accepted(created=False, new_job_ids=[])

    payments = event.unique_payments()
    ordered = sorted(payments, key=lambda p: p.imp_uid)
    created = session.execute(
        text(
            "INSERT INTO jobs (imp_uid, merchant_uid, due_at) "
            "SELECT u.imp_uid, u.merchant_uid, now() + make_interval(secs => :grace) "
            "FROM unnest(CAST(:imp_uids AS text[]), CAST(:merchant_uids AS text[])) "
            "AS u(imp_uid, merchant_uid) "
            "ON CONFLICT (imp_uid) DO NOTHING RETURNING id, imp_uid"
        ),
        {
            "imp_uids": [p.imp_uid for p in ordered],
            "merchant_uids": [p.merchant_uid for p in ordered],
            "grace": grace_seconds,
        },
    ).all()
    ids = {r.imp_uid: r.id for r in created}
    existing = [p.imp_uid for p in payments if p.imp_uid not in ids]
    if existing:
        rows = session.execute(
            text("SELECT id, imp_uid FROM jobs WHERE imp_uid = ANY(:u)"), {"u": existing}
        ).all()
        ids.update({r.imp_uid: r.id for r in rows})
    session.execute(
        text(
            "INSERT INTO event_jobs (event_id, job_id, position) "
            "SELECT :e, u.job_id, u.position FROM unnest(CAST(:job_ids AS uuid[])) "
            "WITH ORDINALITY AS u(job_id, position)"
        ),
        {"e": event.event_id, "job_ids": [ids[p.imp_uid] for p in payments]},
    )
    if existing and not created:
        # Only jobs that already exist: the event may be complete already (event.completed).
        record_linked(connection_of(session), event.event_id, [ids[u] for u in existing])
    return Accepted(created=True, new_job_ids=[r.id for r in created])
