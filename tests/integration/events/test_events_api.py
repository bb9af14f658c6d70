"""POST/GET /v1/stockout-events against real Postgres and Redis."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from app.kit import dispatch
from tests.support.factories import api_key, auth, event


def count(db: str, table: str) -> int:
    with psycopg.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def queue_length(redis_url: str) -> int:
    assert dispatch.drain(), "the publisher thread did not empty its backlog"
    return int(redis.Redis.from_url(redis_url).llen("stockout"))


def test_new_event_is_committed_and_published(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    body = event(3)
    r = api.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    got = r.json()
    assert got["event_id"] == body["event_id"]
    assert [j["imp_uid"] for j in got["jobs"]] == [p["imp_uid"] for p in body["payments"]]
    assert all(
        j["status"] == "queued" and j["event_ids"] == [body["event_id"]] for j in got["jobs"]
    )
    assert all(j["cancellation"] is None and j["attempts"] == 0 for j in got["jobs"])
    assert count(service_env["DATABASE_URL"], "jobs") == 3
    # Published after the commit, as one wake-up message (batch of ids).
    assert queue_length(service_env["REDIS_URL"]) == 1


def test_replay_answers_200_with_identical_jobs(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    body = event(2)
    first = api.post("/v1/stockout-events", json=body, headers=auth(key))
    again = api.post("/v1/stockout-events", json=body, headers=auth(key))
    assert (first.status_code, again.status_code) == (202, 200)
    assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    assert count(service_env["DATABASE_URL"], "jobs") == 2
    assert queue_length(service_env["REDIS_URL"]) == 1  # no new work


def test_the_first_answer_is_what_a_read_shows(api: TestClient, key: str) -> None:
    """The 202 is built from what the insert returned; a replay and a GET read the rows back.
    All three say the same, to the byte (a time zone given by the caller included)."""
    body = {**event(3), "occurred_at": "2026-11-25T18:30:00.123456+09:00", "on_paid": "refund"}
    body["payments"][1]["merchant_uid"] = None
    body["payments"][2]["pay_method"] = "vbank"
    first = api.post("/v1/stockout-events", json=body, headers=auth(key))
    again = api.post("/v1/stockout-events", json=body, headers=auth(key))
    read = api.get(f"/v1/stockout-events/{body['event_id']}", headers=auth(key))
    assert (first.status_code, again.status_code, read.status_code) == (202, 200, 200)
    assert first.json() == again.json() == read.json()
    assert first.json()["occurred_at"] == read.json()["occurred_at"]


def test_replay_ignores_payment_order(api: TestClient, key: str) -> None:
    body = event(3)
    assert api.post("/v1/stockout-events", json=body, headers=auth(key)).status_code == 202
    body["payments"].reverse()
    assert api.post("/v1/stockout-events", json=body, headers=auth(key)).status_code == 200


@pytest.mark.parametrize("change", [{"sku": "OTHER"}, {"reason": "damaged"}, {"occurred_at": None}])
def test_same_event_id_other_content_is_409(
    api: TestClient, key: str, change: dict[str, Any]
) -> None:
    body = event(1)
    assert api.post("/v1/stockout-events", json=body, headers=auth(key)).status_code == 202
    r = api.post("/v1/stockout-events", json={**body, **change}, headers=auth(key))
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "event_conflict"


def test_other_payments_under_same_event_id_is_409(api: TestClient, key: str) -> None:
    body = event(1)
    api.post("/v1/stockout-events", json=body, headers=auth(key))
    other = {**body, "payments": [{"imp_uid": "imps_other"}]}
    assert (
        api.post("/v1/stockout-events", json=other, headers=auth(key)).json()["code"]
        == "event_conflict"
    )


def test_one_job_per_imp_uid_across_events(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    a = event(2, prefix="shared")
    b = event(3, prefix="shared")  # shared_0, shared_1 overlap with a
    ra = api.post("/v1/stockout-events", json=a, headers=auth(key)).json()
    rb = api.post("/v1/stockout-events", json=b, headers=auth(key)).json()
    assert [j["id"] for j in rb["jobs"][:2]] == [j["id"] for j in ra["jobs"]]
    assert count(service_env["DATABASE_URL"], "jobs") == 3
    job = api.get(f"/v1/jobs/{ra['jobs'][0]['id']}", headers=auth(key)).json()
    assert job["event_ids"] == [a["event_id"], b["event_id"]]
    assert job["merchant_uid"] == a["payments"][0]["merchant_uid"]  # the first event's


def test_duplicate_imp_uid_in_one_event_counts_once(api: TestClient, key: str) -> None:
    body = event(1)
    body["payments"].append(dict(body["payments"][0]))
    r = api.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202 and len(r.json()["jobs"]) == 1


def test_concurrent_duplicates_give_one_202(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    body = event(20)
    barrier = threading.Barrier(12)
    codes: list[int] = []

    def post() -> None:
        barrier.wait()
        codes.append(api.post("/v1/stockout-events", json=body, headers=auth(key)).status_code)

    threads = [threading.Thread(target=post) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 11 + [202]
    assert count(service_env["DATABASE_URL"], "jobs") == 20
    assert count(service_env["DATABASE_URL"], "event_jobs") == 20


def test_concurrent_overlapping_events_share_jobs(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    """Events naming the same imp_uids in different orders neither deadlock nor duplicate."""
    uids = [f"imps_overlap_{k}" for k in range(30)]
    bodies: list[dict[str, Any]] = []
    for n in range(8):
        order = uids[n:] + uids[:n]
        bodies.append(
            {"event_id": f"overlap-{n}", "sku": "S", "payments": [{"imp_uid": u} for u in order]}
        )
    barrier = threading.Barrier(len(bodies))
    codes: list[int] = []
    answers: dict[str, list[str]] = {}

    def post(b: dict[str, Any]) -> None:
        barrier.wait()
        r = api.post("/v1/stockout-events", json=b, headers=auth(key))
        codes.append(r.status_code)
        answers[b["event_id"]] = [j["imp_uid"] for j in r.json()["jobs"]]

    threads = [threading.Thread(target=post, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [202] * 8
    assert count(service_env["DATABASE_URL"], "jobs") == 30
    # Every event links every payment to its one job, in the event's own order, whichever
    # event made the job; and its answer lists them so.
    with psycopg.connect(service_env["DATABASE_URL"]) as conn:
        for b in bodies:
            linked = conn.execute(
                "SELECT j.imp_uid FROM event_jobs l JOIN jobs j ON j.id = l.job_id "
                "WHERE l.event_id = %s ORDER BY l.position",
                (b["event_id"],),
            ).fetchall()
            wanted = [p["imp_uid"] for p in b["payments"]]
            assert [r[0] for r in linked] == wanted
            assert answers[b["event_id"]] == wanted


def test_redis_down_at_publish_still_202(
    api: TestClient, key: str, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.kit import dispatch
    from tests.support.settings import reset_caches

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    reset_caches()
    dispatch.publisher.cache_clear()
    try:
        r = api.post("/v1/stockout-events", json=event(2), headers=auth(key))
        assert r.status_code == 202
        assert count(service_env["DATABASE_URL"], "jobs") == 2
        with psycopg.connect(service_env["DATABASE_URL"]) as conn:
            due = conn.execute(
                "SELECT count(*) FROM jobs WHERE status='queued' AND due_at IS NOT NULL"
            ).fetchone()
        assert due is not None and due[0] == 2  # the sweep will find them
    finally:
        dispatch.publisher.cache_clear()


def test_get_event_and_unknown(api: TestClient, key: str) -> None:
    body = event(2)
    api.post("/v1/stockout-events", json=body, headers=auth(key))
    r = api.get(f"/v1/stockout-events/{body['event_id']}", headers=auth(key))
    assert r.status_code == 200 and len(r.json()["jobs"]) == 2
    missing = api.get("/v1/stockout-events/nope", headers=auth(key))
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert (
        api.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=auth(key)).status_code
        == 404
    )


def test_auth_and_scopes(api: TestClient, service_env: dict[str, str]) -> None:
    body = event(1)
    assert api.post("/v1/stockout-events", json=body).status_code == 401
    assert (
        api.post("/v1/stockout-events", json=body, headers=auth("sk_nope_nope")).status_code == 401
    )
    assert (
        api.post(
            "/v1/stockout-events", json=body, headers={"Authorization": "Basic abc"}
        ).status_code
        == 401
    )
    reader = api_key("jobs:read")
    r = api.post("/v1/stockout-events", json=body, headers=auth(reader))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    writer = api_key("events:write")
    assert api.post("/v1/stockout-events", json=body, headers=auth(writer)).status_code == 202
    assert (
        api.get(f"/v1/stockout-events/{body['event_id']}", headers=auth(writer)).status_code == 403
    )
    assert (
        api.get(f"/v1/stockout-events/{body['event_id']}", headers=auth(reader)).status_code == 200
    )
