"""Reading events and jobs as the API shows them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, LiteralString

from psycopg import Connection
from psycopg.rows import namedtuple_row

from app.jobs.store import PUBLIC_COLUMNS
from app.schemas import EventPublic, JobPublic, job_public

JOB_COLUMNS = ", ".join(f"j.{c.strip()}" for c in PUBLIC_COLUMNS.split(","))
# The events that name a job, oldest first.
EVENT_IDS = (
    "(SELECT array_agg(l.event_id ORDER BY e.received_at, l.event_id) FROM event_jobs l "
    "JOIN events e ON e.event_id = l.event_id WHERE l.job_id = j.id) AS event_ids"
)


def _public(rows: Sequence[Any]) -> list[JobPublic]:
    return [job_public(r, list(r.event_ids or [])) for r in rows]


def rows(conn: Connection[Any], sql: LiteralString | str, params: Any = None) -> list[Any]:
    """All rows of a query, with attribute access."""
    cur = conn.cursor(row_factory=namedtuple_row)
    return cur.execute(sql, params).fetchall()


def load_jobs(
    conn: Connection[Any], where: str, params: dict[str, Any], tail: str = ""
) -> list[JobPublic]:
    """Jobs matching a SQL condition on `j`, each with its event ids."""
    sql = f"SELECT {JOB_COLUMNS}, {EVENT_IDS} FROM jobs j WHERE {where} {tail}"  # noqa: S608
    return _public(rows(conn, sql, params))


def get_job(conn: Connection[Any], job_id: uuid.UUID) -> JobPublic | None:
    """One job, or None."""
    jobs = load_jobs(conn, "j.id = %(id)s", {"id": job_id})
    return jobs[0] if jobs else None


def get_event(conn: Connection[Any], event_id: str) -> EventPublic | None:
    """One event with its jobs in the order the event named them, or None."""
    found = rows(
        conn,
        "SELECT event_id, sku, reason, occurred_at, received_at FROM events WHERE event_id = %s",
        (event_id,),
    )
    if not found:
        return None
    event = found[0]
    jobs = rows(
        conn,
        f"SELECT {JOB_COLUMNS}, {EVENT_IDS} FROM event_jobs ej JOIN jobs j ON j.id = ej.job_id "  # noqa: S608
        "WHERE ej.event_id = %s ORDER BY ej.position",
        (event_id,),
    )
    return EventPublic(
        event_id=event.event_id,
        sku=event.sku,
        reason=event.reason,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
        jobs=_public(jobs),
    )


def event_job_ids(conn: Connection[Any], event_id: str) -> list[uuid.UUID]:
    """The ids of the jobs an event names."""
    found = conn.execute("SELECT job_id FROM event_jobs WHERE event_id = %s", (event_id,))
    return [r[0] for r in found.fetchall()]
