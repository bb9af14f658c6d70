"""Every statement that writes a job row or an attempt row, and nothing else.

Plain psycopg, one parameter style, typed rows. Each statement carries its own guard (the
WHERE that makes it safe under concurrency) and says so in a comment; the caller owns the
transaction (app/kit/db.py's unit of work on the HTTP side, autocommit single statements in the
worker, one transaction where a terminal transition writes its webhook messages too).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from app import tracing
from app.jobs.decide import Method, OnPaid, Step
from app.jobs.records import Cancellation, Drift, Refund, UpstreamError
from app.jobs.status import TERMINAL, WAITING_SQL, JobStatus
from app.upstream.contract import CallRecord

Conn = Connection[Any]
AsyncConn = AsyncConnection[Any]

# Cancel and refund calls sent since the job was last put back by a person, as the attempt
# rows show them: the one definition of a job's `attempts`. A call that was answered 429, or
# that was written ahead but never left us, is no attempt, nor is a keyed repeat answered
# "still running" (in_flight: the first call's); one whose worker died is.
ATTEMPTS_SQL = """(SELECT count(*) FROM attempts a
  WHERE a.job_id = jobs.id AND a.call IN ('cancel', 'refund')
    AND a.started_at >= COALESCE(jobs.retried_at, '-infinity')
    AND a.outcome IS DISTINCT FROM 'rate_limited' AND a.outcome IS DISTINCT FROM 'not_sent'
    AND a.outcome IS DISTINCT FROM 'in_flight')"""
# The job's cancel and refund calls that the gateway answered (run.KEY_SPENT_OUTCOMES), ever: a
# keyed gateway's key is made with it, so the repeat of an unanswered call has that call's key
# and the call after an answered one a new key (PortOne replays a key's first answer).
# Only keyed (v2) jobs need it: a v1 claim does not pay for the count.
ANSWERED_CALLS_SQL = """CASE WHEN jobs.api = 'v2' THEN (SELECT count(*) FROM attempts a
  WHERE a.job_id = jobs.id AND a.call IN ('cancel', 'refund')
    AND a.outcome IN ('ok', 'refused', 'not_found', 'unauthorized', 'server_error',
                      'requested')) ELSE 0 END"""
# Seconds until the job's unanswered call can no longer apply at iamport, by the database clock.
SETTLE_LEFT_SQL = """CASE WHEN jobs.uncertain_call IS NULL THEN 0.0 ELSE GREATEST(0.0,
  EXTRACT(EPOCH FROM jobs.last_call_at + make_interval(secs => %(settle)s) - now()))::float8 END"""

# How long ago, by the database clock, this job's first cancel or refund was written ahead
# (just before it was sent), ever, retries included; NULL if none was. A call never sent
# (not_sent) could not have reached iamport.
FIRST_CALL_AGE_SQL = """(SELECT EXTRACT(EPOCH FROM now() - min(a.started_at))::float8
  FROM attempts a WHERE a.job_id = jobs.id AND a.call IN ('cancel', 'refund')
    AND a.outcome IS DISTINCT FROM 'not_sent')"""


# -- intake ----------------------------------------------------------------------------------

# The columns a job is shown with (app/reads.py reads them; ACCEPT_EVENT returns them).
PUBLIC_COLUMNS = (
    "id, account, api, imp_uid, merchant_uid, status, pay_method, on_paid, attempts, "
    "next_attempt_at, payment_status, cancellation, refund, error, drift, created_at, updated_at, "
    "finished_at"
)
# A new event, its jobs and their links in one statement. Guards: the primary key on
# (account, event_id) (a concurrent duplicate waits for the winner's commit and inserts
# nothing: no row comes back, the caller compares content hashes) and the unique constraint on
# jobs (account, imp_uid), one job per payment ever. Jobs go in sorted by imp_uid so two events naming the same payments lock them
# in one order (no deadlock). The links can only join the jobs made here (a statement does not
# see its own inserts elsewhere, nor what another transaction committed while it waited).
_ACCEPT = """
WITH event AS (
  INSERT INTO events (account, event_id, sku, reason, occurred_at, content_hash)
  VALUES (%(account)s, %(event_id)s, %(sku)s, %(reason)s, %(occurred_at)s, %(hash)s)
  ON CONFLICT (account, event_id) DO NOTHING
  RETURNING received_at, occurred_at AS event_occurred_at
), wanted AS (
  SELECT w.imp_uid, w.merchant_uid, w.pay_method, w.position
  FROM unnest(%(imp_uids)s::text[], %(merchant_uids)s::text[], %(methods)s::text[])
       WITH ORDINALITY AS w(imp_uid, merchant_uid, pay_method, position)
), made AS (
  INSERT INTO jobs (account, api, imp_uid, merchant_uid, pay_method, on_paid, reason, due_at)
  SELECT %(account)s, %(api)s, w.imp_uid, w.merchant_uid, w.pay_method, %(on_paid)s, %(reason)s,
         now() + make_interval(secs => %(grace)s)
  FROM wanted w WHERE EXISTS (SELECT FROM event)
  ORDER BY w.imp_uid
  {on_conflict}
  RETURNING {columns}
), linked AS (
  INSERT INTO event_jobs (account, event_id, job_id, position)
  SELECT %(account)s, %(event_id)s, m.id, w.position FROM made m JOIN wanted w USING (imp_uid)
)
SELECT event.received_at, event.event_occurred_at, m.*
FROM event LEFT JOIN (made m JOIN wanted w USING (imp_uid)) ON true
ORDER BY w.position
"""
# In a transaction: payments whose job already existed are skipped here and linked by
# LINK_JOBS, a statement of its own, after this one.
ACCEPT_EVENT = _ACCEPT.format(
    on_conflict="ON CONFLICT (account, imp_uid) DO NOTHING", columns=PUBLIC_COLUMNS
)
# On its own, in autocommit: all or nothing. A payment that has a job already fails the whole
# statement with a unique violation (nothing is written), so what commits is always complete.
ACCEPT_NEW_EVENT = _ACCEPT.format(on_conflict="", columns=PUBLIC_COLUMNS)
# Guard: the primary key on (account, event_id, job_id): links made above stay as they are. It sees the
# jobs another event made meanwhile (the insert above waited for them), so every payment links
# to its one job, in the event's order.
LINK_JOBS = """
INSERT INTO event_jobs (account, event_id, job_id, position)
SELECT %(account)s, %(event_id)s, j.id, w.position
FROM unnest(%(imp_uids)s::text[]) WITH ORDINALITY AS w(imp_uid, position)
JOIN jobs j ON j.account = %(account)s AND j.imp_uid = w.imp_uid
ON CONFLICT (account, event_id, job_id) DO NOTHING
"""


@dataclass(frozen=True)
class NewJob:
    imp_uid: str
    merchant_uid: str | None
    pay_method: Method


@dataclass(frozen=True)
class Intake:
    """What accepting an event did."""

    received_at: datetime | None  # None: the event_id was known already, nothing was written
    occurred_at: datetime | None  # as stored (and so as a read shows it)
    made: list[dict[str, Any]]  # the jobs made now (PUBLIC_COLUMNS), in the event's order
    linked_existing: bool  # some payments had a job already: linked to it, made none


@dataclass(frozen=True)
class NewEvent:
    """What ACCEPT_EVENT writes: an event and the jobs its payments need."""

    account: str
    event_id: str
    sku: str
    reason: str
    occurred_at: datetime | None
    digest: str  # of the event's content, to tell a replay from a conflict
    jobs: Sequence[NewJob]
    on_paid: OnPaid
    grace_seconds: float  # how long a new job waits for its message before a sweep sends one
    api: str = "v1"  # the account's kind, "v1" or "v2": it names the payment id in the job

    def params(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "api": self.api,
            "event_id": self.event_id,
            "sku": self.sku,
            "reason": self.reason,
            "occurred_at": self.occurred_at,
            "hash": self.digest,
            "imp_uids": [j.imp_uid for j in self.jobs],
            "merchant_uids": [j.merchant_uid for j in self.jobs],
            "methods": [j.pay_method.value for j in self.jobs],
            "on_paid": self.on_paid.value,
            "grace": self.grace_seconds,
        }


def accept_event(conn: Conn, new: NewEvent) -> Intake:
    """Insert the event, a job for each payment that has none, and every link, in the event's
    order. Run it in a transaction: a second statement may be needed for the links."""
    params = new.params()
    found = conn.cursor(row_factory=dict_row).execute(ACCEPT_EVENT, params).fetchall()
    intake = _intake(found, len(new.jobs))
    if intake.linked_existing:
        links = {k: params[k] for k in ("account", "event_id", "imp_uids")}
        conn.execute(LINK_JOBS, links)
    return intake


async def accept_new_event(conn: AsyncConn, new: NewEvent) -> Intake:
    """ACCEPT_NEW_EVENT on its own (autocommit), on the event loop: the event with all its jobs
    and links, or nothing. Nothing when the event_id is known (received_at None); raises
    psycopg.errors.UniqueViolation, nothing written, when a payment has a job already."""
    cur = conn.cursor(row_factory=dict_row)
    found = await (await cur.execute(ACCEPT_NEW_EVENT, new.params())).fetchall()
    return _intake(found, len(new.jobs))


def _intake(found: list[dict[str, Any]], wanted: int) -> Intake:
    if not found:
        return Intake(None, None, [], False)
    made = [r for r in found if r["id"] is not None]
    first = found[0]
    return Intake(first["received_at"], first["event_occurred_at"], made, len(made) < wanted)


def event_hash(conn: Conn, account: str, event_id: str) -> str | None:
    """The content hash a known event was accepted with."""
    row = conn.execute(
        "SELECT content_hash FROM events WHERE account = %s AND event_id = %s",
        (account, event_id),
    ).fetchone()
    return str(row[0]) if row else None


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    account: str
    imp_uid: str
    lease_token: uuid.UUID
    attempts: int
    uncertain_call: str | None
    settle_left: float
    pay_method: str
    on_paid: str
    refund_requested: bool
    look_first: bool
    idle_runs: int
    reason: str | None
    error: dict[str, Any] | None
    # Seconds since the first cancel or refund of this job was sent (None: none was); an age,
    # not a time, so the database's clock does not mix with the worker's.
    first_call_age: float | None = None
    api: str = "v1"  # the account's kind: "v2" keys every call that changes a payment
    answered_calls: int = 0  # ANSWERED_CALLS_SQL


# Guard: only a job that is ready (queued, due retry_wait, or running with an expired lease)
# is taken, and the fresh lease token makes every later write of this run conditional on it.
# The inner FOR UPDATE reads look_first as it stands when the row is ours.
# The job's own account's lease where one is given (its calls' timeout decides it), else the
# default: a slow PortOne V2 account's long lease does not hold a crashed worker's iamport jobs.
CLAIM_LEASE_SQL = "COALESCE((%(leases)s::jsonb ->> jobs.account)::float8, %(lease)s)"
CLAIM = f"""
UPDATE jobs SET status = 'running', lease_token = gen_random_uuid(),
    lease_until = now() + make_interval(secs => {CLAIM_LEASE_SQL}),
    due_at = now() + make_interval(secs => {CLAIM_LEASE_SQL}), look_first = false,
    updated_at = now()
