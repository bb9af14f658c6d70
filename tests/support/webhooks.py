"""Helpers for webhook tests: endpoints over the API, terminal transitions as the stores make them."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from app.kit.db import UnitOfWork
from app.webhooks.outbox import record_terminal
from tests.support.factories import api_key, auth, event

FINISH = """
UPDATE jobs SET status = %(status)s, finished_at = now(), updated_at = now(),
    lease_token = NULL, lease_until = NULL, due_at = NULL
WHERE id = %(id)s
"""


def hooks_key() -> str:
    return api_key("webhooks:write", "events:write", "jobs:read")


def add_endpoint(api: TestClient, key: str, url: str, **extra: Any) -> dict[str, Any]:
    r = api.post("/v1/webhook-endpoints", json={"url": url, **extra}, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def post_event(api: TestClient, key: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    r = api.post("/v1/stockout-events", json=event(n, **extra), headers=auth(key))
    assert r.status_code in (200, 202), r.text
    return r.json()  # type: ignore[no-any-return]


def finish_job(db: str, job_id: str | uuid.UUID, status: str = "cancelled") -> list[uuid.UUID]:
    """Move a job to a terminal status and record its messages, in one transaction; the
    endpoints it would wake after the commit (nothing is published from here)."""
    with psycopg.connect(db) as conn:
        conn.execute(FINISH, {"status": status, "id": job_id})
        uow = UnitOfWork(conn)
        record_terminal(uow, uuid.UUID(str(job_id)))
    return sorted(uow.to_wake)


def messages(db: str, endpoint_id: str | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(db) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        sql = "SELECT * FROM webhook_messages"
        if endpoint_id is None:
            return cur.execute(sql + " ORDER BY created_at, id").fetchall()
        return cur.execute(
            sql + " WHERE endpoint_id = %s ORDER BY created_at, id", (endpoint_id,)
        ).fetchall()
