"""Events newest first, each with its progress: how many of its jobs are terminal, by status."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import Connection

from app.events.schemas import EventPage, EventPublic, EventSummary
from app.jobs.queries import EVENT_IDS, JOB_COLUMNS, as_public
from app.jobs.status import WAITING_SQL
from app.kit import cursors
from app.kit.db import rows
from app.kit.scope import Accounts, as_list, in_accounts

CURSOR_KIND = "events"

# One page of events, then each event's job counts by status (a LATERAL aggregate per row,
# so the cost follows the page, not the table).
PAGE = f"""
SELECT e.account, e.event_id, e.sku, e.reason, e.occurred_at, e.received_at,
       coalesce(c.counts, '{{}}'::jsonb) AS counts,
       coalesce(c.total, 0) AS total, coalesce(c.terminal, 0) AS terminal
FROM events e
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(s.status, s.n) AS counts, sum(s.n) AS total,
           sum(s.n) FILTER (WHERE NOT s.waiting) AS terminal
    FROM (
        SELECT j.status, (j.{WAITING_SQL}) AS waiting, count(*) AS n
        FROM event_jobs ej JOIN jobs j ON j.id = ej.job_id
        WHERE ej.account = e.account AND ej.event_id = e.event_id GROUP BY 1, 2
    ) s
) c ON TRUE
WHERE __WHERE__
ORDER BY e.received_at DESC, e.event_id DESC LIMIT %(limit)s
"""  # noqa: S608


def list_events(
    conn: Connection[Any], limit: int, cursor: str | None = None, accounts: Accounts = None
) -> EventPage:
    """One page of these accounts' events, newest first by (received_at, event_id)."""
    where = in_accounts("e.account")
    params: dict[str, Any] = {"limit": limit + 1, "accounts": as_list(accounts)}
    if cursor is not None:
        params["c_at"], params["c_id"] = cursors.decode(CURSOR_KIND, cursor, str)
        where += " AND (e.received_at, e.event_id) < (%(c_at)s, %(c_id)s)"
    found = rows(conn, PAGE.replace("__WHERE__", where), params)
    items = [
        EventSummary(
            account=r.account,
            event_id=r.event_id,
            sku=r.sku,
            reason=r.reason,
            occurred_at=r.occurred_at,
            received_at=r.received_at,
            jobs_total=int(r.total),
            jobs_terminal=int(r.terminal),
            counts={k: int(v) for k, v in r.counts.items()},
        )
        for r in found[:limit]
    ]
    next_cursor = None
    if len(found) > limit:
        last = items[-1]
        next_cursor = cursors.encode(CURSOR_KIND, last.received_at, last.event_id)
    return EventPage(items=items, next_cursor=next_cursor)


def get_event(conn: Connection[Any], account: str, event_id: str) -> EventPublic | None:
    """One event of the account with its jobs in the order the event named them, or None."""
    key = (account, event_id)
    found = rows(
        conn,
        "SELECT account, event_id, sku, reason, occurred_at, received_at FROM events "
        "WHERE account = %s AND event_id = %s",
        key,
    )
    if not found:
        return None
    event = found[0]
    jobs = rows(
        conn,
        f"SELECT {JOB_COLUMNS}, {EVENT_IDS} FROM event_jobs ej JOIN jobs j ON j.id = ej.job_id "  # noqa: S608
        "WHERE ej.account = %s AND ej.event_id = %s ORDER BY ej.position",
        key,
    )
    return EventPublic(
        account=event.account,
        event_id=event.event_id,
        sku=event.sku,
        reason=event.reason,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
        jobs=as_public(jobs),
    )


def event_job_ids(conn: Connection[Any], account: str, event_id: str) -> list[uuid.UUID]:
    """The ids of the jobs an event names."""
    found = conn.execute(
        "SELECT job_id FROM event_jobs WHERE account = %s AND event_id = %s", (account, event_id)
    )
    return [r[0] for r in found.fetchall()]
