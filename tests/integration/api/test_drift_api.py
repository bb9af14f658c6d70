"""The Drift queue over the API: `GET /v1/jobs?drift=open` and
`POST /v1/jobs/{id}/drift/clear` with a note, an operator action on the job's timeline."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from app.kit.db import pool
from tests.support.factories import api_key, auth, event


def drifted(api: TestClient, key: str, kind: str = "cancelled_but_paid") -> str:
    r = api.post("/v1/stockout-events", json=event(1), headers=auth(key))
    assert r.status_code == 202, r.text
    job_id = r.json()["jobs"][0]["id"]
    drift = {"kind": kind, "seen_status": "paid", "seen_at": datetime.now(UTC).isoformat()}
    with pool().connection() as conn:
        conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = now(), drift = %s WHERE id = %s",
            (Jsonb(drift), uuid.UUID(job_id)),
        )
    return str(job_id)


def queue(api: TestClient, key: str, which: str = "open") -> list[dict[str, Any]]:
    r = api.get("/v1/jobs", params={"drift": which}, headers=auth(key))
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


def test_a_person_clears_a_drift_with_a_note(api: TestClient, key: str) -> None:
    job_id = drifted(api, key)
    other = api.post("/v1/stockout-events", json=event(1), headers=auth(key)).json()
    assert [j["id"] for j in queue(api, key)] == [job_id]
    assert other["jobs"][0]["id"] not in [j["id"] for j in queue(api, key, "any")]

    writer = api_key("jobs:write", "jobs:read")
    r = api.post(
        f"/v1/jobs/{job_id}/drift/clear", json={"note": "refunded by phone"}, headers=auth(writer)
    )
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "cancelled"  # the job itself is not changed
    assert (
        job["drift"]["kind"] == "cancelled_but_paid" and job["drift"]["note"] == "refunded by phone"
    )
    assert job["drift"]["cleared_by"] and job["drift"]["cleared_at"]
    assert queue(api, key) == [] and [j["id"] for j in queue(api, key, "any")] == [job_id]

    actions = api.get(f"/v1/jobs/{job_id}/actions", headers=auth(key)).json()["items"]
    assert [a["action"] for a in actions] == ["clear_drift"]
    assert actions[0]["detail"] == {"kind": "cancelled_but_paid", "note": "refunded by phone"}

    again = api.post(f"/v1/jobs/{job_id}/drift/clear", json={"note": "x"}, headers=auth(writer))
    assert again.status_code == 409 and again.json()["code"] == "no_open_drift"


def test_clearing_needs_a_note_the_write_scope_and_a_visible_job(api: TestClient, key: str) -> None:
    job_id = drifted(api, key)
    writer = api_key("jobs:write", "jobs:read")
    empty = api.post(f"/v1/jobs/{job_id}/drift/clear", json={"note": ""}, headers=auth(writer))
    assert empty.status_code == 422
    reader = api_key("jobs:read")
    denied = api.post(f"/v1/jobs/{job_id}/drift/clear", json={"note": "ok"}, headers=auth(reader))
    assert denied.status_code == 403
    missing = api.post(
        f"/v1/jobs/{uuid.uuid4()}/drift/clear", json={"note": "ok"}, headers=auth(writer)
    )
    assert missing.status_code == 404
    assert [j["id"] for j in queue(api, key)] == [job_id]
    assert api.get("/v1/jobs", params={"drift": "soon"}, headers=auth(key)).status_code == 422
