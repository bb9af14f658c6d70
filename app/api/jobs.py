"""Reading and steering jobs."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator, StringConstraints

from app.api.deps import JobsReader, JobsWriter
from app.config import get_settings
from app.events.schemas import AccountName
from app.jobs.actions import clear_drift, refund_job, retry_job
from app.jobs.queries import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    JobFilters,
    list_attempts,
    list_jobs,
    require_job,
)
from app.jobs.schemas import AttemptList, DriftClear, JobPage, JobPublic
from app.jobs.status import JobStatus
from app.kit.db import unit_of_work
from app.kit.text import printable
from app.operators.audit import list_job_actions
from app.operators.schemas import ActionList

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Filter = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(printable)]
PaymentFilter = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(printable)
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "not_found"}}


@router.get("", response_model=JobPage, responses={400: {"description": "invalid_cursor"}})
def read_jobs(
    caller: JobsReader,
    account: Annotated[AccountName | None, Query()] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    imp_uid: Annotated[Filter | None, Query()] = None,
    payment_id: Annotated[PaymentFilter | None, Query()] = None,
    merchant_uid: Annotated[Filter | None, Query()] = None,
    sku: Annotated[Filter | None, Query()] = None,
    event_id: Annotated[Filter | None, Query()] = None,
    drift: Annotated[
        Literal["open", "any"] | None,
        Query(description="`open`: jobs with a drift nobody has cleared (the Drift queue)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query()] = None,
) -> JobPage:
    """Jobs newest first, filtered; follow `next_cursor` for the next page."""
    filters = JobFilters(
        caller.visible(account), status, imp_uid, merchant_uid, sku, event_id, drift, payment_id
    )
    with unit_of_work() as uow:
        return list_jobs(uow.conn, filters, limit, cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
def read_job(job_id: uuid.UUID, caller: JobsReader) -> JobPublic:
    """One job."""
    with unit_of_work() as uow:
        return require_job(uow.conn, job_id, caller.visible())


@router.get("/{job_id}/attempts", response_model=AttemptList, responses=NOT_FOUND)
def read_attempts(job_id: uuid.UUID, caller: JobsReader) -> AttemptList:
    """Every upstream call made for the job, in order."""
    with unit_of_work() as uow:
        return AttemptList(items=list_attempts(uow.conn, job_id, caller.visible()))


@router.get("/{job_id}/actions", response_model=ActionList, responses=NOT_FOUND)
def read_actions(job_id: uuid.UUID, caller: JobsReader) -> ActionList:
    """What people did to the job (retry, refund), who and when, oldest first."""
    with unit_of_work() as uow:
        require_job(uow.conn, job_id, caller.visible())
        return ActionList(items=list_job_actions(uow.conn, job_id))


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"description": "not_retryable"}},
)
def retry(job_id: uuid.UUID, caller: JobsWriter) -> JobPublic:
    """Put a failed job back to queued; it is published once the change is committed."""
    with unit_of_work() as uow:
        return retry_job(uow, job_id, get_settings(), caller)


@router.post(
    "/{job_id}/refund",
    status_code=202,
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"description": "not_refundable"}},
)
def refund(job_id: uuid.UUID, caller: JobsWriter) -> JobPublic:
    """A person decided to refund a held payment: the job refunds it and ends `refunded`."""
    with unit_of_work() as uow:
        return refund_job(uow, job_id, get_settings(), caller)


@router.post(
    "/{job_id}/drift/clear",
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"description": "no_open_drift"}},
)
def clear(job_id: uuid.UUID, body: DriftClear, caller: JobsWriter) -> JobPublic:
    """A person has dealt with the job's drift: it leaves the Drift queue, kept with who
    cleared it and their note (an operator action on the job's timeline)."""
    with unit_of_work() as uow:
        return clear_drift(uow, job_id, body.note, caller)
