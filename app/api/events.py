"""POST and GET stockout events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from app.auth import EventsWriter, JobsReader
from app.config import get_settings
from app.db import unit_of_work
from app.errors import NotFound
from app.ingest import accept_event
from app.reads import get_event
from app.schemas import EventCreate, EventId, EventPublic

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
def post_event(event: EventCreate, response: Response, _: EventsWriter) -> EventPublic:
    """Accept an out-of-stock event: its jobs are committed before the answer."""
    # The new jobs are handed to the publisher thread after the commit: Redis being down or
    # frozen delays the work (the sweeps pick it up) but never the 202.
    with unit_of_work() as uow:
        accepted = accept_event(uow, event, get_settings())
        public = get_event(uow.conn, event.event_id)
    assert public is not None
    response.status_code = 202 if accepted.created else 200
    return public


@router.get(
    "/{event_id}", response_model=EventPublic, responses={404: {"description": "not_found"}}
)
def read_event(event_id: Annotated[EventId, Path()], _: JobsReader) -> EventPublic:
    """One event and its jobs."""
    with unit_of_work() as uow:
        event = get_event(uow.conn, event_id)
    if event is None:
        raise NotFound(f"no event {event_id!r}")
    return event
