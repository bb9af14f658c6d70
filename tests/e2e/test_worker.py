"""The worker end to end: a real Celery worker process, Redis, Postgres and the sandbox.

Each fault on its own and all mixed; after each, every job is terminal, matches the
sandbox's truth, and the sandbox saw no second cancel and no two cancels in flight.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from devtools.sandbox.control import SandboxControl
from tests.support.checker import Report, check
from tests.support.factories import auth
from tests.support.processes import start_worker, stop, wait_until

pytestmark = pytest.mark.slow
_n = itertools.count()


@pytest.fixture
def client(stack_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def make_payments(sandbox: SandboxControl, n: int, status: str = "ready") -> list[str]:
    batch = next(_n)
    uids = [f"imps_e2e{batch}_{i}" for i in range(n)]
    sandbox.create_payments([{"imp_uid": u, "status": status, "amount": 1000} for u in uids])
    return uids


def post(client: TestClient, key: str, uids: list[str]) -> dict[str, Any]:
    body = {
        "event_id": f"e2e-{next(_n)}",
        "sku": "SKU-1",
        "payments": [{"imp_uid": u} for u in uids],
    }
    r = client.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def waiting(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE status IN ('queued','running','retry_wait')"
        ).fetchone()
    assert row is not None
    return int(row[0])


def drain(db: str, timeout: float = 60) -> None:
    wait_until(lambda: waiting(db) == 0, timeout, "every job to reach a terminal status")


def assert_clean(report: Report) -> None:
    assert report.non_terminal == 0
    assert report.wrong_outcome == []
    assert report.applied_max <= 1
    assert report.cancel_after_applied == 0
    assert report.overlapping_cancels == 0


def test_happy_path_one_cancel_per_job(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], worker: object
) -> None:
    uids = make_payments(sandbox, 30)
    event = post(client, key, uids)
    db = stack_env["DATABASE_URL"]
    drain(db)
    report = check(db, sandbox)
    assert_clean(report)
    assert report.by_status == {"cancelled": 30}
    stats = sandbox.stats()
    assert stats["calls"].get("cancel") == 30 and stats["calls"].get("lookup", 0) == 0
    assert stats["calls"].get("token") == 1
    job = client.get(f"/v1/jobs/{event['jobs'][0]['id']}", headers=auth(key)).json()
    assert (
        job["status"] == "cancelled"
        and job["attempts"] == 1
        and job["payment_status"] == "cancelled"
    )
    c = job["cancellation"]
    assert (
        c["cancelled_by"] == "service" and c["pg_tid"] and c["amount"] == 1000 and c["cancelled_at"]
    )
    assert job["finished_at"] and job["error"] is None


def test_each_payment_state(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], worker: object
) -> None:
    paid = make_payments(sandbox, 3, "paid")
    done = make_payments(sandbox, 3, "cancelled")
    failed = make_payments(sandbox, 3, "failed")
    post(client, key, [*paid, *done, *failed, "imps_nobody_knows"])
    db = stack_env["DATABASE_URL"]
    drain(db)
    assert_clean(check(db, sandbox))
    with psycopg.connect(db) as conn:
        rows: dict[str, str] = dict(
            conn.execute(
                "SELECT imp_uid, status || ':' || coalesce(cancellation->>'cancelled_by', '') FROM jobs"
            ).fetchall()
        )
    assert all(rows[u] == "needs_refund:" for u in paid)
    assert all(rows[u] == "cancelled:upstream" for u in done)
    assert all(rows[u] == "failed:" for u in failed)
    assert rows["imps_nobody_knows"] == "failed:"


FAULTS: dict[str, dict[str, Any]] = {
    "5xx": {"error_rate": 0.4},
    "timeout_after_apply": {"timeout_after_rate": 0.4, "hang_seconds": 2.5, "calls": ["cancel"]},
    "timeout_before_apply": {"timeout_before_rate": 0.4, "hang_seconds": 2.5, "calls": ["cancel"]},
    "429": {"rate_429": 0.4, "retry_after": 0.3},
    "latency": {"latency_ms": 300, "latency_jitter_ms": 300},
    "mixed": {
        "error_rate": 0.15,
        "timeout_after_rate": 0.15,
        "timeout_before_rate": 0.1,
        "rate_429": 0.15,
        "retry_after": 0.3,
        "hang_seconds": 2.5,
        "latency_ms": 20,
    },
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults(
    fault: str,
    client: TestClient,
    key: str,
    sandbox: SandboxControl,
    stack_env: dict[str, str],
    worker: object,
) -> None:
    sandbox.set_faults(seed=11, **FAULTS[fault])
    uids = make_payments(sandbox, 40)
    post(client, key, uids[:20])
    post(client, key, uids[10:])  # overlapping events share jobs
    db = stack_env["DATABASE_URL"]
    drain(db, timeout=90)
    report = check(db, sandbox)
    assert_clean(report)
    assert report.by_status == {"cancelled": 40}
    stats = sandbox.stats()
    assert stats["cancels_applied_max_per_imp_uid"] == 1
    if fault == "5xx":
        # A job that got there through a 5xx still shows the last upstream error.
        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE (error->>'http_status')::int >= 500"
            ).fetchone()
        assert row is not None and row[0] > 0


def test_token_expiry_mid_run(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], worker: object
) -> None:
    db = stack_env["DATABASE_URL"]
    post(client, key, make_payments(sandbox, 10))
    drain(db)
    sandbox.expire_tokens()
    post(client, key, make_payments(sandbox, 10))
    drain(db)
    assert_clean(check(db, sandbox))
    calls = sandbox.calls()
    assert sum(1 for c in calls if c["call"] == "token" and c["status_code"] == 200) == 2
    assert any(c["status_code"] == 401 for c in calls)


def test_attempts_run_out(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], tmp_path: Path
) -> None:
    env = stack_env | {"CANCEL_MAX_ATTEMPTS": "3"}
    proc = start_worker(env, tmp_path / "w.log")
    try:
        sandbox.set_faults(error_rate=1.0, calls=["cancel"], seed=3)
        event = post(client, key, make_payments(sandbox, 3))
        db = stack_env["DATABASE_URL"]
        drain(db, timeout=60)
        assert_clean(check(db, sandbox, max_attempts=3))
        job = client.get(f"/v1/jobs/{event['jobs'][0]['id']}", headers=auth(key)).json()
        assert job["status"] == "failed" and job["attempts"] == 3
        assert job["error"]["http_status"] >= 500 and "gave up after 3" in job["error"]["message"]
        attempts = client.get(f"/v1/jobs/{job['id']}/attempts", headers=auth(key))
        if attempts.status_code == 200:
            calls = [a["call"] for a in attempts.json()["items"]]
            assert calls.count("cancel") == 3 and calls[-1] == "lookup"
    finally:
        stop(proc)


def test_worker_killed_mid_call(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], tmp_path: Path
) -> None:
    db = stack_env["DATABASE_URL"]
    sandbox.set_faults(latency_ms=600, calls=["cancel"], seed=5)
    first = start_worker(stack_env, tmp_path / "w1.log", beat=False)
    post(client, key, make_payments(sandbox, 16))
    wait_until(
        lambda: any(c["call"] == "cancel" for c in sandbox.calls()), 30, "a cancel call in flight"
    )
    stop(first, signal.SIGKILL)
    second = start_worker(stack_env, tmp_path / "w2.log")
    try:
        drain(db, timeout=90)
    finally:
        stop(second)
    report = check(db, sandbox)
    assert_clean(report)
    assert report.by_status == {"cancelled": 16}


def test_redis_killed_and_restarted(
    client: TestClient,
    key: str,
    sandbox: SandboxControl,
    stack_env: dict[str, str],
    redis_server: Any,
    worker: object,
) -> None:
    db = stack_env["DATABASE_URL"]
    redis_server.stop()
    try:
        post(client, key, make_payments(sandbox, 10))  # 202 while Redis is down
    finally:
        redis_server.start()
    post(client, key, make_payments(sandbox, 10))
    drain(db, timeout=90)
    report = check(db, sandbox)
    assert_clean(report)
    assert report.by_status == {"cancelled": 20}


def test_same_task_delivered_twice_at_once(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], worker: object
) -> None:
    from app.kit.dispatch import send_now

    sandbox.set_faults(latency_ms=200, seed=1)
    event = post(client, key, make_payments(sandbox, 12))
    ids = [j["id"] for j in event["jobs"]]
    for _ in range(3):
        send_now(ids)
    drain(stack_env["DATABASE_URL"])
    report = check(stack_env["DATABASE_URL"], sandbox)
    assert_clean(report)
    assert sandbox.stats()["calls"]["cancel"] == 12


def test_beat_alone_drives_jobs_whose_publish_was_lost(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """`celery -A worker beat` as its own process, and a job never published at all."""
    from devtools.launch import ROOT, beat_command

    db = stack_env["DATABASE_URL"]
    uids = make_payments(sandbox, 1)
    with psycopg.connect(db, autocommit=True) as conn:  # as if the API died right after its commit
        conn.execute("INSERT INTO jobs (imp_uid, due_at) VALUES (%s, now())", (uids[0],))
    beat = subprocess.Popen(
        beat_command(tmp_path / "beat", loglevel="WARNING"),
        cwd=ROOT,
        env=stack_env,
        stdout=(tmp_path / "beat.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc = start_worker(stack_env, tmp_path / "w.log", beat=False)
    try:
        drain(db, timeout=60)
    finally:
        stop(proc)
        stop(beat)
    assert check(db, sandbox).by_status == {"cancelled": 1}
