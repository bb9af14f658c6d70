"""Delivery against a real receiver that verifies every message with `standardwebhooks`.

The sender is the worker's own code (worker/webhooks.py), run in this process: Celery only
wakes it, so calling it directly is what a wake-up does.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.factories import auth
from tests.support.processes import wait_until
from tests.support.settings import reset_caches
from tests.support.webhook_receiver import Receiver, running_receiver
from tests.support.webhooks import add_endpoint, finish_job, hooks_key, messages, post_event

BASE = "/v1/webhook-endpoints"


@pytest.fixture
def hooks(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Private URLs allowed (the receiver is on loopback), short timeouts and backoff."""
    for k, v in {
        "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        "WEBHOOK_TIMEOUT_SECONDS": "0.5",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.01",
        "WEBHOOK_RETRY_MAX_SECONDS": "0.05",
        "WEBHOOK_MAX_ATTEMPTS": "6",
    }.items():
        monkeypatch.setenv(k, v)
    reset_caches()
    from app.kit.db import close_pool

    yield service_env["DATABASE_URL"]
    close_pool()


def pump(endpoint_id: str, done: Any, timeout: float = 20) -> None:
    """Run the sender for the endpoint until `done()` holds."""
    from app.config import get_settings
    from worker.webhooks import drain

    def step() -> bool:
        drain(uuid.UUID(endpoint_id), get_settings())
        return bool(done())

    wait_until(step, timeout, "the webhook messages to be sent", interval=0.02)


def statuses(db: str, endpoint_id: str) -> list[str]:
    return [m["status"] for m in messages(db, endpoint_id)]


def attempts(db: str) -> list[dict[str, Any]]:
    with psycopg.connect(db) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT * FROM webhook_attempts ORDER BY id").fetchall()


def setup(
    api: TestClient, db: str, receiver: Receiver, n_jobs: int, **extra: Any
) -> tuple[str, dict[str, Any]]:
    key = hooks_key()
    endpoint = add_endpoint(api, key, receiver.url, **extra)
    receiver.secrets.append(endpoint["secret"])
    event = post_event(api, key, n_jobs)
    for job in event["jobs"]:
        finish_job(db, job["id"])
    return key, endpoint


def test_signed_delivery_through_errors_and_timeouts(api: TestClient, hooks: str) -> None:
    order: dict[str, int] = {}

    def flaky(_: Receiver, webhook_id: str, n: int) -> tuple[int, float, dict[str, str]]:
        # By order of first arrival, so every run meets both faults: 500s and slow answers.
        kind = order.setdefault(webhook_id, len(order)) % 3
        if n == 1 and kind == 0:
            return 500, 0.0, {}
        if n == 1 and kind == 1:
            return 200, 1.0, {}  # answers after the 0.5 s timeout: not delivered
        return 200, 0.0, {}

    with running_receiver(flaky) as receiver:
        _, endpoint = setup(api, hooks, receiver, 6)
        rows = messages(hooks, endpoint["id"])
        assert len(rows) == 7  # six jobs and the event
        pump(endpoint["id"], lambda: set(statuses(hooks, endpoint["id"])) == {"delivered"})
        got = receiver.accepted()
        assert receiver.unverified == []
        assert set(got) == {r["id"] for r in rows}
        for row in rows:
            assert got[row["id"]].body == row["payload"]
            assert got[row["id"]].path == "/hook"
            assert abs(int(got[row["id"]].timestamp) - datetime.now(UTC).timestamp()) < 60
        outcomes = [a["outcome"] for a in attempts(hooks)]
        assert "http_error" in outcomes and "timeout" in outcomes
        assert outcomes.count("delivered") == 7
        final = messages(hooks, endpoint["id"])
        assert sum(m["attempts"] for m in final) == len(outcomes)
        assert all(m["delivered_at"] is not None and m["last_http_status"] == 200 for m in final)


