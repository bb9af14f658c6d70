"""The outbox: webhook messages written in the very transaction of a job's transition.

`record_terminal` is the one place that decides what is sent. The jobs store calls it inside
its open transaction right after a job moved to a terminal status; the messages commit or
roll back with the transition, so none is lost to a crash, Redis or a receiver being down,
and none is sent for a transition that did not happen. Delivery is someone else's business
(worker/webhooks.py): it reads pending messages from here, woken through the unit of work's
after-commit channel.

The caller's transaction must be READ COMMITTED (Postgres's default): the event check below
relies on a statement seeing what other transactions committed while it waited for a lock.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from app.jobs.status import TERMINAL, WAITING_SQL
from app.kit.db import UnitOfWork
from app.webhooks.payloads import body, load_event, load_job

EVENT_COMPLETED = "event.completed"


# One cheap statement when there is no endpoint: the hot path's whole cost then. The table
# holds a handful of rows, so no index is needed; deleted endpoints are disabled too. An
# endpoint bound to an account takes that account's messages only (`_for_account`).
ENDPOINTS = "SELECT id, event_types, account FROM webhook_endpoints WHERE enabled"

# Lock the not-yet-completed events that name the job, in one fixed order (no deadlocks).
# Two transactions finishing an event's last two jobs queue up here; the second one's next
# statement sees the first one's job as terminal, so exactly one of them sees it complete.
LOCK_EVENTS = """
SELECT e.event_id FROM events e
WHERE e.completed_at IS NULL AND e.account = %(account)s
  AND e.event_id IN (SELECT l.event_id FROM event_jobs l WHERE l.job_id = %(id)s)
ORDER BY e.event_id
FOR UPDATE OF e
"""
COMPLETE = f"""
UPDATE events e SET completed_at = now()
WHERE e.account = %(account)s AND e.event_id = ANY(%(events)s) AND e.completed_at IS NULL
  AND NOT EXISTS (
    SELECT 1 FROM event_jobs l JOIN jobs j ON j.id = l.job_id
    WHERE l.account = e.account AND l.event_id = e.event_id AND j.{WAITING_SQL})
RETURNING e.event_id
"""  # noqa: S608
# Ingest linking jobs that already exist to a new event: wait for any transition of theirs
# still in flight (its UPDATE holds the row), so the next statement sees how it ended.
SHARE_JOBS = "SELECT id FROM jobs WHERE id = ANY(%(ids)s) ORDER BY id FOR SHARE"
INSERT = """
INSERT INTO webhook_messages (id, endpoint_id, event_type, job_id, event_id, payload)
SELECT m.id, m.endpoint_id, %(type)s, %(job_id)s, %(event_id)s, %(payload)s
FROM unnest(%(ids)s::text[], %(endpoints)s::uuid[]) AS m(id, endpoint_id)
"""


def new_message_id() -> str:
    """A webhook-id: `msg_`, the time in microseconds (so ids sort as they were made) and
    72 random bits."""
    return f"msg_{time.time_ns() // 1000:014x}{secrets.token_hex(9)}"


def _subscribed(endpoints: Sequence[Any], event_type: str) -> list[uuid.UUID]:
    return [e[0] for e in endpoints if e[1] is None or event_type in e[1]]


def _for_account(endpoints: Sequence[Any], account: str) -> list[Any]:
    """The endpoints that take this account's messages: its own and the operators' (NULL)."""
    return [e for e in endpoints if e[2] is None or e[2] == account]


def _insert(
    uow: UnitOfWork,
    endpoints: list[uuid.UUID],
    event_type: str,
    payload: dict[str, Any],
    job_id: uuid.UUID | None = None,
    event_id: str | None = None,
) -> None:
    uow.conn.execute(
        INSERT,
        {
            "ids": [new_message_id() for _ in endpoints],
            "endpoints": endpoints,
            "type": event_type,
            "job_id": job_id,
            "event_id": event_id,
            "payload": Jsonb(payload),
        },
    )
    uow.wake_endpoints(endpoints)


def _complete_events(
    uow: UnitOfWork, endpoints: list[uuid.UUID], account: str, candidates: Iterable[str]
) -> None:
    params = {"account": account, "events": list(candidates)}
    done = uow.conn.execute(COMPLETE, params).fetchall()
    for (event_id,) in sorted(done):
        event = load_event(uow.conn, account, event_id)
        if event is not None:
            _insert(
                uow, endpoints, EVENT_COMPLETED, body(EVENT_COMPLETED, event), event_id=event_id
            )


def record_terminal(uow: UnitOfWork, job_id: uuid.UUID) -> None:
    """Write the messages a job's terminal transition yields, in the caller's unit of work
    (their endpoints are woken once it commits).

    One `job.<status>` per enabled endpoint that takes it, and one `event.completed` per such
    endpoint for each event naming the job whose jobs are now all terminal (once per event).
    """
    conn = uow.conn
    endpoints = conn.execute(ENDPOINTS).fetchall()
    if not endpoints:
        return
    job = load_job(conn, job_id)
    if job is None or job.status not in TERMINAL:
        return
    endpoints = _for_account(endpoints, job.account)
    event_type = f"job.{job.status}"
    for_job = _subscribed(endpoints, event_type)
    if for_job:
        _insert(uow, for_job, event_type, body(event_type, job), job_id=job.id)
    for_events = _subscribed(endpoints, EVENT_COMPLETED)
    if for_events and job.event_ids:
        params = {"id": job_id, "account": job.account}
        locked = [r[0] for r in conn.execute(LOCK_EVENTS, params).fetchall()]
        if locked:
            _complete_events(uow, for_events, job.account, locked)


JOB_DRIFT = "job.drift"


def record_drift(uow: UnitOfWork, job_id: uuid.UUID) -> None:
    """Write the `job.drift` messages of a drift just recorded on the job, in the caller's unit
    of work: one per enabled endpoint of its account that takes them."""
    endpoints = uow.conn.execute(ENDPOINTS).fetchall()
    if not endpoints:
        return
    job = load_job(uow.conn, job_id)
    if job is None or job.drift is None:
        return
    for_job = _subscribed(_for_account(endpoints, job.account), JOB_DRIFT)
    if for_job:
        _insert(uow, for_job, JOB_DRIFT, body(JOB_DRIFT, job), job_id=job.id)


def record_linked(
    uow: UnitOfWork, account: str, event_id: str, existing_job_ids: Sequence[uuid.UUID]
) -> None:
    """For ingest: a new event that names only jobs that already exist may be complete at once.

    Called in the ingest transaction after the event's links are written, with the ids of the
    jobs it did not create (an event with a new job cannot be complete yet).
    """
    if not existing_job_ids:
        return
    endpoints = _for_account(uow.conn.execute(ENDPOINTS).fetchall(), account)
    for_events = _subscribed(endpoints, EVENT_COMPLETED)
    if not for_events:
        return
    uow.conn.execute(SHARE_JOBS, {"ids": list(existing_job_ids)})
    _complete_events(uow, for_events, account, [event_id])
