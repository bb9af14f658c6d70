"""What people ask of a job: retry a failed one, refund a held one. Used by the API and CLI."""

from __future__ import annotations

import uuid

from app.config import Settings
from app.db import UnitOfWork
from app.errors import NotFound, NotRefundable, NotRetryable
from app.jobs import store
from app.listing import require_job
from app.schemas import JobPublic


def retry_job(uow: UnitOfWork, job_id: uuid.UUID, settings: Settings) -> JobPublic:
    """Put a failed job back to queued; it is published once the unit of work commits.

    The error stays as a record of why it failed, and so does a call that may have applied:
    the run then looks the payment up before it sends anything.
    """
    if not store.retry(uow.conn, job_id, settings.dispatch_grace_seconds):
        current = store.status_of(uow.conn, job_id)
        if current is None:
            raise NotFound(f"no job {job_id}")
        raise NotRetryable(f"only a failed job can be retried; this one is {current.value}")
    uow.publish([job_id])
    return require_job(uow.conn, job_id)


def refund_job(uow: UnitOfWork, job_id: uuid.UUID, settings: Settings) -> JobPublic:
    """A person decided to give the money back: the job refunds the payment, then ends refunded."""
    if not store.request_refund(uow.conn, job_id, settings.dispatch_grace_seconds):
        current = store.status_of(uow.conn, job_id)
        if current is None:
            raise NotFound(f"no job {job_id}")
        raise NotRefundable(f"only a needs_refund job can be refunded; this one is {current.value}")
    uow.publish([job_id])
    return require_job(uow.conn, job_id)
