"""Webhook endpoints: create, list, read, delete, rotate the secret.

Plain functions on the caller's session. A secret leaves this module only in the answers to
create and rotate.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.errors import InvalidUrl, NotFound
from app.webhooks import signing, urls
from app.webhooks.schemas import EndpointCreate, EndpointPublic, EndpointWithSecret

PUBLIC_COLUMNS = "id, url, event_types, description, enabled, created_at"
INSERT = (
    "INSERT INTO webhook_endpoints (url, event_types, description, secret) "
    "VALUES (:url, :types, :description, :secret) "
    "RETURNING id, url, event_types, description, enabled, created_at"
)
SELECT = f"SELECT {PUBLIC_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL"  # noqa: S608
# The old secret goes on signing, as a second signature, for 24 hours.
ROTATE = (
    "UPDATE webhook_endpoints SET previous_secret = secret, "
    "previous_secret_until = now() + interval '24 hours', secret = :secret "
    "WHERE id = :id AND deleted_at IS NULL "
    "RETURNING id, url, event_types, description, enabled, created_at"
)


def _public(row: Any) -> EndpointPublic:
    return EndpointPublic.model_validate(dict(row._mapping))


def create_endpoint(
    session: Session, body: EndpointCreate, allow_private: bool
) -> EndpointWithSecret:
    """Store a new endpoint (its URL checked first) and return it with its secret, once."""
    try:
        urls.check(body.url, allow_private)
    except urls.UrlRefused as exc:
        # Shaped like a validation error (an `errors` list), with its own stable code.
        error = {"loc": ["body", "url"], "msg": str(exc), "type": "invalid_url"}
        raise InvalidUrl(str(exc), errors=[error]) from None
    secret = signing.new_secret()
    row = session.execute(
        text(INSERT),
        {
            "url": body.url,
            "types": body.event_types,
            "description": body.description,
            "secret": secret,
        },
    ).one()
    return EndpointWithSecret(**_public(row).model_dump(), secret=secret)


def list_endpoints(session: Session) -> list[EndpointPublic]:
    """Every endpoint not deleted, oldest first (never a secret)."""
    rows = session.execute(text(SELECT + " ORDER BY created_at, id"))
    return [_public(r) for r in rows]


def get_endpoint(session: Session, endpoint_id: uuid.UUID) -> EndpointPublic:
    """One endpoint, or NotFound."""
    row = session.execute(
        text(SELECT + " AND id = :id"),
        {"id": endpoint_id},
    ).first()
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return _public(row)


def delete_endpoint(session: Session, endpoint_id: uuid.UUID) -> None:
    """Delete an endpoint: nothing more is sent to it, its pending messages end as failed.

    The row stays (deleted_at) because its messages refer to it; its secrets are wiped.
    """
    row = session.execute(
        text(
            "UPDATE webhook_endpoints SET deleted_at = now(), enabled = false, "
            "secret = '', previous_secret = NULL, previous_secret_until = NULL "
            "WHERE id = :id AND deleted_at IS NULL RETURNING id"
        ),
        {"id": endpoint_id},
    ).first()
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    session.execute(
        text(
            "UPDATE webhook_messages SET status = 'failed', last_error = 'endpoint deleted', "
            "next_attempt_at = NULL WHERE endpoint_id = :id AND status = 'pending'"
        ),
        {"id": endpoint_id},
    )


def rotate_secret(session: Session, endpoint_id: uuid.UUID) -> EndpointWithSecret:
    """A new secret; the old one goes on signing (a second signature) for 24 hours."""
    secret = signing.new_secret()
    row = session.execute(
        text(ROTATE),
        {"id": endpoint_id, "secret": secret},
    ).first()
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return EndpointWithSecret(**_public(row).model_dump(), secret=secret)