FROM (SELECT id, look_first AS told FROM jobs WHERE id = %(id)s FOR UPDATE) told
WHERE jobs.id = told.id
  AND (status = 'queued'
       OR (status = 'retry_wait' AND next_attempt_at <= now())
       OR (status = 'running' AND lease_until < now()))
RETURNING jobs.id, account, imp_uid, lease_token, {ATTEMPTS_SQL} AS attempts, uncertain_call,
    {SETTLE_LEFT_SQL} AS settle_left, pay_method, on_paid,
    refund_requested_at IS NOT NULL AS refund_requested, told.told AS look_first, idle_runs,
    reason, error, {FIRST_CALL_AGE_SQL} AS first_call_age, api,
    {ANSWERED_CALLS_SQL} AS answered_calls
"""  # noqa: S608


def claim(
    conn: Conn,
    job_id: uuid.UUID,
    lease_seconds: float,
    settle: float,
    leases: Mapping[str, float] | None = None,
) -> Claimed | None:
    """Take the lease on the job if it is ready to run; None when it is not (or not ours).
    `leases` by account override `lease_seconds` for their jobs."""
    params = {"id": job_id, "lease": lease_seconds, "settle": settle, "leases": Jsonb(leases or {})}
    return conn.cursor(row_factory=class_row(Claimed)).execute(CLAIM, params).fetchone()


# The write-ahead, just before a cancel or refund is sent: record the call and that the job is
# uncertain about it, and extend the lease, in one statement. Guards: we still hold a live
# lease; and no earlier call of this job can still apply at iamport (it was answered, in this
# run, or its settle time has passed, by the database clock). It changes no indexed column,
# so the row's new version stays on its page with no index entries (a HOT update): due_at
# stays at the claim's lease end, and a sweep meeting the longer lease moves it (TAKE_DUE).
WRITE_AHEAD = """
WITH j AS (
  UPDATE jobs SET uncertain_call = %(call)s, last_call_at = now(),
      lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
  WHERE id = %(id)s AND lease_token = %(token)s AND status = 'running' AND lease_until > now()
    AND (uncertain_call IS NULL OR %(answered)s
         OR last_call_at <= now() - make_interval(secs => %(settle)s)
         OR (%(repeat)s AND uncertain_call = %(call)s))
  RETURNING id
)
INSERT INTO attempts (job_id, call, started_at, trace_id)
SELECT id, %(call)s, now(), %(trace_id)s FROM j RETURNING id
"""


def write_ahead(
    conn: Conn,
    job_id: uuid.UUID,
    token: uuid.UUID,
    call: Step,
    *,
    lease_seconds: float,
    settle: float,
    answered: bool,
    repeat: bool = False,
) -> int | None:
    """The attempt row's id, or None when the lease is gone or an earlier call is unsettled.

    `repeat`: the call is the unanswered one again with its idempotency key, the same request
    to the gateway, so it need not wait for the first to settle."""
    params = {
        "id": job_id,
        "token": token,
        "call": call.value,
        "lease": lease_seconds,
        "settle": settle,
        "answered": answered,
        "repeat": repeat,
        "trace_id": tracing.trace_id(),
    }
    row = conn.execute(WRITE_AHEAD, params).fetchone()
    return int(row[0]) if row else None


@dataclass(frozen=True)
class Outcome:
    """What a run decided, as the job row keeps it."""

    status: JobStatus
    delay: float
    attempts: int
    uncertain: Step | None
    idle: bool
    payment_status: str | None = None
    pay_method: Method | None = None
    cancellation: Cancellation | None = None
    refund: Refund | None = None
    error: UpstreamError | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _json(record: Any) -> Jsonb | None:
    return Jsonb(record.model_dump(mode="json")) if record is not None else None


# Records the run: completes the written-ahead rows and adds the other calls (they happened,
# so they are kept even when the lease was lost), then moves the job on. Guard: the lease
# token; a job someone else holds now is left as it is. The calls travel as two JSON
# documents: one parameter each, which costs the client far less than a dozen arrays.
# With `alone`, it writes nothing at all (and says `hooked`) if any webhook endpoint is
# enabled: the caller then records the transition with its messages in one transaction.
FINISH = """
WITH hooks AS (
  SELECT %(alone)s AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) AS hooked
), done AS (
  UPDATE attempts a SET duration_ms = r.duration_ms, http_status = r.http_status, code = r.code,
      message = r.message, outcome = r.outcome
  FROM jsonb_to_recordset(%(written)s::jsonb)
       AS r(id bigint, duration_ms int, http_status int, code int, message text, outcome text),
       hooks
  WHERE a.id = r.id AND a.job_id = %(id)s AND NOT hooks.hooked
  RETURNING a.id
), added AS (
  INSERT INTO attempts (job_id, call, started_at, duration_ms, http_status, code, message, outcome,
      trace_id)
  SELECT %(id)s, r.call, r.started_at, r.duration_ms, r.http_status, r.code, r.message, r.outcome,
      %(trace_id)s
  FROM jsonb_to_recordset(%(others)s::jsonb)
       AS r(call text, started_at timestamptz, duration_ms int, http_status int, code int,
            message text, outcome text),
       hooks
  WHERE NOT hooks.hooked
  RETURNING id
), moved AS (
  UPDATE jobs SET status = %(status)s,
      attempts = %(attempts)s,
      uncertain_call = %(uncertain)s,
      next_attempt_at = CASE WHEN %(retry)s THEN now() + make_interval(secs => %(delay)s) END,
      due_at = CASE WHEN %(retry)s THEN now() + make_interval(secs => %(delay)s) END,
      lease_token = NULL, lease_until = NULL,
      idle_runs = CASE WHEN %(idle)s THEN idle_runs + 1 ELSE 0 END,
      payment_status = COALESCE(%(payment_status)s, payment_status),
      pay_method = COALESCE(%(pay_method)s, pay_method),
      cancellation = COALESCE(%(cancellation)s, cancellation),
      refund = COALESCE(%(refund)s, refund),
      error = COALESCE(%(error)s, error),
      finished_at = CASE WHEN %(terminal)s THEN now() END,
      updated_at = now()
  FROM hooks
  WHERE id = %(id)s AND lease_token = %(token)s AND NOT hooks.hooked
  RETURNING 1
)
SELECT hooked, (SELECT count(*) FROM moved) = 1 AS kept FROM hooks
"""


class Finished(StrEnum):
    KEPT = "kept"
    LEASE_LOST = "lease_lost"  # the calls are recorded, the job is someone else's now
    HOOKED = "hooked"  # `alone` and a webhook endpoint is enabled: nothing was written


def _call(record: CallRecord, **extra: Any) -> dict[str, Any]:
    return {
        "duration_ms": record.duration_ms,
        "http_status": record.http_status,
        "code": record.code,
        "message": record.message,
        "outcome": record.outcome,
        **extra,
    }


def finish(
    conn: Conn,
    job_id: uuid.UUID,
    token: uuid.UUID,
    outcome: Outcome,
    written: dict[int, CallRecord],
    others: Sequence[CallRecord],
    *,
    alone: bool = False,
) -> Finished:
    """Record the run. `alone`: only if no webhook endpoint would want a message of it."""
    params = {
        "alone": alone,
        "id": job_id,
        "token": token,
        "status": outcome.status.value,
        "delay": outcome.delay,
        "attempts": outcome.attempts,
        "uncertain": outcome.uncertain.value if outcome.uncertain else None,
        "idle": outcome.idle,
        "payment_status": outcome.payment_status,
        "pay_method": outcome.pay_method.value if outcome.pay_method else None,
        "cancellation": _json(outcome.cancellation),
        "refund": _json(outcome.refund),
        "error": _json(outcome.error),
        "terminal": outcome.terminal,
        "retry": outcome.status is JobStatus.RETRY_WAIT,
        "trace_id": tracing.trace_id(),
        "written": Jsonb([_call(r, id=i) for i, r in written.items()]),
        "others": Jsonb(
            [_call(r, call=r.call, started_at=r.started_at.isoformat()) for r in others]
        ),
    }
    row = conn.execute(FINISH, params).fetchone()
    assert row is not None
    hooked, kept = row
    if hooked:
        return Finished.HOOKED
    return Finished.KEPT if kept else Finished.LEASE_LOST


# Guard: FOR UPDATE SKIP LOCKED, so sweeps on several nodes never take the same job; due_at
# moves ahead so the next sweep leaves a published job alone while its message waits. A
# running job whose lease a write-ahead extended is not due yet: its due_at moves to the
# lease's end, and no wake-up goes out. Queued jobs only with `queued` (see take_due).
TAKE_DUE = f"""
WITH due AS (
  SELECT id FROM jobs WHERE {WAITING_SQL} AND due_at <= now()
    AND (%(queued)s OR status <> 'queued')
  ORDER BY due_at LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), moved AS (
  UPDATE jobs j SET due_at = CASE WHEN j.status = 'running' AND j.lease_until > now()
                                  THEN j.lease_until
                                  ELSE now() + make_interval(secs => %(grace)s) END
  FROM due WHERE j.id = due.id
  RETURNING j.id, j.status = 'running' AND j.lease_until > now() AS leased
)
SELECT id FROM moved WHERE NOT leased
"""  # noqa: S608


def take_due(
    conn: Conn, limit: int, grace_seconds: float, *, queued: bool = True
) -> list[uuid.UUID]:
    """Ids of jobs whose time has come: due retries, lost messages, expired leases.

    `queued=False` leaves queued jobs for later: while messages wait in the broker, a queued
    job past its grace is most likely waiting behind them, not lost.
    """
    params = {"limit": limit, "grace": grace_seconds, "queued": queued}
    rows = conn.execute(TAKE_DUE, params).fetchall()
    return [r[0] for r in rows]


# -- what people and iamport ask ---------------------------------------------------------------

# Guard: only a failed job moves, once, however many retries race. The attempt budget starts
# again (retried_at); `uncertain_call` and `error` stay, so a call that may have applied is
# looked up before anything else is sent.
RETRY = """
UPDATE jobs SET status = 'queued', retried_at = now(), attempts = 0, idle_runs = 0,
    next_attempt_at = NULL, finished_at = NULL, lease_token = NULL, lease_until = NULL,
    due_at = now() + make_interval(secs => %(grace)s), updated_at = now()
