"""Webhook endpoints: register, list, delete, rotate the secret, deliveries, replay."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.api.deps import WebhooksWriter
from app.config import get_settings
from app.kit.db import unit_of_work
from app.upstream.accounts import require_account
from app.webhooks import endpoints, messages
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
    responses={422: {"description": "invalid_url, unknown_account or validation_error"}},
)
def create(body: EndpointCreate, caller: WebhooksWriter) -> EndpointWithSecret:
    """Register an endpoint; its signing secret is shown in this answer only."""
    settings = get_settings()
    # A bound key's endpoint is always one of its accounts'; an operator's may take all.
    account = (
        caller.account_for(body.account)
        if caller.accounts is not None or body.account is not None
        else None
    )
    if account is not None:
        require_account(settings, account)
    with unit_of_work() as uow:
        return endpoints.create_endpoint(
            uow.conn, body, account, settings.webhook_allow_private_urls
        )


@router.get("", response_model=EndpointList)
def read_all(caller: WebhooksWriter) -> EndpointList:
    """Every endpoint this key sees (never a secret)."""
    with unit_of_work() as uow:
        return EndpointList(items=endpoints.list_endpoints(uow.conn, caller.visible()))


@router.get("/{endpoint_id}", response_model=EndpointPublic, responses=NOT_FOUND)
def read_one(endpoint_id: uuid.UUID, caller: WebhooksWriter) -> EndpointPublic:
    """One endpoint."""
    with unit_of_work() as uow:
        return endpoints.get_endpoint(uow.conn, endpoint_id, caller.visible())


@router.delete("/{endpoint_id}", status_code=204, response_class=Response, responses=NOT_FOUND)
def delete(endpoint_id: uuid.UUID, caller: WebhooksWriter) -> Response:
    """Delete an endpoint: nothing more is sent to it."""
    with unit_of_work() as uow:
        endpoints.delete_endpoint(uow.conn, endpoint_id, caller.visible())
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret, responses=NOT_FOUND)
def rotate(endpoint_id: uuid.UUID, caller: WebhooksWriter) -> EndpointWithSecret:
    """A new secret; for 24 hours messages are signed with the old one as well."""
    with unit_of_work() as uow:
        return endpoints.rotate_secret(uow.conn, endpoint_id, caller.visible())


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    responses={**NOT_FOUND, 400: {"description": "invalid_cursor"}},
)
def deliveries(
    endpoint_id: uuid.UUID,
    caller: WebhooksWriter,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=messages.MAX_LIMIT)] = messages.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query()] = None,
) -> DeliveryPage:
    """The endpoint's messages, newest first; follow `next_cursor` for the next page."""
    with unit_of_work() as uow:
        endpoints.get_endpoint(uow.conn, endpoint_id, caller.visible())
        return messages.list_deliveries(uow.conn, endpoint_id, status, limit, cursor)


@router.post("/{endpoint_id}/replay", status_code=202, response_model=Replayed, responses=NOT_FOUND)
def replay(endpoint_id: uuid.UUID, body: ReplayRequest, caller: WebhooksWriter) -> Replayed:
    """Send every message created since `since` again, with the same webhook-id."""
    # Committed before the answer; the wake-up goes after it, through the publisher thread
    # (a request never waits on Redis; the sweep covers a lost one).
    with unit_of_work() as uow:
        endpoints.get_endpoint(uow.conn, endpoint_id, caller.visible())
        n = messages.replay(uow, endpoint_id, body.since, caller)
    return Replayed(messages=n)
