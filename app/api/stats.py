"""Job counts for dashboards and on-call engineers."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth import JobsReader
from app.db import unit_of_work
from app.listing import job_stats
from app.schemas import Stats

router = APIRouter(prefix="/v1/stats", tags=["stats"])


@router.get("", response_model=Stats)
def read_stats(_: JobsReader) -> Stats:
    """Counts by status, the oldest waiting job's age, and finishes in the last minute and hour."""
    with unit_of_work() as uow:
        return job_stats(uow.conn)
