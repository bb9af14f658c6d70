"""The worker's statements: claim under a lease, write ahead, record the outcome.

Plain psycopg on a connection pool, no ORM: on 2 cores the CPU per job is the limit, and
these few statements are the whole of the worker's database work.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from app.config import get_settings
from app.iamport.client import CallRecord
from app.webhooks.outbox import record_terminal

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()


def pool() -> ConnectionPool:
    """The process's connection pool, made on first use (after a fork, never before)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            settings = get_settings()
            _pool = ConnectionPool(
                settings.libpq_url,
                min_size=1,
                max_size=64,
                kwargs={"autocommit": True, "connect_timeout": 3},
                # A connection that died with a Postgres restart is replaced, not handed out.
                check=ConnectionPool.check_connection,
                open=True,
                name="stockout-worker",
            )
        return _pool


def close_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    imp_uid: str
    attempts: int
    uncertain: bool
    lease_token: uuid.UUID
    error: dict[str, Any] | None


CLAIM = """
UPDATE jobs SET status = 'running', lease_token = gen_random_uuid(),
    lease_until = now() + make_interval(secs => %(lease)s),
    due_at = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE id = ANY(%(ids)s)
  AND (status = 'queued'
       OR (status = 'retry_wait' AND next_attempt_at <= now())
       OR (status = 'running' AND lease_until < now()))
RETURNING id, imp_uid, attempts, uncertain, lease_token, error
"""


def claim(conn: Connection[Any], ids: Sequence[uuid.UUID], lease_seconds: float) -> list[Claimed]:
    """Take the lease on those of `ids` that are ready to run; the rest are someone else's."""
    rows = (
        conn.cursor(row_factory=tuple_row)
        .execute(CLAIM, {"ids": list(ids), "lease": lease_seconds})
        .fetchall()
    )
    return [Claimed(*r) for r in rows]


# The write-ahead: before a cancel is sent, count it, mark the job uncertain and extend the
# lease, in one statement that succeeds only while we still hold the lease. A worker that
# dies after this leaves a trace, and whoever runs the job next looks the payment up first.
WRITE_AHEAD = """
WITH j AS (
  UPDATE jobs SET uncertain = true, attempts = attempts + 1,
      lease_until = now() + make_interval(secs => %(lease)s),
      due_at = now() + make_interval(secs => %(lease)s), updated_at = now()
  WHERE id = %(id)s AND lease_token = %(token)s AND status = 'running'
  RETURNING id
)
INSERT INTO attempts (job_id, call, started_at) SELECT id, 'cancel', %(started)s FROM j RETURNING id
"""


def write_ahead(
    conn: Connection[Any],
    job_id: uuid.UUID,
    token: uuid.UUID,
    lease_seconds: float,
    started_at: datetime,
) -> int | None:
    """The attempt row's id, or None when the lease is no longer ours."""
    row = conn.execute(
        WRITE_AHEAD, {"id": job_id, "token": token, "lease": lease_seconds, "started": started_at}
    ).fetchone()
    return int(row[0]) if row else None


