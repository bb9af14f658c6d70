"""The outbox: what a terminal transition writes, in its own transaction, and nothing else."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from app.kit.db import UnitOfWork
from app.webhooks.outbox import record_terminal
from tests.support.factories import auth
from tests.support.runs import run_now
from tests.support.webhooks import FINISH, add_endpoint, finish_job, hooks_key, messages, post_event

PUBLIC = "https://93.184.215.14/hook"


def by_type(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["event_type"]] = out.get(r["event_type"], 0) + 1
    return out


def test_no_endpoint_no_message(api: TestClient, clean_db: str) -> None:
    key = hooks_key()
    event = post_event(api, key, 2)
    for job in event["jobs"]:
        finish_job(clean_db, job["id"])
    assert messages(clean_db) == []


def test_one_message_per_matching_endpoint_with_the_job_as_the_api_shows_it(
    api: TestClient, clean_db: str
) -> None:
    key = hooks_key()
    everything = add_endpoint(api, key, PUBLIC)
    only_failed = add_endpoint(api, key, PUBLIC, event_types=["job.failed"])
    only_events = add_endpoint(api, key, PUBLIC, event_types=["event.completed"])
    gone = add_endpoint(api, key, PUBLIC)
    assert api.delete(f"/v1/webhook-endpoints/{gone['id']}", headers=auth(key)).status_code == 204
    event = post_event(api, key, 2)
    first, second = event["jobs"]

    woken = finish_job(clean_db, first["id"], "cancelled")
    rows = messages(clean_db)
    assert [(r["endpoint_id"], r["event_type"]) for r in rows] == [
        (uuid.UUID(everything["id"]), "job.cancelled")
    ]
    msg = rows[0]
    assert msg["id"].startswith("msg_") and msg["status"] == "pending" and msg["attempts"] == 0
    assert msg["job_id"] == uuid.UUID(first["id"]) and msg["event_id"] is None
    job = api.get(f"/v1/jobs/{first['id']}", headers=auth(key)).json()
    assert msg["payload"]["type"] == "job.cancelled"
    assert msg["payload"]["data"] == job
    assert woken == [uuid.UUID(everything["id"])]

    finish_job(clean_db, second["id"], "failed")
    rows = messages(clean_db)
    assert by_type(messages(clean_db, everything["id"])) == {
        "job.cancelled": 1,
        "job.failed": 1,
        "event.completed": 1,
    }
    assert by_type(messages(clean_db, only_failed["id"])) == {"job.failed": 1}
    assert by_type(messages(clean_db, only_events["id"])) == {"event.completed": 1}
    assert messages(clean_db, gone["id"]) == []
    completed = next(r for r in rows if r["event_type"] == "event.completed")
    assert completed["event_id"] == event["event_id"] and completed["job_id"] is None
    shown = api.get(f"/v1/stockout-events/{event['event_id']}", headers=auth(key)).json()
    assert completed["payload"]["data"] == shown
    assert [j["status"] for j in completed["payload"]["data"]["jobs"]] == ["cancelled", "failed"]

    # An endpoint created after the transitions gets none of them.
    late = add_endpoint(api, key, PUBLIC)
    assert messages(clean_db, late["id"]) == []


def test_rolled_back_transition_leaves_no_message(api: TestClient, clean_db: str) -> None:
    key = hooks_key()
    add_endpoint(api, key, PUBLIC)
    job = post_event(api, key, 1)["jobs"][0]
    with psycopg.connect(clean_db) as conn:
        conn.execute(FINISH, {"status": "cancelled", "id": job["id"]})
        record_terminal(UnitOfWork(conn), uuid.UUID(job["id"]))
        conn.rollback()
    assert messages(clean_db) == []


def test_event_completed_once_when_its_last_two_jobs_finish_concurrently(
    api: TestClient, clean_db: str
) -> None:
    key = hooks_key()
    endpoint = add_endpoint(api, key, PUBLIC, event_types=["event.completed"])
    for _ in range(8):
        jobs = post_event(api, key, 2)["jobs"]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def finish(job_id: str) -> None:
            try:
                with psycopg.connect(clean_db) as conn:
                    conn.execute(FINISH, {"status": "cancelled", "id": job_id})
                    barrier.wait(5)  # both jobs are terminal in their own open transaction
                    record_terminal(UnitOfWork(conn), uuid.UUID(job_id))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=finish, args=(j["id"],)) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert errors == []
    assert by_type(messages(clean_db, endpoint["id"])) == {"event.completed": 8}


def test_second_transaction_waits_and_sends_when_the_first_commits(
    api: TestClient, clean_db: str
) -> None:
    """Deterministic interleaving: the first holds the event lock while the second finishes."""
    key = hooks_key()
    endpoint = add_endpoint(api, key, PUBLIC, event_types=["event.completed"])
    first, second = post_event(api, key, 2)["jobs"]
    t1 = psycopg.connect(clean_db)
    t1.execute(FINISH, {"status": "cancelled", "id": first["id"]})
    record_terminal(
        UnitOfWork(t1), uuid.UUID(first["id"])
    )  # sees the second job running: not complete
    done = threading.Event()

    def finish_second() -> None:
        finish_job(clean_db, second["id"], "needs_refund")
        done.set()

    worker = threading.Thread(target=finish_second)
    worker.start()
    assert not done.wait(0.5)  # blocked on the event row
    t1.commit()
    t1.close()
    worker.join(10)
    assert done.is_set()
    rows = messages(clean_db, endpoint["id"])
    assert len(rows) == 1
    assert [j["status"] for j in rows[0]["payload"]["data"]["jobs"]] == [
        "cancelled",
        "needs_refund",
    ]


def test_an_event_naming_only_finished_jobs_is_complete_at_ingest(
    api: TestClient, clean_db: str
) -> None:
    key = hooks_key()
    endpoint = add_endpoint(api, key, PUBLIC, event_types=["event.completed"])
    first = post_event(api, key, 2, prefix="imps_again")
    for job in first["jobs"]:
        finish_job(clean_db, job["id"])
    assert len(messages(clean_db, endpoint["id"])) == 1
    second = post_event(api, key, 2, prefix="imps_again")  # the same payments, a new event
    rows = messages(clean_db, endpoint["id"])
    assert [r["event_id"] for r in rows] == [first["event_id"], second["event_id"]]
    assert [j["status"] for j in rows[1]["payload"]["data"]["jobs"]] == ["cancelled"] * 2


def test_a_run_woken_by_a_notification_writes_its_message(
    api: TestClient, clean_db: str, sandbox: Any, monkeypatch: Any
) -> None:
    from tests.support.settings import reset_caches

    monkeypatch.setenv("IAMPORT_BASE_URL", sandbox.base_url)
    reset_caches()
    key = hooks_key()
    endpoint = add_endpoint(api, key, PUBLIC)
    sandbox.create_payment(imp_uid="imps_wh_paid", status="paid")
    body = {"event_id": "wh-notify", "sku": "S", "payments": [{"imp_uid": "imps_wh_paid"}]}
    job = api.post("/v1/stockout-events", json=body, headers=auth(key)).json()["jobs"][0]
    r = api.post(
        "/v1/iamport/notifications?token=hook-secret-token",
        json={"imp_uid": "imps_wh_paid", "status": "paid"},
    )
    assert r.status_code == 200
    assert messages(clean_db, endpoint["id"]) == []  # the notification only wakes the job
    assert run_now(job["id"]) == "needs_refund"
    rows = messages(clean_db, endpoint["id"])
    assert [r["event_type"] for r in rows] == ["job.needs_refund", "event.completed"]
    assert rows[0]["payload"]["data"] == api.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()
