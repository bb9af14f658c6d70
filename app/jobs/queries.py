"""Operators' view of jobs: filtered lists with cursor paging, attempts, stats and retry.

Plain functions on the caller's connection (a unit of work's), shared by the API and the CLI.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Connection

from app.jobs.schemas import AttemptPublic, JobPage, JobPublic, Stats, job_public
from app.jobs.status import ALL, TERMINAL, WAITING_SQL
from app.jobs.store import PUBLIC_COLUMNS
from app.kit import cursors
from app.kit.db import rows
from app.kit.errors import NotFound
from app.kit.scope import Accounts, as_list, in_accounts

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CURSOR_KIND = "jobs"
ATTEMPT_CALLS = ("cancel", "refund", "lookup", "token")


@dataclass(frozen=True)
class JobFilters:
    accounts: Accounts = None
    status: str | None = None
    imp_uid: str | None = None
    merchant_uid: str | None = None
    sku: str | None = None
    event_id: str | None = None
    drift: str | None = None  # "open": a drift nobody has cleared; "any": one, cleared or not
    payment_id: str | None = None  # either kind of account's payment id


# -- reads -----------------------------------------------------------------------------------


def list_jobs(
    conn: Connection[Any],
    filters: JobFilters,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> JobPage:
    """One page of jobs, newest first by (created_at, id)."""
    limit = max(1, min(limit, MAX_LIMIT))
    where = [in_accounts("j.account")]
    params: dict[str, Any] = {"limit": limit + 1, "accounts": as_list(filters.accounts)}
    if filters.status is not None:
        where.append("j.status = %(status)s")
        params["status"] = filters.status
    if filters.imp_uid is not None:
        where.append("j.imp_uid = %(imp_uid)s")
        # imp_uid names only v1 payments: a v2 job shows none.
        where.append("j.api = 'v1'")
        params["imp_uid"] = filters.imp_uid
    if filters.payment_id is not None:
        where.append("j.imp_uid = %(payment_id)s")
        params["payment_id"] = filters.payment_id
    if filters.merchant_uid is not None:
        where.append("j.merchant_uid = %(merchant_uid)s")
        params["merchant_uid"] = filters.merchant_uid
    if filters.event_id is not None:
        where.append(
            "EXISTS (SELECT 1 FROM event_jobs f WHERE f.job_id = j.id AND f.event_id = %(event_id)s)"
        )
        params["event_id"] = filters.event_id
    if filters.sku is not None:
        where.append(
            "EXISTS (SELECT 1 FROM event_jobs f "
            "JOIN events e ON e.account = f.account AND e.event_id = f.event_id "
            "WHERE f.job_id = j.id AND e.sku = %(sku)s)"
        )
        params["sku"] = filters.sku
    if filters.drift is not None:
        where.append("j.drift IS NOT NULL")
        if filters.drift == "open":
            where.append("j.drift->>'cleared_at' IS NULL")
    if cursor is not None:
        params["c_at"], params["c_id"] = cursors.decode(CURSOR_KIND, cursor, uuid.UUID)
        where.append("(j.created_at, j.id) < (%(c_at)s, %(c_id)s)")
    jobs = load_jobs(
        conn,
        " AND ".join(where),
        params,
        "ORDER BY j.created_at DESC, j.id DESC LIMIT %(limit)s",
    )
    next_cursor = None
    if len(jobs) > limit:
        jobs = jobs[:limit]
        last = jobs[-1]
        next_cursor = cursors.encode(CURSOR_KIND, last.created_at, last.id)
    return JobPage(items=jobs, next_cursor=next_cursor)


def require_job(conn: Connection[Any], job_id: uuid.UUID, accounts: Accounts = None) -> JobPublic:
    """One job of these accounts, or NotFound (another account's job is not revealed)."""
    job = get_job(conn, job_id, accounts)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def list_attempts(
    conn: Connection[Any], job_id: uuid.UUID, accounts: Accounts = None
) -> list[AttemptPublic]:
    """Every upstream call made for the job, oldest first, numbered from 1; NotFound if none."""
    seen = f"SELECT 1 FROM jobs WHERE id = %(id)s AND {in_accounts('account')}"  # noqa: S608
    if not rows(conn, seen, {"id": job_id, "accounts": as_list(accounts)}):
        raise NotFound(f"no job {job_id}")
    found = rows(
        conn,
        "SELECT row_number() OVER (ORDER BY started_at, id) AS n, call, started_at, "
        "duration_ms, http_status, code, message, outcome, trace_id FROM attempts "
        "WHERE job_id = %(id)s AND call = ANY(%(calls)s) ORDER BY started_at, id",
        {"id": job_id, "calls": list(ATTEMPT_CALLS)},
    )
    return [AttemptPublic.model_validate(r._asdict()) for r in found]


def status_counts(conn: Connection[Any], accounts: Accounts = None) -> dict[str, int]:
    """Jobs per status, every status present (zero when none)."""
    counts = dict.fromkeys((s.value for s in ALL), 0)
    sql = f"SELECT status, count(*) FROM jobs WHERE {in_accounts('account')} GROUP BY status"  # noqa: S608
    for status, n in conn.execute(sql, {"accounts": as_list(accounts)}):
        counts[status] = int(n)
    return counts


def oldest_waiting_age(conn: Connection[Any], accounts: Accounts = None) -> float | None:
    """Seconds since the oldest non-terminal job was created, or None when none waits."""
    row = conn.execute(
        "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 "  # noqa: S608
        f"FROM jobs WHERE {WAITING_SQL} AND {in_accounts('account')}",
        {"accounts": as_list(accounts)},
    ).fetchone()
    oldest = row[0] if row else None
    return max(float(oldest), 0.0) if oldest is not None else None


def job_stats(conn: Connection[Any], accounts: Accounts = None) -> Stats:
    """Counts by status, the oldest waiting job's age, and recent finishes by status."""
    minute = dict.fromkeys(sorted(s.value for s in TERMINAL), 0)
    hour = dict.fromkeys(sorted(s.value for s in TERMINAL), 0)
    found = conn.execute(
        "SELECT status, count(*) FILTER (WHERE finished_at > now() - interval '1 minute'), "  # noqa: S608
        "count(*) FROM jobs WHERE finished_at > now() - interval '1 hour' "
        f"AND {in_accounts('account')} GROUP BY status",
        {"accounts": as_list(accounts)},
    )
    for status, last_minute, last_hour in found:
        minute[status] = int(last_minute)
        hour[status] = int(last_hour)
    return Stats(
        counts=status_counts(conn, accounts),
        oldest_waiting_age_seconds=oldest_waiting_age(conn, accounts),
        finished_last_minute=minute,
        finished_last_hour=hour,
    )


JOB_COLUMNS = ", ".join(f"j.{c.strip()}" for c in PUBLIC_COLUMNS.split(","))


# The events that name a job, oldest first.
EVENT_IDS = (
    "(SELECT array_agg(l.event_id ORDER BY e.received_at, l.event_id) FROM event_jobs l "
    "JOIN events e ON e.account = l.account AND e.event_id = l.event_id "
    "WHERE l.job_id = j.id) AS event_ids"
)


def as_public(rows: Sequence[Any]) -> list[JobPublic]:
    return [job_public(r, list(r.event_ids or [])) for r in rows]


def load_jobs(
    conn: Connection[Any], where: str, params: dict[str, Any], tail: str = ""
) -> list[JobPublic]:
    """Jobs matching a SQL condition on `j`, each with its event ids."""
    sql = f"SELECT {JOB_COLUMNS}, {EVENT_IDS} FROM jobs j WHERE {where} {tail}"  # noqa: S608
    return as_public(rows(conn, sql, params))


def get_job(
    conn: Connection[Any], job_id: uuid.UUID, accounts: Accounts = None
) -> JobPublic | None:
    """One job of these accounts, or None."""
    where = f"j.id = %(id)s AND {in_accounts('j.account')}"
    jobs = load_jobs(conn, where, {"id": job_id, "accounts": as_list(accounts)})
    return jobs[0] if jobs else None
