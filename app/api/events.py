"""POST and GET stockout events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Path, Query, Response

from app.auth import EventsWriter, JobsReader
from app.config import get_settings
from app.db import session_scope
from app.dispatch import publish_jobs
from app.errors import NotFound
from app.event_progress import list_events
from app.ingest import accept_event
from app.listing import DEFAULT_LIMIT, MAX_LIMIT
from app.reads import get_event
from app.schemas import EventCreate, EventPage, EventPublic

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


@router.get("", response_model=EventPage, responses={400: {"description": "invalid_cursor"}})
def read_events(
    _: JobsReader,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query()] = None,
) -> EventPage:
    """Events newest first, each with how many of its jobs are terminal; follow `next_cursor`."""
    with session_scope() as session:
        return list_events(session, limit, cursor)


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