def test_rotated_secret_signs_twice(api: TestClient, hooks: str) -> None:
    with running_receiver() as receiver:
        key, endpoint = setup(api, hooks, receiver, 1, event_types=["job.cancelled"])
        old = endpoint["secret"]
        pump(endpoint["id"], lambda: len(receiver.accepted()) == 1)
        first = next(iter(receiver.accepted().values()))
        assert len(first.signatures) == 1
        new = api.post(f"{BASE}/{endpoint['id']}/rotate-secret", headers=auth(key)).json()["secret"]
        receiver.secrets.append(new)
        job = post_event(api, key, 1)["jobs"][0]
        finish_job(hooks, job["id"])
        pump(endpoint["id"], lambda: len(receiver.accepted()) == 2)
        second = next(r for r in receiver.accepted().values() if r.webhook_id != first.webhook_id)
        assert len(second.signatures) == 2
        assert set(second.verified_by) == {old, new}
        body = messages(hooks, endpoint["id"])[-1]["payload"]
        from worker.webhooks import body_of

        for signature, secret in zip(second.signatures, (new, old), strict=True):
            headers = {
                "webhook-id": second.webhook_id,
                "webhook-timestamp": second.timestamp,
                "webhook-signature": signature,
            }
            Webhook(secret).verify(body_of(body), headers)
            with pytest.raises(WebhookVerificationError):
                Webhook(old if secret == new else new).verify(body_of(body), headers)


def test_replay_resends_the_same_ids_and_listing(api: TestClient, hooks: str) -> None:
    with running_receiver() as receiver:
        before = datetime.now(UTC) - timedelta(seconds=5)
        key, endpoint = setup(api, hooks, receiver, 3)
        pump(endpoint["id"], lambda: len(receiver.accepted()) == 4)
        r = api.post(
            f"{BASE}/{endpoint['id']}/replay", json={"since": before.isoformat()}, headers=auth(key)
        )
        assert r.status_code == 202 and r.json() == {"messages": 4}
        pump(endpoint["id"], lambda: sum(receiver.seen.values()) == 8)
        assert sorted(receiver.seen.values()) == [2, 2, 2, 2]
        later = datetime.now(UTC) + timedelta(seconds=5)
        r = api.post(
            f"{BASE}/{endpoint['id']}/replay", json={"since": later.isoformat()}, headers=auth(key)
        )
        assert r.json() == {"messages": 0}

        page = api.get(f"{BASE}/{endpoint['id']}/deliveries?limit=3", headers=auth(key)).json()
        assert len(page["items"]) == 3 and page["next_cursor"]
        rest = api.get(
            f"{BASE}/{endpoint['id']}/deliveries",
            params={"cursor": page["next_cursor"]},
            headers=auth(key),
        ).json()
        assert rest["next_cursor"] is None
        items = page["items"] + rest["items"]
        ids = [m["id"] for m in reversed(messages(hooks, endpoint["id"]))]
        assert [d["message_id"] for d in items] == ids  # newest first
        assert set(items[0]) == {
            "message_id",
            "event_type",
            "job_id",
            "event_id",
            "status",
            "attempts",
            "last_http_status",
            "last_error",
            "next_attempt_at",
            "created_at",
            "delivered_at",
        }
        assert {d["status"] for d in items} == {"delivered"}
        assert items[0]["event_type"] == "event.completed" and items[0]["job_id"] is None
        pending = api.get(
            f"{BASE}/{endpoint['id']}/deliveries?status=pending", headers=auth(key)
        ).json()
        assert pending["items"] == []
        bad = api.get(f"{BASE}/{endpoint['id']}/deliveries?cursor=nope", headers=auth(key))
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"
        unknown = api.get(f"{BASE}/{uuid.uuid4()}/deliveries", headers=auth(key))
        assert unknown.status_code == 404


