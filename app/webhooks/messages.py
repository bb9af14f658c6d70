"""An endpoint's deliveries, newest first with an opaque cursor, and replay."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg import Connection

from app.kit import cursors
from app.kit.db import UnitOfWork, rows
from app.operators.audit import record_action
from app.operators.keys import Caller
from app.webhooks.endpoints import get_endpoint
from app.webhooks.schemas import Delivery, DeliveryPage

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CURSOR_KIND = "deliveries"
COLUMNS = (
    "id AS message_id, event_type, job_id, event_id, status, attempts, last_http_status, "
    "last_error, CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at, "
    "created_at, delivered_at"
)


def _message_id(key: str) -> str:
    if not key.startswith("msg_"):
        raise ValueError(key)
    return key


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
        params["c_at"], params["c_id"] = cursors.decode(CURSOR_KIND, cursor, _message_id)
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
        next_cursor = cursors.encode(CURSOR_KIND, items[-1].created_at, items[-1].message_id)
    return DeliveryPage(items=items, next_cursor=next_cursor)


def replay(uow: UnitOfWork, endpoint_id: uuid.UUID, since: datetime, caller: Caller) -> int:
    """Send every message for the endpoint created since then again (same webhook-id).

    Back to pending with fresh attempts. A message being sent right now loses its lease, so
    the outcome of that older send is not recorded over the replay: it is sent once more.
    The operator's action is recorded with it, and the endpoint woken once it commits.
    """
    get_endpoint(uow.conn, endpoint_id)
    n = len(
        rows(
            uow.conn,
            "UPDATE webhook_messages SET status = 'pending', attempts = 0, "
            "next_attempt_at = now(), delivered_at = NULL, lease_token = NULL, lease_until = NULL "
            "WHERE endpoint_id = %(ep)s AND created_at >= %(since)s RETURNING id",
            {"ep": endpoint_id, "since": since},
        )
    )
    detail = {"since": since.isoformat(), "messages": n}
    record_action(uow.conn, caller, "replay", endpoint_id=endpoint_id, detail=detail)
    if n:
        uow.wake_endpoints([endpoint_id])
    return n
