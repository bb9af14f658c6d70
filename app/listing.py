"""Operators' view of jobs: filtered lists with cursor paging, attempts, stats and retry.

Plain functions on the caller's session, shared by the API and the `stockout` CLI.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from app.errors import InvalidCursor, NotFound, NotRetryable
from app.models import NON_TERMINAL_SQL
from app.reads import get_job, load_jobs
from app.schemas import TERMINAL, AttemptPublic, JobPage, JobPublic, Stats

STATUSES = ("queued", "running", "retry_wait", "cancelled", "needs_refund", "failed")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CURSOR_VERSION = "1"
MAX_CURSOR_CHARS = 128
ATTEMPT_CALLS = ("cancel", "lookup", "token")


@dataclass(frozen=True)
class JobFilters:
    status: str | None = None
    imp_uid: str | None = None
    merchant_uid: str | None = None
    sku: str | None = None
    event_id: str | None = None


# -- cursors ---------------------------------------------------------------------------------
# A cursor is the position of the last job shown, (created_at, id), the very key the list is
# ordered by: the next page starts strictly after it, so rows inserted meanwhile (newer, hence
# before the cursor) neither shift the pages nor show up twice. Opaque to callers, strictly
# parsed here: anything that is not a cursor we made is a 400, never a 500.


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    """An opaque cursor pointing just after the job (created_at, id)."""
    raw = f"{CURSOR_VERSION}|{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names; InvalidCursor for anything else."""
    bad = InvalidCursor("the cursor is not one this API returned; start again without it")
    if not cursor or len(cursor) > MAX_CURSOR_CHARS or not cursor.isascii():
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, at, ident = raw.decode("ascii").split("|")
        if version != CURSOR_VERSION:
            raise ValueError(version)
        created_at = datetime.fromisoformat(at)
        job_id = uuid.UUID(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if created_at.tzinfo is None:
        raise bad
    return created_at, job_id


# -- reads -----------------------------------------------------------------------------------


def list_jobs(
    session: Session, filters: JobFilters, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> JobPage:
    """One page of jobs, newest first by (created_at, id)."""
    limit = max(1, min(limit, MAX_LIMIT))
    where = ["TRUE"]
    params: dict[str, Any] = {"limit": limit + 1}
    if filters.status is not None:
        where.append("j.status = :status")
        params["status"] = filters.status
    if filters.imp_uid is not None:
        where.append("j.imp_uid = :imp_uid")
        params["imp_uid"] = filters.imp_uid
    if filters.merchant_uid is not None:
        where.append("j.merchant_uid = :merchant_uid")
        params["merchant_uid"] = filters.merchant_uid
    if filters.event_id is not None:
        where.append(
            "EXISTS (SELECT 1 FROM event_jobs f WHERE f.job_id = j.id AND f.event_id = :event_id)"
        )
        params["event_id"] = filters.event_id
    if filters.sku is not None:
        where.append(
            "EXISTS (SELECT 1 FROM event_jobs f JOIN events e ON e.event_id = f.event_id "
            "WHERE f.job_id = j.id AND e.sku = :sku)"
        )
        params["sku"] = filters.sku
    if cursor is not None:
        params["c_at"], params["c_id"] = decode_cursor(cursor)
        where.append("(j.created_at, j.id) < (:c_at, :c_id)")
    jobs = load_jobs(
        session,
        " AND ".join(where),
        params,
        "ORDER BY j.created_at DESC, j.id DESC LIMIT :limit",
    )
    next_cursor = None
    if len(jobs) > limit:
        jobs = jobs[:limit]
        last = jobs[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return JobPage(items=jobs, next_cursor=next_cursor)


def require_job(session: Session, job_id: uuid.UUID) -> JobPublic:
    """One job, or NotFound."""
    job = get_job(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def list_attempts(session: Session, job_id: uuid.UUID) -> list[AttemptPublic]:
    """Every upstream call made for the job, oldest first, numbered from 1; NotFound if none."""
    exists = session.execute(text("SELECT 1 FROM jobs WHERE id = :id"), {"id": job_id}).first()
    if exists is None:
        raise NotFound(f"no job {job_id}")
    rows = session.execute(
        text(
            "SELECT row_number() OVER (ORDER BY started_at, id) AS n, call, started_at, "
            "duration_ms, http_status, code, message, outcome FROM attempts "
            "WHERE job_id = :id AND call = ANY(:calls) ORDER BY started_at, id"
        ),
        {"id": job_id, "calls": list(ATTEMPT_CALLS)},
    ).all()
    return [AttemptPublic.model_validate(dict(r._mapping)) for r in rows]


def status_counts(db: Session | Connection) -> dict[str, int]:
    """Jobs per status, every status present (zero when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in db.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")):
        counts[status] = int(n)
    return counts


def oldest_waiting_age(db: Session | Connection) -> float | None:
    """Seconds since the oldest non-terminal job was created, or None when none waits."""
    oldest = db.execute(
        text(
            "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 "  # noqa: S608
            f"FROM jobs WHERE {NON_TERMINAL_SQL}"
        )
    ).scalar_one()
    return max(float(oldest), 0.0) if oldest is not None else None


def job_stats(session: Session) -> Stats:
    """Counts by status, the oldest waiting job's age, and recent finishes by status."""
    minute = dict.fromkeys(sorted(TERMINAL), 0)
    hour = dict.fromkeys(sorted(TERMINAL), 0)
    rows = session.execute(
        text(
            "SELECT status, count(*) FILTER (WHERE finished_at > now() - interval '1 minute'), "
            "count(*) FROM jobs WHERE finished_at > now() - interval '1 hour' GROUP BY status"
        )
    )
    for status, last_minute, last_hour in rows:
        minute[status] = int(last_minute)
        hour[status] = int(last_hour)
    return Stats(
        counts=status_counts(session),
        oldest_waiting_age_seconds=oldest_waiting_age(session),
        finished_last_minute=minute,
        finished_last_hour=hour,
    )


# -- steering --------------------------------------------------------------------------------

RETRY = """
UPDATE jobs SET status = 'queued', attempts = 0, next_attempt_at = NULL, finished_at = NULL,
    lease_token = NULL, lease_until = NULL,
    due_at = now() + make_interval(secs => :grace), updated_at = now()
WHERE id = :id AND status = 'failed'
RETURNING id
"""


def retry_job(session: Session, job_id: uuid.UUID, grace_seconds: float) -> JobPublic:
    """Put a failed job back to queued, in the caller's transaction; publish after the commit.

    One conditional UPDATE, so two retries (or a retry racing anything else) change it once.
    The error stays as a record of why it failed; `uncertain` stays too: if a cancel may have
    applied, the worker looks the payment up before sending another.
    """
    row = session.execute(text(RETRY), {"id": job_id, "grace": grace_seconds}).first()
    if row is None:
        current = session.execute(
            text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one_or_none()
        if current is None:
            raise NotFound(f"no job {job_id}")
        raise NotRetryable(f"only a failed job can be retried; this one is {current}")
    return require_job(session, job_id)
