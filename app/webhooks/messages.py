"""An endpoint's deliveries, newest first with an opaque cursor, and replay."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

from psycopg import Connection

from app.errors import InvalidCursor
from app.reads import rows
from app.webhooks.endpoints import get_endpoint
from app.webhooks.schemas import Delivery, DeliveryPage

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CURSOR_VERSION = "w1"
MAX_CURSOR_CHARS = 160
COLUMNS = (
    "id AS message_id, event_type, job_id, event_id, status, attempts, last_http_status, "
    "last_error, CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at, "
    "created_at, delivered_at"
)

# A cursor is the (created_at, id) of the last delivery shown, like the jobs list's.


def encode_cursor(created_at: datetime, message_id: str) -> str:
    raw = f"{CURSOR_VERSION}|{created_at.isoformat()}|{message_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    bad = InvalidCursor("the cursor is not one this API returned; start again without it")
    if not cursor or len(cursor) > MAX_CURSOR_CHARS or not cursor.isascii():
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, at, message_id = raw.decode("ascii").split("|")
        created_at = datetime.fromisoformat(at)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if version != CURSOR_VERSION or created_at.tzinfo is None or not message_id.startswith("msg_"):
        raise bad
    return created_at, message_id


def list_deliveries(
    conn: Connection[Any],
    endpoint_id: uuid.UUID,
    status: str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> DeliveryPage:
    """One page of the endpoint's messages, newest first; NotFound for an unknown endpoint."""
    get_endpoint(conn, endpoint_id)
    limit = max(1, min(limit, MAX_LIMIT))
    where = ["endpoint_id = %(ep)s"]
    params: dict[str, Any] = {"ep": endpoint_id, "limit": limit + 1}
    if status is not None:
        where.append("status = %(status)s")
        params["status"] = status
    if cursor is not None:
        params["c_at"], params["c_id"] = decode_cursor(cursor)
        where.append("(created_at, id) < (%(c_at)s, %(c_id)s)")
    found = rows(
        conn,
        f"SELECT {COLUMNS} FROM webhook_messages WHERE {' AND '.join(where)} "  # noqa: S608
        "ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
        params,
    )
    items = [Delivery.model_validate(r._asdict()) for r in found[:limit]]
    next_cursor = None
    if len(found) > limit:
        next_cursor = encode_cursor(items[-1].created_at, items[-1].message_id)
    return DeliveryPage(items=items, next_cursor=next_cursor)


def replay(conn: Connection[Any], endpoint_id: uuid.UUID, since: datetime) -> int:
    """Send every message for the endpoint created since then again (same webhook-id).

    Back to pending with fresh attempts. A message being sent right now loses its lease, so
    the outcome of that older send is not recorded over the replay: it is sent once more.
    """
    get_endpoint(conn, endpoint_id)
    return len(
        rows(
            conn,
            "UPDATE webhook_messages SET status = 'pending', attempts = 0, "
            "next_attempt_at = now(), delivered_at = NULL, lease_token = NULL, lease_until = NULL "
            "WHERE endpoint_id = %(ep)s AND created_at >= %(since)s RETURNING id",
            {"ep": endpoint_id, "since": since},
        )
    )
