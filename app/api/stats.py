"""Job counts for dashboards and on-call engineers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import JobsReader
from app.events.schemas import AccountName
from app.jobs.queries import job_stats
from app.jobs.schemas import Stats
from app.kit.db import unit_of_work
from app.operators.activity import DEFAULT_MINUTES, MAX_MINUTES, recent_activity
from app.operators.schemas import Activity

router = APIRouter(prefix="/v1/stats", tags=["stats"])


@router.get("", response_model=Stats)
def read_stats(caller: JobsReader, account: Annotated[AccountName | None, Query()] = None) -> Stats:
    """Counts by status, the oldest waiting job's age, and finishes in the last minute and hour,
    for one account or every account this key sees."""
    with unit_of_work() as uow:
        return job_stats(uow.conn, caller.visible(account))


@router.get("/activity", response_model=Activity)
def read_activity(
    caller: JobsReader,
    account: Annotated[AccountName | None, Query()] = None,
    minutes: Annotated[int, Query(ge=1, le=MAX_MINUTES)] = DEFAULT_MINUTES,
) -> Activity:
    """Jobs finished per minute by status, upstream calls by outcome, and their latency."""
    with unit_of_work() as uow:
        return recent_activity(uow.conn, minutes, caller.visible(account))
