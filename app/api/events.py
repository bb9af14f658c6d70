"""POST and GET stockout events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Path, Response

from app.auth import EventsWriter, JobsReader
from app.config import get_settings
from app.db import session_scope
from app.dispatch import publish_jobs
from app.errors import NotFound
from app.ingest import accept_event
from app.reads import get_event
from app.schemas import EventCreate, EventPublic

router = APIRouter(prefix="/v1/stockout-events", tags=["events"])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    409: {"description": "event_conflict"},
    422: {"description": "validation_error"},
}


@router.post(
    "",
    status_code=202,
    response_model=EventPublic,
    responses={200: {"model": EventPublic, "description": "a replay of a known event"}, **PROBLEMS},
)
def post_event(
    event: EventCreate, response: Response, background: BackgroundTasks, _: EventsWriter
) -> EventPublic:
    """Accept an out-of-stock event: its jobs are committed before the answer."""
    settings = get_settings()
    with session_scope() as session:
        accepted = accept_event(session, event, settings.dispatch_grace_seconds)
        public = get_event(session, event.event_id)
    assert public is not None
    # Published only after the commit and after the answer: Redis being down delays the work
    # (the sweeps pick it up) but never the 202.
    if accepted.new_job_ids:
        background.add_task(publish_jobs, accepted.new_job_ids)
    response.status_code = 202 if accepted.created else 200
    return public


@router.get(
    "/{event_id}", response_model=EventPublic, responses={404: {"description": "not_found"}}
)
def read_event(event_id: str = Path(max_length=128), *, _: JobsReader) -> EventPublic:
    """One event and its jobs."""
    with session_scope() as session:
        event = get_event(session, event_id)
    if event is None:
        raise NotFound(f"no event {event_id!r}" if event_id.isprintable() else "no such event")
    return event
