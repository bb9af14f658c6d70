"""What people ask of a job: retry a failed one, refund a held one, clear a drift record. Each
change and its audit record are written in the caller's unit of work: they commit together or
not at all."""

from __future__ import annotations

import uuid

from app.config import Settings
from app.jobs import store
from app.jobs.queries import require_job
from app.jobs.schemas import JobPublic
from app.jobs.status import JobStatus
from app.kit.db import UnitOfWork
from app.kit.errors import DomainError, NoOpenDrift, NotFound, NotRefundable, NotRetryable
from app.operators.audit import record_action
from app.operators.keys import Caller


def retry_job(uow: UnitOfWork, job_id: uuid.UUID, settings: Settings, caller: Caller) -> JobPublic:
    """Put a failed job back to queued; it is published once the unit of work commits.

    The error stays as a record of why it failed, and so does a call that may have applied:
    the run then looks the payment up before it sends anything.
    """
    require_job(uow.conn, job_id, caller.visible())  # another account's job is not found
    moved = store.retry(uow.conn, job_id, settings.dispatch_grace_seconds)
    why = f"only a {JobStatus.FAILED} job can be retried"
    job = _requeued(uow, job_id, moved, NotRetryable, why)
    record_action(uow.conn, caller, "retry", job_id=job.id, detail={"from": JobStatus.FAILED.value})
    return job


def refund_job(uow: UnitOfWork, job_id: uuid.UUID, settings: Settings, caller: Caller) -> JobPublic:
    """A person decided to give the money back: the job refunds the payment, then ends refunded."""
    require_job(uow.conn, job_id, caller.visible())  # another account's job is not found
    moved = store.request_refund(uow.conn, job_id, settings.dispatch_grace_seconds)
    why = f"only a {JobStatus.NEEDS_REFUND} job can be refunded"
    job = _requeued(uow, job_id, moved, NotRefundable, why)
    detail = {"from": JobStatus.NEEDS_REFUND.value}
    record_action(uow.conn, caller, "refund", job_id=job.id, detail=detail)
    return job


def clear_drift(uow: UnitOfWork, job_id: uuid.UUID, note: str, caller: Caller) -> JobPublic:
    """A person has looked into the job's drift: it leaves the Drift queue, kept with their
    name and note; the job itself is not changed."""
    require_job(uow.conn, job_id, caller.visible())  # another account's job is not found
    kind = store.clear_drift(uow.conn, job_id, caller.name, note)
    if kind is None:
        raise NoOpenDrift(f"job {job_id} has no drift to clear")
    record_action(
        uow.conn, caller, "clear_drift", job_id=job_id, detail={"kind": kind, "note": note}
    )
    return require_job(uow.conn, job_id)


def _requeued(
    uow: UnitOfWork,
    job_id: uuid.UUID,
    moved: bool,
    refusal: type[DomainError],
    why: str,
) -> JobPublic:
    """The job once back in the queue (published after the commit), or why it is not."""
    if not moved:
        current = store.status_of(uow.conn, job_id)
        if current is None:
            raise NotFound(f"no job {job_id}")
        raise refusal(f"{why}; this one is {current.value}")
    uow.publish([job_id])
    return require_job(uow.conn, job_id)
