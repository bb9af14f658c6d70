"""Webhooks end to end: a real worker process cancels through the sandbox, and its outbox
messages reach a real receiver that verifies every one with `standardwebhooks`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from devtools.sandbox.control import SandboxControl
from tests.support.factories import auth
from tests.support.processes import start_worker, stop, wait_until
from tests.support.settings import reset_caches
from tests.support.webhook_receiver import Receiver, running_receiver
from tests.support.webhooks import add_endpoint, hooks_key

pytestmark = pytest.mark.slow
_n = itertools.count()
HOOKS_ENV = {
    "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "WEBHOOK_TIMEOUT_SECONDS": "0.5",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.05",
    "WEBHOOK_RETRY_MAX_SECONDS": "0.3",
}


@pytest.fixture
def hooks_env(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in HOOKS_ENV.items():
        monkeypatch.setenv(k, v)
    reset_caches()
    return stack_env | HOOKS_ENV


@pytest.fixture
def client(hooks_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def hooks_worker(hooks_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    proc = start_worker(hooks_env, tmp_path / "worker.log")
    yield proc
    stop(proc)


def flaky(_: Receiver, webhook_id: str, n: int) -> tuple[int, float, dict[str, str]]:
    """Every third message fails its first attempt with a 500, another third times out once."""
    kind = int(webhook_id[-1], 16) % 3
    if n == 1 and kind == 0:
        return 500, 0.0, {}
    if n == 1 and kind == 1:
        return 200, 1.0, {}
    return 204, 0.0, {}


def test_worker_sends_signed_messages_for_every_transition(
    client: TestClient,
    sandbox: SandboxControl,
    hooks_env: dict[str, str],
    hooks_worker: object,
) -> None:
    batch = next(_n)
    ready = [f"imps_wh{batch}_r{i}" for i in range(8)]
    paid = [f"imps_wh{batch}_p{i}" for i in range(2)]
    sandbox.create_payments(
        [{"imp_uid": u, "status": "ready", "amount": 1000} for u in ready]
        + [{"imp_uid": u, "status": "paid", "amount": 1000} for u in paid]
    )
    key = hooks_key()
    with running_receiver(flaky) as receiver, running_receiver() as only_events:
        everything = add_endpoint(client, key, receiver.url)
        receiver.secrets.append(everything["secret"])
        events_only = add_endpoint(client, key, only_events.url, event_types=["event.completed"])
        only_events.secrets.append(events_only["secret"])

        body: dict[str, Any] = {
            "event_id": f"wh-e2e-{batch}",
            "sku": "SKU-1",
            "payments": [{"imp_uid": u} for u in ready + paid],
        }
        r = client.post("/v1/stockout-events", json=body, headers=auth(key))
        assert r.status_code == 202, r.text
        wait_until(lambda: len(receiver.accepted()) == 11, 60, "11 messages at the receiver")
        wait_until(lambda: len(only_events.accepted()) == 1, 30, "event.completed")

        assert receiver.unverified == [] and only_events.unverified == []
        got = receiver.accepted()
        types = sorted(m.body["type"] for m in got.values())
        assert types == ["event.completed"] + ["job.cancelled"] * 8 + ["job.needs_refund"] * 2
        by_imp = {
            m.body["data"]["imp_uid"]: m.body["data"]["status"]
            for m in got.values()
            if m.body["type"].startswith("job.")
        }
        assert by_imp == {
            **dict.fromkeys(ready, "cancelled"),
            **dict.fromkeys(paid, "needs_refund"),
        }
        [completed] = [m for m in got.values() if m.body["type"] == "event.completed"]
        assert completed.body["data"]["event_id"] == body["event_id"]
        assert all(
            j["status"] in ("cancelled", "needs_refund") for j in completed.body["data"]["jobs"]
        )
        assert [m.body["type"] for m in only_events.accepted().values()] == ["event.completed"]
        assert max(receiver.seen.values()) >= 2  # the flaky answers were retried

        deliveries = client.get(
            f"/v1/webhook-endpoints/{everything['id']}/deliveries", headers=auth(key)
        ).json()["items"]
        assert {d["status"] for d in deliveries} == {"delivered"}
        assert sorted(d["message_id"] for d in deliveries) == sorted(got)


def test_lost_and_duplicated_wakeups_change_nothing(
    client: TestClient, hooks_env: dict[str, str], hooks_worker: object
) -> None:
    """Messages written without any wake-up are found by the sweep; ten wake-ups for one
    endpoint still send each message once."""
    from app.kit.dispatch import send_deliveries
    from tests.support.webhooks import finish_job

    key = hooks_key()
    db = hooks_env["DATABASE_URL"]
    with psycopg.connect(db) as conn:  # jobs no worker will run (never due, never published)
        jobs = conn.execute(
            "INSERT INTO jobs (imp_uid) SELECT 'imps_wake_' || i FROM generate_series(1, 6) i "
            "RETURNING id"
        ).fetchall()
    with running_receiver() as receiver:
        endpoint = add_endpoint(client, key, receiver.url, event_types=["job.failed"])
        receiver.secrets.append(endpoint["secret"])
        for (job_id,) in jobs[:3]:
            finish_job(db, job_id, "failed")  # committed; no wake-up published
        wait_until(lambda: len(receiver.accepted()) == 3, 30, "the sweep to send them")
        for (job_id,) in jobs[3:]:
            finish_job(db, job_id, "failed")
        assert send_deliveries([endpoint["id"]] * 10) == 10
        wait_until(lambda: len(receiver.accepted()) == 6, 30, "the rest")
        assert sorted(receiver.seen.values()) == [1] * 6
        assert receiver.unverified == []
