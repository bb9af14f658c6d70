"""One run of one job: load, decide, call, record. The decisions live in app/jobs.py."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from psycopg import Connection

from app import metrics
from app.config import Settings
from app.iamport.client import CallRecord, IamportClient
from app.iamport.errors import (
    NotFound,
    OutcomeUnknown,
    RateLimited,
    Refused,
    Unauthorized,
    Unavailable,
)
from app.jobs import JobState, Kind, Policy, Result, Step, cancellation_of, drive
from worker import store

log = structlog.get_logger("worker")
REDIS_DOWN_DELAY = 5.0


class LeaseLost(Exception):
    """Another worker holds the job now: stop without sending anything."""


def policy_from(settings: Settings) -> Policy:
    return Policy(
        max_attempts=settings.cancel_max_attempts,
        base_seconds=settings.cancel_retry_base_seconds,
        cap_seconds=settings.cancel_retry_max_seconds,
        unknown_floor_seconds=min(
            settings.iamport_timeout_seconds, settings.cancel_retry_max_seconds
        ),
    )


def _error(exc: Exception) -> dict[str, Any]:
    return {
        "http_status": getattr(exc, "http_status", None),
        "code": getattr(exc, "code", None),
        "message": getattr(exc, "message", None) or type(exc).__name__,
    }


def call_step(client: IamportClient, step: Step, imp_uid: str, observer: JobRun) -> Result:
    """Make the step's upstream call and reduce the answer to a Result."""
    try:
        if step is Step.CANCEL:
            payment = client.cancel_cvs(imp_uid, observer=observer)
        else:
            payment = client.get_payment(imp_uid, observer=observer)
    except RateLimited as exc:
        return Result(Kind.RATE_LIMITED, retry_after=exc.retry_after)
    except NotFound as exc:
        return Result(Kind.NOT_FOUND, error=_error(exc))
    except Refused as exc:
        return Result(Kind.REFUSED, error=_error(exc))
    except Unauthorized as exc:
        return Result(Kind.UNAUTHORIZED, error=_error(exc))
    except (OutcomeUnknown, Unavailable) as exc:
        return Result(Kind.UNKNOWN, error=_error(exc))
    except redis.RedisError:
        # The token cache or the limiter is unreachable, so nothing was sent: wait, uncounted.
        return Result(Kind.RATE_LIMITED, retry_after=REDIS_DOWN_DELAY)
    cancellation = cancellation_of(payment) if payment.status == "cancelled" else None
    return Result(Kind.OK, payment_status=payment.status, cancellation=cancellation)


class JobRun:
    """Observes one run's upstream calls: writes each cancel ahead, collects every record."""

    def __init__(self, conn: Connection[Any], job: store.Claimed, lease_seconds: float) -> None:
        self.conn = conn
        self.job = job
        self.lease_seconds = lease_seconds
        self.written: dict[int, CallRecord] = {}
        self.others: list[CallRecord] = []
        self.pending: int | None = None
        self.cancels_sent = 0

    def before_send(self, call: str) -> None:
        if call != "cancel":
            return
        attempt_id = store.write_ahead(
            self.conn, self.job.id, self.job.lease_token, self.lease_seconds, datetime.now(UTC)
        )
        if attempt_id is None:
            raise LeaseLost
        self.pending = attempt_id
        self.cancels_sent += 1

    def after_call(self, record: CallRecord) -> None:
        metrics.observe_upstream(record)
        if record.call == "cancel" and self.pending is not None:
            self.written[self.pending] = record
            self.pending = None
        else:
            self.others.append(record)


def run_job(
    conn: Connection[Any],
    client: IamportClient,
    job: store.Claimed,
    settings: Settings,
    rng: random.Random,
) -> str:
    """Drive one claimed job as far as this run can; returns the status recorded."""
    observer = JobRun(conn, job, settings.lease_seconds)

    def call(step: Step) -> Result:
        before = observer.cancels_sent
        result = call_step(client, step, job.imp_uid, observer)
        return replace(result, sent=step is Step.LOOKUP or observer.cancels_sent > before)

    try:
        run = drive(
            JobState(job.attempts, job.uncertain), call, policy_from(settings), rng, job.error
        )
    except LeaseLost:
        log.info("lease_lost", job_id=str(job.id), imp_uid=job.imp_uid)
        return "lease_lost"
    decision = run.decision
    assert decision.status is not None
    outcome = store.Outcome(
        status=decision.status,
        delay=decision.delay or 0.0,
        uncertain=decision.uncertain,
        attempts=run.attempts,
        payment_status=decision.payment_status,
        cancellation=decision.cancellation,
        error=decision.error,
        terminal=decision.terminal,
    )
    if not store.finish(conn, job.id, job.lease_token, outcome, observer.written, observer.others):
        log.warning("lease_lost_at_finish", job_id=str(job.id), imp_uid=job.imp_uid)
        return "lease_lost"
    if decision.terminal:
        metrics.job_finished(decision.status)
    log.info(
        "job_run",
        job_id=str(job.id),
        imp_uid=job.imp_uid,
        status=decision.status,
        attempts=run.attempts,
    )
    return decision.status
