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
from app.kit.scope import Accounts, as_list, in_accounts
from app.webhooks import signing, urls
from app.webhooks.schemas import EndpointCreate, EndpointPublic, EndpointWithSecret

PUBLIC_COLUMNS = "id, account, url, event_types, description, enabled, created_at"
INSERT = (
    "INSERT INTO webhook_endpoints (account, url, event_types, description, secret) "  # noqa: S608
    "VALUES (%(account)s, %(url)s, %(types)s, %(description)s, %(secret)s) "
    f"RETURNING {PUBLIC_COLUMNS}"
)
# A bound key sees its accounts' endpoints only; an operator's (account NULL) takes every
# account's messages, so it is an operator's to see.
SELECT = (
    f"SELECT {PUBLIC_COLUMNS} FROM webhook_endpoints "  # noqa: S608
    f"WHERE deleted_at IS NULL AND {in_accounts('account')}"
)
# The old secret goes on signing, as a second signature, for 24 hours.
ROTATE = (
    "UPDATE webhook_endpoints SET previous_secret = secret, "  # noqa: S608
    "previous_secret_until = now() + interval '24 hours', secret = %(secret)s "
    f"WHERE id = %(id)s AND deleted_at IS NULL AND {in_accounts('account')} "
    f"RETURNING {PUBLIC_COLUMNS}"
)


def _public(row: Any) -> EndpointPublic:
    return EndpointPublic.model_validate(row._asdict())


def create_endpoint(
    conn: Connection[Any], body: EndpointCreate, account: str | None, allow_private: bool
) -> EndpointWithSecret:
    """Store a new endpoint (its URL checked first) and return it with its secret, once.
    `account`: the one account whose messages it takes (None: every account's)."""
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
            "account": account,
            "url": body.url,
            "types": body.event_types,
            "description": body.description,
            "secret": secret,
        },
    )
    return EndpointWithSecret(**_public(row).model_dump(), secret=secret)


def list_endpoints(conn: Connection[Any], accounts: Accounts = None) -> list[EndpointPublic]:
    """Every endpoint not deleted, oldest first (never a secret)."""
    found = rows(conn, SELECT + " ORDER BY created_at, id", {"accounts": as_list(accounts)})
    return [_public(r) for r in found]


def get_endpoint(
    conn: Connection[Any], endpoint_id: uuid.UUID, accounts: Accounts = None
) -> EndpointPublic:
    """One endpoint these accounts see, or NotFound."""
    params = {"id": endpoint_id, "accounts": as_list(accounts)}
    found = rows(conn, SELECT + " AND id = %(id)s", params)
    if not found:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return _public(found[0])


def delete_endpoint(
    conn: Connection[Any], endpoint_id: uuid.UUID, accounts: Accounts = None
) -> None:
    """Delete an endpoint: nothing more is sent to it, its pending messages end as failed.

    The row stays (deleted_at) because its messages refer to it; its secrets are wiped.
    """
    found = rows(
        conn,
        "UPDATE webhook_endpoints SET deleted_at = now(), enabled = false, "  # noqa: S608
        "secret = '', previous_secret = NULL, previous_secret_until = NULL "
        f"WHERE id = %(id)s AND deleted_at IS NULL AND {in_accounts('account')} RETURNING id",
        {"id": endpoint_id, "accounts": as_list(accounts)},
    )
    if not found:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    conn.execute(
        "UPDATE webhook_messages SET status = 'failed', last_error = 'endpoint deleted', "
        "next_attempt_at = NULL WHERE endpoint_id = %(id)s AND status = 'pending'",
        {"id": endpoint_id},
    )


def rotate_secret(
    conn: Connection[Any], endpoint_id: uuid.UUID, accounts: Accounts = None
) -> EndpointWithSecret:
    """A new secret; the old one goes on signing (a second signature) for 24 hours."""
    secret = signing.new_secret()
    params = {"id": endpoint_id, "secret": secret, "accounts": as_list(accounts)}
    found = rows(conn, ROTATE, params)
    if not found:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return EndpointWithSecret(**_public(found[0]).model_dump(), secret=secret)