WHERE id = %(id)s AND status = 'failed'
RETURNING id
"""

# Guard: only a needs_refund job moves, once. The run looks the payment up first and takes its
# refund checksum from that lookup.
REQUEST_REFUND = """
UPDATE jobs SET status = 'queued', refund_requested_at = now(), look_first = true,
    retried_at = now(), attempts = 0, idle_runs = 0, next_attempt_at = NULL, finished_at = NULL,
    due_at = now() + make_interval(secs => %(grace)s), updated_at = now()
WHERE id = %(id)s AND status = 'needs_refund'
RETURNING id
"""


def retry(conn: Conn, job_id: uuid.UUID, grace_seconds: float) -> bool:
    """Put a failed job back to queued; False when it is not failed."""
    params = {"id": job_id, "grace": grace_seconds}
    return conn.execute(RETRY, params).fetchone() is not None


def request_refund(conn: Conn, job_id: uuid.UUID, grace_seconds: float) -> bool:
    """A person decided to refund a held payment; False when the job is not needs_refund."""
    params = {"id": job_id, "grace": grace_seconds}
    return conn.execute(REQUEST_REFUND, params).fetchone() is not None


def status_of(conn: Conn, job_id: uuid.UUID) -> JobStatus | None:
    """The job's status, or None when there is no such job."""
    row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return JobStatus(row[0]) if row else None


