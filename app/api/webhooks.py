"""Webhook endpoints: register, list, delete, rotate the secret, deliveries, replay."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Response

from app.api.deps import SessionDep
from app.auth import WebhooksWriter
from app.config import get_settings
from app.db import session_scope
from app.webhooks import endpoints, messages, wake
from app.webhooks.schemas import (
    DeliveryPage,
    DeliveryStatus,
    EndpointCreate,
    EndpointList,
    EndpointPublic,
    EndpointWithSecret,
    Replayed,
    ReplayRequest,
)

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "not_found"}}


@router.post(
    "",
    status_code=201,
    response_model=EndpointWithSecret,
    responses={422: {"description": "invalid_url or validation_error"}},
)
def create(body: EndpointCreate, session: SessionDep, _: WebhooksWriter) -> EndpointWithSecret:
    """Register an endpoint; its signing secret is shown in this answer only."""
    return endpoints.create_endpoint(session, body, get_settings().webhook_allow_private_urls)


@router.get("", response_model=EndpointList)
def read_all(session: SessionDep, _: WebhooksWriter) -> EndpointList:
    """Every endpoint (never a secret)."""
    return EndpointList(items=endpoints.list_endpoints(session))


@router.get("/{endpoint_id}", response_model=EndpointPublic, responses=NOT_FOUND)
def read_one(endpoint_id: uuid.UUID, session: SessionDep, _: WebhooksWriter) -> EndpointPublic:
    """One endpoint."""
    return endpoints.get_endpoint(session, endpoint_id)


@router.delete("/{endpoint_id}", status_code=204, response_class=Response, responses=NOT_FOUND)
def delete(endpoint_id: uuid.UUID, session: SessionDep, _: WebhooksWriter) -> Response:
    """Delete an endpoint: nothing more is sent to it."""
    endpoints.delete_endpoint(session, endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret, responses=NOT_FOUND)
def rotate(endpoint_id: uuid.UUID, session: SessionDep, _: WebhooksWriter) -> EndpointWithSecret:
    """A new secret; for 24 hours messages are signed with the old one as well."""
    return endpoints.rotate_secret(session, endpoint_id)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    responses={**NOT_FOUND, 400: {"description": "invalid_cursor"}},
)
def deliveries(
    endpoint_id: uuid.UUID,
    session: SessionDep,
    _: WebhooksWriter,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=messages.MAX_LIMIT)] = messages.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query()] = None,
) -> DeliveryPage:
    """The endpoint's messages, newest first; follow `next_cursor` for the next page."""
    return messages.list_deliveries(session, endpoint_id, status, limit, cursor)


@router.post("/{endpoint_id}/replay", status_code=202, response_model=Replayed, responses=NOT_FOUND)
def replay(
    endpoint_id: uuid.UUID, body: ReplayRequest, background: BackgroundTasks, _: WebhooksWriter
) -> Replayed:
    """Send every message created since `since` again, with the same webhook-id."""
    # Committed before the answer; the wake-up goes after it (the sweep covers a lost one).
    with session_scope() as session:
        n = messages.replay(session, endpoint_id, body.since)
    if n:
        background.add_task(wake.publish, [endpoint_id] * min(n, 4))
    return Replayed(messages=n)
