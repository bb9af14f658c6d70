"""GET /v1/stats against real Postgres."""

from __future__ import annotations

import psycopg
from fastapi.testclient import TestClient

from tests.support.factories import api_key, auth, event

STATUSES = ["queued", "running", "retry_wait", "cancelled", "needs_refund", "refunded", "failed"]


def test_empty_stats(api: TestClient, key: str) -> None:
    r = api.get("/v1/stats", headers=auth(key))
    assert r.status_code == 200
    body = r.json()
    assert body["counts"] == dict.fromkeys(STATUSES, 0)
    assert body["oldest_waiting_age_seconds"] is None
    assert all(v == 0 for v in body["finished_last_minute"].values())
    assert all(v == 0 for v in body["finished_last_hour"].values())


def test_stats_numbers(api: TestClient, key: str, service_env: dict[str, str]) -> None:
    db = service_env["DATABASE_URL"]
    jobs = api.post("/v1/stockout-events", json=event(8), headers=auth(key)).json()["jobs"]
    ids = [j["id"] for j in jobs]
    with psycopg.connect(db, autocommit=True) as conn:
        # The oldest waiting job is an hour old; finished ones at various times.
        conn.execute(
            "UPDATE jobs SET created_at = now() - interval '3600 seconds' WHERE id = %s", (ids[0],)
        )
        conn.execute("UPDATE jobs SET status = 'running' WHERE id = %s", (ids[1],))
        conn.execute("UPDATE jobs SET status = 'retry_wait' WHERE id = %s", (ids[2],))
        done = [
            ("cancelled", "10 seconds"),
            ("cancelled", "30 minutes"),
            ("needs_refund", "20 seconds"),
            ("failed", "2 hours"),
            ("failed", "5 minutes"),
        ]
        for job_id, (status, ago) in zip(ids[3:], done, strict=True):
            conn.execute(
                "UPDATE jobs SET status = %s, finished_at = now() - %s::interval, "
                "created_at = now() - interval '3 hours' WHERE id = %s",
                (status, ago, job_id),
            )
    body = api.get("/v1/stats", headers=auth(key)).json()
    assert body["counts"] == {
        "queued": 1,
        "running": 1,
        "retry_wait": 1,
        "cancelled": 2,
        "needs_refund": 1,
        "refunded": 0,
        "failed": 2,
    }
    assert 3590 < body["oldest_waiting_age_seconds"] < 3700
    assert body["finished_last_minute"] == {
        "cancelled": 1,
        "needs_refund": 1,
        "refunded": 0,
        "failed": 0,
    }
    assert body["finished_last_hour"] == {
        "cancelled": 2,
        "needs_refund": 1,
        "refunded": 0,
        "failed": 1,
    }


def test_stats_needs_jobs_read(api: TestClient, service_env: dict[str, str]) -> None:
    assert api.get("/v1/stats").status_code == 401
    assert api.get("/v1/stats", headers=auth(api_key("events:write"))).status_code == 403
