"""The webhook API's shapes (Endpoint, Delivery) and the message types."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from app.kit.text import printable

EventType = Literal[
    "job.cancelled",
    "job.needs_refund",
    "job.refunded",
    "job.failed",
    "job.drift",
    "event.completed",
]
DeliveryStatus = Literal["pending", "delivered", "failed"]


def _unique(values: list[str] | None) -> list[str] | None:
    return None if values is None else list(dict.fromkeys(values))


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Whose messages it takes: one account's (a key bound to one account: that one), or every
    # account's when omitted by an operator key.
    account: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")] | None = None
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    event_types: Annotated[
        list[EventType] | None, Field(min_length=1, max_length=16), AfterValidator(_unique)
    ] = None
    description: (
        Annotated[str, StringConstraints(max_length=256), AfterValidator(printable)] | None
    ) = None


class EndpointPublic(BaseModel):
    id: uuid.UUID
    account: str | None
    url: str
    event_types: list[str] | None
    description: str | None
    enabled: bool
    created_at: datetime


class EndpointWithSecret(EndpointPublic):
    secret: str


class EndpointList(BaseModel):
    items: list[EndpointPublic]


class Delivery(BaseModel):
    message_id: str
    event_type: str
    job_id: uuid.UUID | None
    event_id: str | None
    status: DeliveryStatus
    attempts: int
    last_http_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime


class Replayed(BaseModel):
    messages: int
