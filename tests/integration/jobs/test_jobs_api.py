"""GET /v1/jobs (filters, cursor paging), attempts, retry, against real Postgres and Redis."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from app.kit import cursors, dispatch
from tests.support.factories import api_key, auth, event


def post_event(api: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def set_status(db: str, job_id: str, status: str, **extra: Any) -> None:
    sets = ", ".join(["status = %(status)s", *(f"{k} = %({k})s" for k in extra)])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            f"UPDATE jobs SET {sets} WHERE id = %(id)s", {"id": job_id, "status": status, **extra}
        )


def page_all(api: TestClient, key: str, query: str = "", limit: int = 100) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        url = f"/v1/jobs?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        r = api.get(url, headers=auth(key))
        assert r.status_code == 200, r.text
        body = r.json()
        ids += [j["id"] for j in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def test_list_is_newest_first_with_all_fields(api: TestClient, key: str) -> None:
    first = post_event(api, key, event(2))
    second = post_event(api, key, event(1))
    r = api.get("/v1/jobs", headers=auth(key))
    assert r.status_code == 200
    body = r.json()
    assert body["next_cursor"] is None
    assert body["items"][0]["id"] == second["jobs"][0]["id"]
    assert {j["id"] for j in body["items"][1:]} == {j["id"] for j in first["jobs"]}
    job = body["items"][0]
    assert set(job) == {
        "id",
        "account",
        "payment_id",
        "imp_uid",
        "merchant_uid",
        "status",
        "pay_method",
        "on_paid",
        "attempts",
        "next_attempt_at",
        "payment_status",
        "cancellation",
        "refund",
        "error",
        "drift",
        "event_ids",
        "created_at",
        "updated_at",
        "finished_at",
    }
    assert job["event_ids"] == [second["event_id"]]


def test_every_filter(api: TestClient, key: str, service_env: dict[str, str]) -> None:
    db = service_env["DATABASE_URL"]
    a = post_event(api, key, event(3, sku="SKU-A"))
    b = post_event(api, key, event(2, sku="SKU-B"))
    set_status(db, a["jobs"][0]["id"], "failed")
    set_status(db, b["jobs"][1]["id"], "failed")

    def ids(query: str) -> set[str]:
        r = api.get(f"/v1/jobs?{query}", headers=auth(key))
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["items"]}

    assert ids("status=failed") == {a["jobs"][0]["id"], b["jobs"][1]["id"]}
    assert ids("status=queued") == {a["jobs"][1]["id"], a["jobs"][2]["id"], b["jobs"][0]["id"]}
    assert ids("status=cancelled") == set()
    assert ids(f"imp_uid={a['jobs'][1]['imp_uid']}") == {a["jobs"][1]["id"]}
    assert ids(f"merchant_uid={b['jobs'][0]['merchant_uid']}") == {b["jobs"][0]["id"]}
    assert ids("sku=SKU-A") == {j["id"] for j in a["jobs"]}
    assert ids("sku=SKU-B&status=failed") == {b["jobs"][1]["id"]}
    assert ids(f"event_id={b['event_id']}") == {j["id"] for j in b["jobs"]}
    assert ids("event_id=nope") == set()
    assert ids("imp_uid=unknown") == set()


def test_job_linked_to_two_events_found_by_both(api: TestClient, key: str) -> None:
    a = post_event(api, key, event(1, prefix="shared", sku="S1"))
    b = post_event(api, key, event(1, prefix="shared", sku="S2"))
    for q in (f"event_id={a['event_id']}", f"event_id={b['event_id']}", "sku=S1", "sku=S2"):
        items = api.get(f"/v1/jobs?{q}", headers=auth(key)).json()["items"]
        assert [j["id"] for j in items] == [a["jobs"][0]["id"]]
        assert items[0]["event_ids"] == [a["event_id"], b["event_id"]]


@pytest.mark.parametrize(
    "query",
    [
        "status=bogus",
        "status=",
        "limit=0",
        "limit=501",
        "limit=x",
        "imp_uid=" + "x" * 129,
        "merchant_uid=a%00b",
        "sku=",
    ],
)
def test_bad_filters_are_422(api: TestClient, key: str, query: str) -> None:
    r = api.get(f"/v1/jobs?{query}", headers=auth(key))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!!",
        "%FF%FE",
        _b64(os.urandom(40)),
        _b64(b"junk"),
        _b64(b"1|not-a-date|" + str(uuid.uuid4()).encode()),
        _b64(b"1|2026-11-25T06:00:00+00:00|not-a-uuid"),
        _b64(b"1|2026-11-25T06:00:00|" + str(uuid.uuid4()).encode()),  # naive time
        _b64(b"2|2026-11-25T06:00:00+00:00|" + str(uuid.uuid4()).encode()),
        _b64(b"1|9999-12-31T23:59:59+00:00|" + str(uuid.uuid4()).encode() + b"|x"),
        "A" * 3000,
        "=",
        "\u00e9\u00e9",
    ],
)
def test_garbled_cursor_is_400(api: TestClient, key: str, cursor: str) -> None:
    r = api.get("/v1/jobs", params={"cursor": cursor}, headers=auth(key))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "invalid_cursor"


def test_huge_cursor_is_not_500(api: TestClient, key: str) -> None:
    r = api.get("/v1/jobs", params={"cursor": "A" * 60_000}, headers=auth(key))
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"


def test_extreme_but_valid_cursor_is_empty_page(api: TestClient, key: str) -> None:
    from datetime import UTC, datetime

    post_event(api, key, event(1))
    old = cursors.encode("jobs", datetime(1970, 1, 1, tzinfo=UTC), uuid.uuid4())
    r = api.get("/v1/jobs", params={"cursor": old}, headers=auth(key))
    assert r.status_code == 200
    assert r.json() == {"items": [], "next_cursor": None}


def test_paging_1050_jobs_with_inserts_between_pages(api: TestClient, key: str) -> None:
    original = [j["id"] for j in post_event(api, key, event(1000))["jobs"]]
    original += [j["id"] for j in post_event(api, key, event(50))["jobs"]]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/v1/jobs?limit=100" + (f"&cursor={cursor}" if cursor else "")
        body = api.get(url, headers=auth(key)).json()
        seen += [j["id"] for j in body["items"]]
        pages += 1
        # New jobs arrive while the caller pages: they are newer than the cursor.
        post_event(api, key, event(7))
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 11
    assert len(seen) == len(set(seen)), "a job showed up twice"
    assert set(original) <= set(seen), "a job was skipped"
    assert len(seen) == 1050


def test_paging_with_filter_and_small_limit(api: TestClient, key: str) -> None:
    body = post_event(api, key, event(7, sku="PAGED"))
    post_event(api, key, event(3, sku="OTHER"))
    assert sorted(page_all(api, key, "&sku=PAGED", limit=2)) == sorted(
        j["id"] for j in body["jobs"]
    )


def test_list_needs_jobs_read(api: TestClient, service_env: dict[str, str]) -> None:
    writer = api_key("events:write")
    assert api.get("/v1/jobs", headers=auth(writer)).status_code == 403
    assert api.get("/v1/jobs").status_code == 401


# -- attempts -----------------------------------------------------------------------------------


def test_attempts_in_order_numbered(api: TestClient, key: str, service_env: dict[str, str]) -> None:
    job = post_event(api, key, event(1))["jobs"][0]
    with psycopg.connect(service_env["DATABASE_URL"], autocommit=True) as conn:
        for i, (call, outcome) in enumerate(
            [("token", "ok"), ("cancel", "timeout"), ("lookup", "ok"), ("cancel", "ok")]
        ):
            conn.execute(
                "INSERT INTO attempts (job_id, call, started_at, duration_ms, http_status, code, "
                "message, outcome) VALUES (%s, %s, now() + make_interval(secs => %s), 12, 200, 0, "
                "'m', %s)",
                (job["id"], call, i, outcome),
            )
    r = api.get(f"/v1/jobs/{job['id']}/attempts", headers=auth(key))
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(a["n"], a["call"], a["outcome"]) for a in items] == [
        (1, "token", "ok"),
        (2, "cancel", "timeout"),
        (3, "lookup", "ok"),
        (4, "cancel", "ok"),
    ]
    assert set(items[0]) == {
        "n",
        "call",
        "started_at",
        "duration_ms",
        "http_status",
        "code",
        "message",
        "outcome",
        "trace_id",
    }
    assert items[0]["trace_id"] is None  # untraced


def test_attempts_empty_and_unknown(api: TestClient, key: str) -> None:
    job = post_event(api, key, event(1))["jobs"][0]
    assert api.get(f"/v1/jobs/{job['id']}/attempts", headers=auth(key)).json() == {"items": []}
    r = api.get(f"/v1/jobs/{uuid.uuid4()}/attempts", headers=auth(key))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert api.get("/v1/jobs/not-a-uuid/attempts", headers=auth(key)).status_code == 422


def test_unknown_job_is_404(api: TestClient, key: str) -> None:
    r = api.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key))
    assert r.status_code == 404 and r.json()["code"] == "not_found"


# -- retry --------------------------------------------------------------------------------------


def test_retry_failed_job_requeues_and_publishes(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    db, rurl = service_env["DATABASE_URL"], service_env["REDIS_URL"]
    job = post_event(api, key, event(1))["jobs"][0]
    set_status(
        db,
        job["id"],
        "failed",
        attempts=8,
        finished_at="2026-11-25T07:00:00Z",
        error=Jsonb({"http_status": 400, "code": -1, "message": "no"}),
        uncertain_call="cancel",
    )
    assert dispatch.drain()  # the event's own wake-up has gone out: only the retry's counts
    redis.Redis.from_url(rurl).delete("stockout")
    r = api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(key))
    assert r.status_code == 202, r.text
    got = r.json()
    assert got["status"] == "queued" and got["attempts"] == 0 and got["finished_at"] is None
    assert got["error"] == {"http_status": 400, "code": -1, "message": "no"}
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT uncertain_call, lease_token, next_attempt_at, due_at > now() FROM jobs "
            "WHERE id = %s",
            (job["id"],),
        ).fetchone()
    assert row == ("cancel", None, None, True)
    assert dispatch.drain()
    assert redis.Redis.from_url(rurl).llen("stockout") == 1  # published after the commit
    again = api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(key))
    assert again.status_code == 409 and again.json()["code"] == "not_retryable"


@pytest.mark.parametrize("status", ["queued", "running", "retry_wait", "cancelled", "needs_refund"])
def test_retry_other_status_is_409(
    api: TestClient, key: str, service_env: dict[str, str], status: str
) -> None:
    job = post_event(api, key, event(1))["jobs"][0]
    set_status(service_env["DATABASE_URL"], job["id"], status)
    r = api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(key))
    assert r.status_code == 409
    assert r.json()["code"] == "not_retryable"
    assert api.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()["status"] == status


def test_retry_unknown_404_and_scope(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    assert api.post(f"/v1/jobs/{uuid.uuid4()}/retry", headers=auth(key)).status_code == 404
    reader = api_key("jobs:read")
    job = post_event(api, key, event(1))["jobs"][0]
    set_status(service_env["DATABASE_URL"], job["id"], "failed")
    assert api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(reader)).status_code == 403
    assert api.post(f"/v1/jobs/{job['id']}/retry").status_code == 401