# A notification says the payment changed. It is not signed, so it only makes the job look the
# payment up at its next run, which is made due now. Guard: only a job still waiting; a
# finished job is never touched by what a notification claims.
NOTE_NEWS = f"""
UPDATE jobs SET look_first = true,
    next_attempt_at = CASE WHEN status = 'retry_wait' THEN now() ELSE next_attempt_at END,
    due_at = CASE WHEN status = 'running' THEN due_at ELSE now() END,
    updated_at = now()
WHERE account = %(account)s AND imp_uid = %(imp_uid)s AND {WAITING_SQL}
RETURNING id, status
"""  # noqa: S608


def note_news(conn: Conn, account: str, imp_uid: str) -> tuple[uuid.UUID, JobStatus] | None:
    """Make a waiting job of the account look its payment up now; its id and status, or None."""
    row = conn.execute(NOTE_NEWS, {"account": account, "imp_uid": imp_uid}).fetchone()
    return (row[0], JobStatus(row[1])) if row else None


# -- what a reconciliation found ---------------------------------------------------------------

# The jobs one reconciliation round looks at, a page at a time in id order: waiting jobs nobody
# touched for `stale` seconds (a running one only once its lease has ended), every needs_refund
# job, and failed, cancelled and refunded jobs finished since `since`.
_TO_RECONCILE = f"""account = %(account)s
  AND ((({WAITING_SQL}) AND updated_at < now() - make_interval(secs => %(stale)s)
        AND (status <> 'running' OR lease_until < now()))
       OR status = 'needs_refund'
       OR (status IN ('failed', 'cancelled', 'refunded') AND finished_at >= %(since)s))"""
