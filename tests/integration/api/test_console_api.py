"""The API the console reads: /v1/me, operator actions, recent activity, the events list,
and the console's own files and headers. Real Postgres and Redis."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from app.console.routes import CSP
from app.kit.db import unit_of_work
from app.operators.audit import record_action
from app.operators.keys import Caller
from tests.support.factories import api_key, auth, event


def post_event(api: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def sql(db: str, statement: str, **params: Any) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(statement, params)


def test_me_names_the_key_and_its_scopes(api: TestClient) -> None:
    reader = api_key("jobs:read")
    producer = api_key("events:write")
    r = api.get("/v1/me", headers=auth(reader))
    assert r.status_code == 200
    assert r.json()["scopes"] == ["jobs:read"]
    assert r.json()["name"].startswith("test-")
    assert api.get("/v1/me", headers=auth(producer)).json()["scopes"] == ["events:write"]
    assert api.get("/v1/me").status_code == 401
    assert "key" not in r.json() and "secret_hash" not in r.json()


def test_retry_is_recorded_with_who_and_when(api: TestClient, service_env: dict[str, str]) -> None:
    db = service_env["DATABASE_URL"]
    writer = api_key("jobs:read", "jobs:write")
    job = post_event(api, api_key("events:write"), event(1))["jobs"][0]
    sql(
        db, "UPDATE jobs SET status = 'failed', finished_at = now() WHERE id = %(id)s", id=job["id"]
    )
    me = api.get("/v1/me", headers=auth(writer)).json()

    assert api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(writer)).status_code == 202
    # The job is queued now: a second retry is refused and must leave no record.
    assert api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(writer)).status_code == 409

    r = api.get(f"/v1/jobs/{job['id']}/actions", headers=auth(api_key("jobs:read")))
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 1
    assert items[0]["action"] == "retry"
    assert items[0]["key_id"] == me["id"]
    assert items[0]["key_name"] == me["name"]
    assert items[0]["job_id"] == job["id"]
    assert items[0]["detail"] == {"from": "failed"}


def test_an_action_rolled_back_leaves_no_record(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    job = post_event(api, key, event(1))["jobs"][0]
    me = api.get("/v1/me", headers=auth(key)).json()
    caller = Caller(key_id=uuid.UUID(me["id"]), name=me["name"], scopes=frozenset())
    with pytest.raises(RuntimeError), unit_of_work() as uow:
        record_action(uow.conn, caller, "refund", job_id=uuid.UUID(job["id"]))
        raise RuntimeError("the action failed")
    with unit_of_work() as uow:
        record_action(uow.conn, caller, "replay", endpoint_id="ep_1", detail={"since": "x"})
        record_action(uow.conn, caller, "refund", job_id=uuid.UUID(job["id"]))
    items = api.get(f"/v1/jobs/{job['id']}/actions", headers=auth(key)).json()["items"]
    assert [i["action"] for i in items] == ["refund"]


def test_actions_of_an_unknown_job_are_404(api: TestClient, key: str) -> None:
    r = api.get(f"/v1/jobs/{uuid.uuid4()}/actions", headers=auth(key))
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


def test_activity_counts_finishes_per_minute_and_upstream_calls(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    db = service_env["DATABASE_URL"]
    jobs = post_event(api, key, event(3))["jobs"]
    sql(
        db,
        "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = ANY(%(ids)s::uuid[])",
        ids=[j["id"] for j in jobs[:2]],
    )
    sql(
        db,
        "UPDATE jobs SET status = 'failed', finished_at = now() - interval '2 hours' "
        "WHERE id = %(id)s",
        id=jobs[2]["id"],
    )
    for ms, outcome in [(10, "ok"), (30, "ok"), (1000, "timeout")]:
        sql(
            db,
            "INSERT INTO attempts (job_id, call, duration_ms, outcome) "
            "VALUES (%(j)s, 'cancel', %(ms)s, %(o)s)",
            j=jobs[0]["id"],
            ms=ms,
            o=outcome,
        )
    r = api.get("/v1/stats/activity?minutes=5", headers=auth(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["window_minutes"] == 5
    assert len(body["finished_per_minute"]) == 5
    assert body["finished_per_minute"][-1]["counts"] == {"cancelled": 2}  # not the 2-hour-old one
    calls = {(c["call"], c["outcome"]): c["count"] for c in body["upstream_calls"]}
    assert calls == {("cancel", "ok"): 2, ("cancel", "timeout"): 1}
    [latency] = body["upstream_latency"]
    assert latency["count"] == 3 and latency["p50_ms"] == 30.0 and latency["max_ms"] == 1000.0
    assert body["upstream_sample_size"] == 3 and body["upstream_sample_capped"] is False
    assert api.get("/v1/stats/activity?minutes=0", headers=auth(key)).status_code == 422


def test_events_list_newest_first_with_progress_and_cursor(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    db = service_env["DATABASE_URL"]
    first = post_event(api, key, event(3))
    second = post_event(api, key, event(1))
    third = post_event(api, key, event(2))
    sql(
        db,
        "UPDATE jobs SET status = 'needs_refund', finished_at = now() WHERE id = %(id)s",
        id=first["jobs"][0]["id"],
    )
    r = api.get("/v1/stockout-events?limit=2", headers=auth(key))
    assert r.status_code == 200, r.text
    page = r.json()
    assert [e["event_id"] for e in page["items"]] == [third["event_id"], second["event_id"]]
    assert page["items"][0]["jobs_total"] == 2 and page["items"][0]["jobs_terminal"] == 0
    r = api.get(f"/v1/stockout-events?limit=2&cursor={page['next_cursor']}", headers=auth(key))
    rest = r.json()
    assert rest["next_cursor"] is None
    [old] = rest["items"]
    assert old["event_id"] == first["event_id"]
    assert (old["jobs_total"], old["jobs_terminal"]) == (3, 1)
    assert old["counts"] == {"queued": 2, "needs_refund": 1}
    bad = api.get("/v1/stockout-events?cursor=nonsense", headers=auth(key))
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"


@pytest.mark.parametrize("path", ["/console", "/console/", "/console/app.js", "/console/style.css"])
def test_console_files_carry_a_strict_policy(api: TestClient, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "frame-ancestors 'none'" in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    expected = {"app.js": "text/javascript", "style.css": "text/css"}.get(path.rsplit("/", 1)[-1])
    assert r.headers["content-type"].startswith(expected or "text/html")


def test_the_console_serves_only_its_own_files(api: TestClient) -> None:
    for path in ["/console/nope.js", "/console/../app/main.py", "/console/%2e%2e/routes.py"]:
        r = api.get(path)
        assert r.status_code == 404, path
    assert api.get("/console/routes.py").status_code == 404


def test_a_cross_site_form_post_cannot_act(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    """No ambient credentials: a form another site posts carries no key and is refused."""
    db = service_env["DATABASE_URL"]
    job = post_event(api, key, event(1))["jobs"][0]
    sql(db, "UPDATE jobs SET status = 'failed' WHERE id = %(id)s", id=job["id"])
    api.cookies.set("session", "anything")  # even with a cookie around, nothing is ambient
    r = api.post(
        f"/v1/jobs/{job['id']}/retry",
        data={"confirm": "yes"},
        headers={"Origin": "https://evil.example", "Referer": "https://evil.example/x"},
    )
    assert r.status_code == 401
    assert api.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()["status"] == "failed"


def test_upstream_figures_cover_the_newest_calls_when_there_are_many(
    api: TestClient, key: str, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.operators import activity

    monkeypatch.setattr(activity, "SAMPLE_SIZE", 2)
    db = service_env["DATABASE_URL"]
    job = post_event(api, key, event(1))["jobs"][0]
    for secs, outcome in [(30, "timeout"), (20, "ok"), (10, "ok")]:
        sql(
            db,
            "INSERT INTO attempts (job_id, call, started_at, duration_ms, outcome) "
            "VALUES (%(j)s, 'cancel', now() - make_interval(secs => %(s)s), 5, %(o)s)",
            j=job["id"],
            s=secs,
            o=outcome,
        )
    body = api.get("/v1/stats/activity", headers=auth(key)).json()
    assert body["upstream_sample_size"] == 2 and body["upstream_sample_capped"] is True
    assert body["upstream_calls"] == [{"call": "cancel", "outcome": "ok", "count": 2}]