def test_gives_up_after_max_attempts(api: TestClient, hooks: str) -> None:
    with running_receiver(lambda *_: (503, 0.0, {})) as receiver:
        key, endpoint = setup(api, hooks, receiver, 1, event_types=["job.cancelled"])
        pump(endpoint["id"], lambda: statuses(hooks, endpoint["id"]) == ["failed"])
        [message] = messages(hooks, endpoint["id"])
        assert message["attempts"] == 6 and message["last_http_status"] == 503
        assert sum(receiver.seen.values()) == 6
        listed = api.get(
            f"{BASE}/{endpoint['id']}/deliveries?status=failed", headers=auth(key)
        ).json()["items"]
        assert [d["message_id"] for d in listed] == [message["id"]]
        assert listed[0]["last_error"] == "HTTP 503" and listed[0]["next_attempt_at"] is None


def test_redirect_is_not_followed(api: TestClient, hooks: str) -> None:
    def redirect(receiver: Receiver, _: str, __: int) -> tuple[int, float, dict[str, str]]:
        return 302, 0.0, {"location": receiver.url.replace("/hook", "/elsewhere")}

    with running_receiver(redirect) as receiver:
        _, endpoint = setup(api, hooks, receiver, 1, event_types=["job.cancelled"])
        pump(endpoint["id"], lambda: len(attempts(hooks)) >= 2)
        assert receiver.hits.get("/elsewhere", 0) == 0
        assert {a["outcome"] for a in attempts(hooks)} == {"redirect"}
        assert statuses(hooks, endpoint["id"]) == ["pending"]


def test_loopback_name_refused_at_delivery(
    api: TestClient, hooks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_receiver() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        key = hooks_key()
        endpoint = add_endpoint(api, key, f"https://localhost:{port}/hook")
        job = post_event(api, key, 1)["jobs"][0]
        finish_job(hooks, job["id"])
        monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_URLS", "false")
        reset_caches()
        pump(endpoint["id"], lambda: len(attempts(hooks)) >= 2)
        assert receiver.hits == {}
        assert {a["outcome"] for a in attempts(hooks)} == {"blocked_address"}


def test_deleted_endpoint_gets_nothing(api: TestClient, hooks: str) -> None:
    with running_receiver() as receiver:
        key, endpoint = setup(api, hooks, receiver, 2)
        assert api.delete(f"{BASE}/{endpoint['id']}", headers=auth(key)).status_code == 204
        assert set(statuses(hooks, endpoint["id"])) == {"failed"}
        from app.config import get_settings
        from worker.webhooks import drain

        assert drain(uuid.UUID(endpoint["id"]), get_settings()) == 0
        assert receiver.hits == {}


def test_one_type_only(api: TestClient, hooks: str) -> None:
    with running_receiver() as receiver:
        _, endpoint = setup(api, hooks, receiver, 3, event_types=["event.completed"])
        pump(endpoint["id"], lambda: len(receiver.accepted()) == 1)
        assert receiver.types() == ["event.completed"]


def test_slow_endpoint_holds_at_most_four_senders(api: TestClient, hooks: str) -> None:
    with running_receiver(lambda *_: (200, 0.3, {})) as receiver:
        _, endpoint = setup(api, hooks, receiver, 11)
        from app.config import get_settings
        from worker.webhooks import drain

        threads = [
            threading.Thread(target=drain, args=(uuid.UUID(endpoint["id"]), get_settings()))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(receiver.accepted()) == 12
        assert sum(receiver.seen.values()) == 12  # eight senders at once, no message twice
        assert 2 <= receiver.max_in_flight <= 4


def test_metrics(api: TestClient, hooks: str) -> None:
    with running_receiver() as receiver:
        _, endpoint = setup(api, hooks, receiver, 1, event_types=["job.cancelled"])
        from app.api.scrape import WEBHOOKS

        WEBHOOKS.clear()
        text = api.get("/metrics").text
        assert (
            f'stockout_webhook_oldest_pending_age_seconds{{endpoint_id="{endpoint["id"]}"}}' in text
        )
        pump(endpoint["id"], lambda: len(receiver.accepted()) == 1)
        WEBHOOKS.clear()
        text = api.get("/metrics").text
        assert "stockout_webhook_oldest_pending_age_seconds{" not in text
        assert 'stockout_webhook_deliveries_total{outcome="delivered"}' in text
        assert endpoint["secret"] not in text