RECONCILE_PAGE = f"""
SELECT id, imp_uid, status, payment_status, uncertain_call, drift,
    finished_at IS NOT NULL AND finished_at >= %(since)s AS in_window
FROM jobs
WHERE id > %(after)s AND {_TO_RECONCILE}
ORDER BY id LIMIT %(limit)s
"""  # noqa: S608
RECONCILE_COUNT = f"SELECT count(*) FROM jobs WHERE {_TO_RECONCILE}"  # noqa: S608


@dataclass(frozen=True)
class ToReconcile:
    id: uuid.UUID
    imp_uid: str
    status: str
    payment_status: str | None
    uncertain_call: str | None
    drift: dict[str, Any] | None
    in_window: bool


def reconcile_page(
    conn: Conn,
    account: str,
    *,
    after: uuid.UUID | None,
    since: datetime,
    stale_seconds: float,
    limit: int,
) -> list[ToReconcile]:
    """The next `limit` jobs of the account a reconciliation looks up, after id `after`."""
    params = {
        "account": account,
        "after": after or uuid.UUID(int=0),
        "since": since,
        "stale": stale_seconds,
        "limit": limit,
    }
    return (
        conn.cursor(row_factory=class_row(ToReconcile)).execute(RECONCILE_PAGE, params).fetchall()
    )


