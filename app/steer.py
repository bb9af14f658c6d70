"""What people ask of a job: retry a failed one, refund a held one. Used by the API and CLI."""

from __future__ import annotations

import uuid

from app.config import Settings
from app.jobs import store
from app.jobs.status import JobStatus
from app.kit.db import UnitOfWork
from app.kit.errors import DomainError, NotFound, NotRefundable, NotRetryable
from app.listing import require_job
from app.schemas import JobPublic


def retry_job(uow: UnitOfWork, job_id: uuid.UUID, settings: Settings) -> JobPublic:
    """Put a failed job back to queued; it is published once the unit of work commits.

    The error stays as a record of why it failed, and so does a call that may have applied:
    the run then looks the payment up before it sends anything.
    """
    moved = store.retry(uow.conn, job_id, settings.dispatch_grace_seconds)
    why = f"only a {JobStatus.FAILED} job can be retried"
    return _requeued(uow, job_id, moved, NotRetryable, why)


def refund_job(uow: UnitOfWork, job_id: uuid.UUID, settings: Settings) -> JobPublic:
    """A person decided to give the money back: the job refunds the payment, then ends refunded."""
    moved = store.request_refund(uow.conn, job_id, settings.dispatch_grace_seconds)
    why = f"only a {JobStatus.NEEDS_REFUND} job can be refunded"
    return _requeued(uow, job_id, moved, NotRefundable, why)


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
