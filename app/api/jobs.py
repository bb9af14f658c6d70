"""Reading and steering jobs."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.api.deps import SessionDep
from app.auth import JobsReader
from app.errors import NotFound
from app.reads import get_job
from app.schemas import JobPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"description": "not_found"}})
def read_job(job_id: uuid.UUID, session: SessionDep, _: JobsReader) -> JobPublic:
    """One job."""
    job = get_job(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job