def reconcile_count(conn: Conn, account: str, *, since: datetime, stale_seconds: float) -> int:
    """How many jobs of the account reconcile_page will list, all pages together."""
    params = {"account": account, "since": since, "stale": stale_seconds}
    row = conn.execute(RECONCILE_COUNT, params).fetchone()
    return int(row[0]) if row else 0


# Each move below leaves a lookup on the job's timeline: what the reconciliation saw, and why
# the job moved (the batch call itself belongs to no one job).
_SEEN = """
INSERT INTO attempts (job_id, call, started_at, http_status, code, message, outcome, trace_id)
SELECT id, 'lookup', %(looked_at)s, %(http_status)s, 0, %(note)s, 'ok', %(trace_id)s FROM moved
"""

# Guard: only a needs_refund job moves, once; whoever refunded it, no call of ours may be
# pending (a job waiting for a person sends nothing).
SETTLE_REFUNDED = f"""
WITH moved AS (
  UPDATE jobs SET status = 'refunded', refund = %(record)s, payment_status = %(payment_status)s,
      finished_at = now(), updated_at = now()
  WHERE id = %(id)s AND status = 'needs_refund'
  RETURNING id
), seen AS ({_SEEN})
SELECT count(*) FROM moved
"""  # noqa: S608

# Guard: only a failed job with no unanswered call of ours moves, once; a call of ours that may
# have done it is the run's to credit (requeue_failed).
SETTLE_CANCELLED = f"""
WITH moved AS (
  UPDATE jobs SET status = 'cancelled', cancellation = %(record)s,
      payment_status = %(payment_status)s, finished_at = now(), updated_at = now()
  WHERE id = %(id)s AND status = 'failed' AND uncertain_call IS NULL
  RETURNING id
), seen AS ({_SEEN})
SELECT count(*) FROM moved
"""  # noqa: S608

