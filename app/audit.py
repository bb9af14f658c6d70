"""Operator actions (retry, refund, replay): who did what, written in the action's transaction."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.auth import Caller
from app.errors import NotFound
from app.schemas import ActionPublic

Action = Literal["retry", "refund", "replay"]


def record_action(
    session: Session,
    caller: Caller,
    action: Action,
    *,
    job_id: uuid.UUID | None = None,
    endpoint_id: uuid.UUID | str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record `caller`'s action in the caller's transaction: it commits or rolls back with it."""
    session.execute(
        text(
            "INSERT INTO operator_actions (key_id, key_name, action, job_id, endpoint_id, detail) "
            "VALUES (:key_id, :key_name, :action, :job_id, :endpoint_id, CAST(:detail AS jsonb))"
        ),
        {
            "key_id": caller.key_id,
            "key_name": caller.name,
            "action": action,
            "job_id": job_id,
            "endpoint_id": str(endpoint_id) if endpoint_id is not None else None,
            "detail": json.dumps(detail) if detail is not None else None,
        },
    )


def list_job_actions(session: Session, job_id: uuid.UUID) -> list[ActionPublic]:
    """The actions taken on a job, oldest first; NotFound if there is no such job."""
    exists = session.execute(text("SELECT 1 FROM jobs WHERE id = :id"), {"id": job_id}).first()
    if exists is None:
        raise NotFound(f"no job {job_id}")
    rows = session.execute(
        text(
            "SELECT at, action, key_id, key_name, job_id, endpoint_id, detail "
            "FROM operator_actions WHERE job_id = :id ORDER BY id"
        ),
        {"id": job_id},
    ).all()
    return [ActionPublic.model_validate(dict(r._mapping)) for r in rows]
