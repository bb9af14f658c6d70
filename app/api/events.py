"""POST and GET stockout events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import EventsWriter, JobsReader, loop_conns
from app.config import Settings, get_settings
from app.events.intake import Accepted, accept_event, accept_new_event, check_payment_fields
from app.events.queries import get_event, list_events
from app.events.schemas import AccountName, EventCreate, EventId, EventPage, EventPublic
from app.jobs.queries import DEFAULT_LIMIT, MAX_LIMIT
from app.kit.db import unit_of_work
from app.kit.errors import NotFound
from app.upstream.accounts import Account, require_account, require_runnable
from app.webhooks import outbox

router = APIRouter(prefix="/v1/stockout-events", tags=["events"])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    409: {"description": "event_conflict"},
    422: {
        "description": "validation_error (also a payment named by the other kind of account's "
        "field) or unknown_account"
    },
}


@router.post(
    "",
    status_code=202,
    response_model=EventPublic,
    responses={200: {"model": EventPublic, "description": "a replay of a known event"}, **PROBLEMS},
)
async def post_event(event: EventCreate, request: Request, caller: EventsWriter) -> Response:
    """Accept an out-of-stock event: its jobs are committed before the answer."""
    # The new jobs are handed to the publisher thread after the commit: Redis being down or
    # frozen delays the work (the sweeps pick it up) but never the 202.
    settings = get_settings()
    account = require_account(settings, caller.account_for(event.account))
    check_payment_fields(event, account)
    require_runnable(settings, account.name)
    async with loop_conns(request).connection() as conn:
        public = await accept_new_event(conn, event, account, settings)
    if public is not None:
        return _answer(public, 202)
    accepted = await run_in_threadpool(_accept_in_thread, event, account, settings)
    return _answer(accepted.event, 202 if accepted.created else 200)


def _answer(public: EventPublic, status: int) -> Response:
    # Built from typed rows just now: FastAPI's second validation of it would only cost time.
    return Response(public.model_dump_json(), status, media_type="application/json")


def _accept_in_thread(event: EventCreate, account: Account, settings: Settings) -> Accepted:
    with unit_of_work() as uow:
        return accept_event(uow, event, account, settings, outbox.record_linked)


@router.get("", response_model=EventPage, responses={400: {"description": "invalid_cursor"}})
def read_events(
    caller: JobsReader,
    account: Annotated[AccountName | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query()] = None,
) -> EventPage:
    """Events newest first, each with how many of its jobs are terminal; follow `next_cursor`."""
    with unit_of_work() as uow:
        return list_events(uow.conn, limit, cursor, caller.visible(account))


@router.get(
    "/{event_id}", response_model=EventPublic, responses={404: {"description": "not_found"}}
)
def read_event(
    event_id: Annotated[EventId, Path()],
    caller: JobsReader,
    account: Annotated[AccountName | None, Query()] = None,
) -> EventPublic:
    """One event and its jobs; `account`: whose event (default: the key's only account, else
    `default`). Another account's event is not found."""
    name = account if account is not None else caller.home()
    event = None
    if caller.sees(name):  # another account's event is not found, like one that is not there
        with unit_of_work() as uow:
            event = get_event(uow.conn, name, event_id)
    if event is None:
        raise NotFound(f"no event {event_id!r}")
    return event