# Guard: only a failed job moves, once; as a person's retry does, and its run looks first.
REQUEUE_FAILED = f"""
WITH moved AS (
  UPDATE jobs SET status = 'queued', look_first = true, retried_at = now(), attempts = 0,
      idle_runs = 0, next_attempt_at = NULL, finished_at = NULL, lease_token = NULL,
      lease_until = NULL, due_at = now() + make_interval(secs => %(grace)s), updated_at = now()
  WHERE id = %(id)s AND status = 'failed'
  RETURNING id
), seen AS ({_SEEN})
SELECT count(*) FROM moved
"""  # noqa: S608

# Guard: the job still has the status the drift contradicts, and this drift (kind and status
# seen) is not the one it holds already, cleared or not: a repeat sweep records nothing.
RECORD_DRIFT = """
UPDATE jobs SET drift = %(record)s, updated_at = now()
WHERE id = %(id)s AND status = %(status)s
  AND (drift IS NULL OR drift->>'kind' IS DISTINCT FROM %(kind)s
       OR drift->>'seen_status' IS DISTINCT FROM %(seen_status)s)
RETURNING id
"""


@dataclass(frozen=True)
class Looked:
    """The lookup a reconciliation's move rests on, for the job's timeline."""

    at: datetime
    http_status: int | None
    note: str