# One statement records the run: completes the written-ahead cancel rows, adds the other
# calls, and moves the job on, only if we still hold its lease.
FINISH = """
WITH done AS (
  UPDATE attempts a SET duration_ms = r.duration_ms, http_status = r.http_status, code = r.code,
      message = r.message, outcome = r.outcome
  FROM unnest(%(w_ids)s::bigint[], %(w_ms)s::int[], %(w_http)s::int[], %(w_code)s::int[],
              %(w_msg)s::text[], %(w_out)s::text[])
       AS r(id, duration_ms, http_status, code, message, outcome)
  WHERE a.id = r.id AND a.job_id = %(id)s
  RETURNING a.id
), added AS (
  INSERT INTO attempts (job_id, call, started_at, duration_ms, http_status, code, message, outcome)
  SELECT %(id)s, r.call, r.started_at, r.duration_ms, r.http_status, r.code, r.message, r.outcome
  FROM unnest(%(i_call)s::text[], %(i_start)s::timestamptz[], %(i_ms)s::int[], %(i_http)s::int[],
              %(i_code)s::int[], %(i_msg)s::text[], %(i_out)s::text[])
       AS r(call, started_at, duration_ms, http_status, code, message, outcome)
  RETURNING id
)
UPDATE jobs SET status = %(status)s,
    attempts = %(attempts)s,
    uncertain = %(uncertain)s,
    next_attempt_at = CASE WHEN %(retry)s
                           THEN now() + make_interval(secs => %(delay)s) END,
    due_at = CASE WHEN %(retry)s THEN now() + make_interval(secs => %(delay)s) END,
    lease_token = NULL, lease_until = NULL,
    payment_status = COALESCE(%(payment_status)s, payment_status),
    cancellation = COALESCE(%(cancellation)s, cancellation),
    error = COALESCE(%(error)s, error),
    finished_at = CASE WHEN %(terminal)s THEN now() END,
    updated_at = now()
WHERE id = %(id)s AND lease_token = %(token)s
RETURNING (SELECT count(*) FROM done) + (SELECT count(*) FROM added)
"""


@dataclass(frozen=True)
class Outcome:
    status: str
    delay: float
    uncertain: bool
    attempts: int
    payment_status: str | None
    cancellation: dict[str, Any] | None
    error: dict[str, Any] | None
    terminal: bool


def finish(
    conn: Connection[Any],
    job_id: uuid.UUID,
    token: uuid.UUID,
    outcome: Outcome,
    written: dict[int, CallRecord],
    others: Sequence[CallRecord],
) -> bool:
    """Record the run; False when the lease was lost and nothing was written.

    A terminal outcome and its webhook messages (the outbox) commit in one transaction.
    """
    w_ids = list(written)
    w = [written[i] for i in w_ids]
    params = {
        "id": job_id,
        "token": token,
        "status": outcome.status,
        "delay": outcome.delay,
        "uncertain": outcome.uncertain,
        "attempts": outcome.attempts,
        "payment_status": outcome.payment_status,
        "cancellation": Jsonb(outcome.cancellation) if outcome.cancellation else None,
        "error": Jsonb(outcome.error) if outcome.error else None,
        "terminal": outcome.terminal,
        "retry": outcome.status == "retry_wait",
        "w_ids": w_ids,
        "w_ms": [r.duration_ms for r in w],
        "w_http": [r.http_status for r in w],
        "w_code": [r.code for r in w],
        "w_msg": [r.message for r in w],
        "w_out": [r.outcome for r in w],
        "i_call": [r.call for r in others],
        "i_start": [r.started_at for r in others],
        "i_ms": [r.duration_ms for r in others],
        "i_http": [r.http_status for r in others],
        "i_code": [r.code for r in others],
        "i_msg": [r.message for r in others],
        "i_out": [r.outcome for r in others],
    }
    if not outcome.terminal:
        return conn.execute(FINISH, params).fetchone() is not None
    with conn.transaction():
        done = conn.execute(FINISH, params).fetchone() is not None
        if done:
            record_terminal(conn, job_id)
    return done


SWEEP = """
WITH due AS (
  SELECT id FROM jobs
  WHERE status IN ('queued', 'running', 'retry_wait') AND due_at <= now()
  ORDER BY due_at LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET due_at = now() + make_interval(secs => %(grace)s)
FROM due WHERE j.id = due.id
RETURNING j.id
"""


def take_due(conn: Connection[Any], limit: int, grace_seconds: float) -> list[uuid.UUID]:
    """Ids of jobs whose time has come, pushed `grace_seconds` ahead so that the next sweep
    (here or on another node) does not publish them again while they wait in the queue."""
    return [r[0] for r in conn.execute(SWEEP, {"limit": limit, "grace": grace_seconds}).fetchall()]
