"""Message bodies: the Job and Event shapes of the API, read on the caller's psycopg connection."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import namedtuple_row

from app.reads import EVENT_IDS, JOB_COLUMNS
from app.schemas import EventPublic, JobPublic, job_public

JOB = f"SELECT {JOB_COLUMNS}, {EVENT_IDS} FROM jobs j WHERE j.id = %(id)s"  # noqa: S608
EVENT = "SELECT event_id, sku, reason, occurred_at, received_at FROM events WHERE event_id = %(e)s"
EVENT_JOBS = (
    f"SELECT {JOB_COLUMNS}, {EVENT_IDS} FROM event_jobs ej JOIN jobs j ON j.id = ej.job_id "  # noqa: S608
    "WHERE ej.event_id = %(e)s ORDER BY ej.position"
)


def load_job(conn: Connection[Any], job_id: uuid.UUID) -> JobPublic | None:
    """The job as GET /v1/jobs/{id} shows it, as this transaction sees it."""
    row: Any = conn.cursor(row_factory=namedtuple_row).execute(JOB, {"id": job_id}).fetchone()
    return None if row is None else job_public(row, list(row.event_ids or []))


def load_event(conn: Connection[Any], event_id: str) -> EventPublic | None:
    """The event as GET /v1/stockout-events/{id} shows it, as this transaction sees it."""
    cur = conn.cursor(row_factory=namedtuple_row)
    event: Any = cur.execute(EVENT, {"e": event_id}).fetchone()
    if event is None:
        return None
    jobs: list[Any] = cur.execute(EVENT_JOBS, {"e": event_id}).fetchall()
    return EventPublic(
        event_id=event.event_id,
        sku=event.sku,
        reason=event.reason,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
        jobs=[job_public(r, list(r.event_ids or [])) for r in jobs],
    )


def body(event_type: str, data: JobPublic | EventPublic) -> dict[str, Any]:
    """`{"type", "timestamp", "data"}`, JSON-ready; the timestamp is the transition's."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"type": event_type, "timestamp": now, "data": data.model_dump(mode="json")}