def _moved(conn: Conn, sql: str, job_id: uuid.UUID, looked: Looked, **params: Any) -> bool:
    values = {
        "id": job_id,
        "looked_at": looked.at,
        "http_status": looked.http_status,
        "note": looked.note,
        "trace_id": tracing.trace_id(),
        **params,
    }
    row = conn.execute(sql, values).fetchone()
    return bool(row and row[0])


def settle_refunded_upstream(
    conn: Conn, job_id: uuid.UUID, refund: Refund, payment_status: str, looked: Looked
) -> bool:
    """needs_refund -> refunded by someone else; False when the job is no longer needs_refund.
    The caller's transaction writes the job.refunded messages with it."""
    record = _json(refund.model_copy(update={"refunded_by": "upstream"}))
    return _moved(
        conn, SETTLE_REFUNDED, job_id, looked, record=record, payment_status=payment_status
    )


def settle_cancelled_upstream(
    conn: Conn, job_id: uuid.UUID, cancellation: Cancellation, payment_status: str, looked: Looked
) -> bool:
    """failed -> cancelled by someone else; False when the job no longer qualifies. The
    caller's transaction writes the job.cancelled messages with it."""
    record = _json(cancellation.model_copy(update={"cancelled_by": "upstream"}))
    return _moved(
        conn, SETTLE_CANCELLED, job_id, looked, record=record, payment_status=payment_status
    )


def requeue_failed(conn: Conn, job_id: uuid.UUID, grace_seconds: float, looked: Looked) -> bool:
    """A failed job back to queued, looking first (publish it after the commit); False when
    it is no longer failed."""
    return _moved(conn, REQUEUE_FAILED, job_id, looked, grace=grace_seconds)


# Guard: only a drift nobody has cleared; the record stays, with who cleared it and why.
CLEAR_DRIFT = """
UPDATE jobs SET drift = drift || jsonb_build_object(
      'cleared_by', %(by)s::text, 'cleared_at', now(), 'note', %(note)s::text),
    updated_at = now()
WHERE id = %(id)s AND drift IS NOT NULL AND drift->>'cleared_at' IS NULL
RETURNING drift->>'kind'
"""


def clear_drift(conn: Conn, job_id: uuid.UUID, by: str, note: str) -> str | None:
    """A person has dealt with the job's drift: its kind, or None when none was open."""
    row = conn.execute(CLEAR_DRIFT, {"id": job_id, "by": by, "note": note}).fetchone()
    return str(row[0]) if row else None


def record_drift(conn: Conn, job_id: uuid.UUID, status: JobStatus, drift: Drift) -> bool:
    """Keep the drift on the job; False when the job moved on or holds this drift already."""
    params = {
        "id": job_id,
        "status": status.value,
        "record": _json(drift),
        "kind": drift.kind,
        "seen_status": drift.seen_status,
    }
    return conn.execute(RECORD_DRIFT, params).fetchone() is not None
