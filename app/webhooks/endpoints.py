"""Webhook endpoints: create, list, read, delete, rotate the secret.

Plain functions on the caller's connection (a unit of work's). A secret leaves this module only in the answers to
create and rotate.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import Connection

from app.kit.db import rows
from app.kit.errors import InvalidUrl, NotFound
from app.webhooks import signing, urls
from app.webhooks.schemas import EndpointCreate, EndpointPublic, EndpointWithSecret

PUBLIC_COLUMNS = "id, url, event_types, description, enabled, created_at"
INSERT = (
    "INSERT INTO webhook_endpoints (url, event_types, description, secret) "
    "VALUES (%(url)s, %(types)s, %(description)s, %(secret)s) "
    "RETURNING id, url, event_types, description, enabled, created_at"
)
SELECT = f"SELECT {PUBLIC_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL"  # noqa: S608
# The old secret goes on signing, as a second signature, for 24 hours.
ROTATE = (
    "UPDATE webhook_endpoints SET previous_secret = secret, "
    "previous_secret_until = now() + interval '24 hours', secret = %(secret)s "
    "WHERE id = %(id)s AND deleted_at IS NULL "
    "RETURNING id, url, event_types, description, enabled, created_at"
)


def _public(row: Any) -> EndpointPublic:
    return EndpointPublic.model_validate(row._asdict())


def create_endpoint(
    conn: Connection[Any], body: EndpointCreate, allow_private: bool
) -> EndpointWithSecret:
    """Store a new endpoint (its URL checked first) and return it with its secret, once."""
    try:
        urls.check(body.url, allow_private)
    except urls.UrlRefused as exc:
        # Shaped like a validation error (an `errors` list), with its own stable code.
        error = {"loc": ["body", "url"], "msg": str(exc), "type": "invalid_url"}
        raise InvalidUrl(str(exc), errors=[error]) from None
    secret = signing.new_secret()
    (row,) = rows(
        conn,
        INSERT,
        {
            "url": body.url,
            "types": body.event_types,
            "description": body.description,
            "secret": secret,
        },
    )
    return EndpointWithSecret(**_public(row).model_dump(), secret=secret)


def list_endpoints(conn: Connection[Any]) -> list[EndpointPublic]:
    """Every endpoint not deleted, oldest first (never a secret)."""
    return [_public(r) for r in rows(conn, SELECT + " ORDER BY created_at, id")]


def get_endpoint(conn: Connection[Any], endpoint_id: uuid.UUID) -> EndpointPublic:
    """One endpoint, or NotFound."""
    found = rows(conn, SELECT + " AND id = %(id)s", {"id": endpoint_id})
    if not found:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return _public(found[0])


def delete_endpoint(conn: Connection[Any], endpoint_id: uuid.UUID) -> None:
    """Delete an endpoint: nothing more is sent to it, its pending messages end as failed.

    The row stays (deleted_at) because its messages refer to it; its secrets are wiped.
    """
    found = rows(
        conn,
        "UPDATE webhook_endpoints SET deleted_at = now(), enabled = false, "
        "secret = '', previous_secret = NULL, previous_secret_until = NULL "
        "WHERE id = %(id)s AND deleted_at IS NULL RETURNING id",
        {"id": endpoint_id},
    )
    if not found:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    conn.execute(
        "UPDATE webhook_messages SET status = 'failed', last_error = 'endpoint deleted', "
        "next_attempt_at = NULL WHERE endpoint_id = %(id)s AND status = 'pending'",
        {"id": endpoint_id},
    )


def rotate_secret(conn: Connection[Any], endpoint_id: uuid.UUID) -> EndpointWithSecret:
    """A new secret; the old one goes on signing (a second signature) for 24 hours."""
    secret = signing.new_secret()
    found = rows(conn, ROTATE, {"id": endpoint_id, "secret": secret})
    if not found:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return EndpointWithSecret(**_public(found[0]).model_dump(), secret=secret)
