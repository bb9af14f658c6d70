"""Operator actions (retry, refund, replay, clear_drift): who did what, written in the action's transaction."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from psycopg import Connection
from psycopg.types.json import Jsonb

from app.kit.db import rows
from app.kit.errors import NotFound
from app.operators.keys import Caller
from app.operators.schemas import ActionPublic

Action = Literal["retry", "refund", "replay", "clear_drift"]


def record_action(
    conn: Connection[Any],
    caller: Caller,
    action: Action,
    *,
    job_id: uuid.UUID | None = None,
    endpoint_id: uuid.UUID | str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record `caller`'s action in the caller's transaction: it commits or rolls back with it."""
    conn.execute(
        "INSERT INTO operator_actions (key_id, key_name, action, job_id, endpoint_id, detail) "
        "VALUES (%(key_id)s, %(key_name)s, %(action)s, %(job_id)s, %(endpoint_id)s, %(detail)s)",
        {
            "key_id": caller.key_id,
            "key_name": caller.name,
            "action": action,
            "job_id": job_id,
            "endpoint_id": str(endpoint_id) if endpoint_id is not None else None,
            "detail": Jsonb(detail) if detail is not None else None,
        },
    )


def list_job_actions(conn: Connection[Any], job_id: uuid.UUID) -> list[ActionPublic]:
    """The actions taken on a job, oldest first; NotFound if there is no such job."""
    if not rows(conn, "SELECT 1 FROM jobs WHERE id = %s", (job_id,)):
        raise NotFound(f"no job {job_id}")
    found = rows(
        conn,
        "SELECT at, action, key_id, key_name, job_id, endpoint_id, detail "
        "FROM operator_actions WHERE job_id = %s ORDER BY id",
        (job_id,),
    )
    return [ActionPublic.model_validate(r._asdict()) for r in found]
