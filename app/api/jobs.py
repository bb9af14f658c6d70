"""Reading and steering jobs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query
from pydantic import AfterValidator, StringConstraints

from app.api.deps import SessionDep
from app.audit import list_job_actions, record_action
from app.auth import JobsReader, JobsWriter
from app.config import get_settings
from app.db import session_scope
from app.dispatch import publish_jobs
from app.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    JobFilters,
    list_attempts,
    list_jobs,
    require_job,
    retry_job,
)
from app.schemas import ActionList, AttemptList, JobPage, JobPublic, JobStatus, _printable

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Filter = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_printable)]


@router.get("", response_model=JobPage, responses={400: {"description": "invalid_cursor"}})
def read_jobs(
    session: SessionDep,
    _: JobsReader,
    status: Annotated[JobStatus | None, Query()] = None,
    imp_uid: Annotated[Filter | None, Query()] = None,
    merchant_uid: Annotated[Filter | None, Query()] = None,
    sku: Annotated[Filter | None, Query()] = None,
    event_id: Annotated[Filter | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query()] = None,
) -> JobPage:
    """Jobs newest first, filtered; follow `next_cursor` for the next page."""
    filters = JobFilters(status, imp_uid, merchant_uid, sku, event_id)
    return list_jobs(session, filters, limit, cursor)


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"description": "not_found"}})
def read_job(job_id: uuid.UUID, session: SessionDep, _: JobsReader) -> JobPublic:
    """One job."""
    return require_job(session, job_id)


@router.get(
    "/{job_id}/attempts", response_model=AttemptList, responses={404: {"description": "not_found"}}
)
def read_attempts(job_id: uuid.UUID, session: SessionDep, _: JobsReader) -> AttemptList:
    """Every upstream call made for the job, in order."""
    return AttemptList(items=list_attempts(session, job_id))


@router.get(
    "/{job_id}/actions", response_model=ActionList, responses={404: {"description": "not_found"}}
)
def read_actions(job_id: uuid.UUID, session: SessionDep, _: JobsReader) -> ActionList:
    """What operators did to the job (retry, refund), who and when, oldest first."""
    return ActionList(items=list_job_actions(session, job_id))


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobPublic,
    responses={404: {"description": "not_found"}, 409: {"description": "not_retryable"}},
)
def retry(job_id: uuid.UUID, background: BackgroundTasks, caller: JobsWriter) -> JobPublic:
    """Put a failed job back to queued; it is published once the change is committed."""
    # Our own transaction, committed before the answer and before the publish; if the
    # publish is lost, the sweep publishes the job once its due_at passes. The operator's
    # action is recorded in the same transaction: both happen or neither does.
    with session_scope() as session:
        job = retry_job(session, job_id, get_settings().dispatch_grace_seconds)
        record_action(session, caller, "retry", job_id=job.id, detail={"from": "failed"})
    background.add_task(publish_jobs, [job.id])
    return job
