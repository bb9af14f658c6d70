"""PortOne V2's webhooks: only a message one of the account's secrets verifies, within five
minutes, makes the payment's job look first; anything else is 401 and changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from app.jobs import store
from app.jobs.decide import Method, OnPaid
from app.kit.db import unit_of_work
from tests.support.settings import reset_caches

OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW = "whsec_c2VjcmV0LW9mLXRoZS1uZXctcm90YXRpb24xMjM="
ACCOUNTS = """
[accounts.main]
api = "v1"
imp_key = "main_key"
imp_secret_env = "TEST_MAIN_SECRET"

[accounts.shop2]
api = "v2"
store_id = "store-0a1b2c"
api_secret_env = "TEST_SHOP2_SECRET"
webhook_secret_env = "TEST_SHOP2_WHSEC"
"""


@pytest.fixture
def client(
    service_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    monkeypatch.setenv("ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("TEST_MAIN_SECRET", "main-secret")
    monkeypatch.setenv("TEST_SHOP2_SECRET", "shop2-secret")
    monkeypatch.setenv("TEST_SHOP2_WHSEC", f"{NEW}, {OLD}")  # a rotation: both verify
    reset_caches()
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def waiting_job(service_env: dict[str, str], payment_id: str) -> None:
    new = store.NewEvent(
        "shop2",
        f"evt-{payment_id}",
        "SKU",
        "out of stock",
        None,
        "h",
        [store.NewJob(payment_id, None, Method.VBANK)],
        OnPaid.HOLD,
        60,
    )
    with unit_of_work() as uow:
        store.accept_event(uow.conn, new)


def look_first(db: str, payment_id: str) -> bool:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT look_first FROM jobs WHERE account = 'shop2' AND imp_uid = %s", (payment_id,)
        ).fetchone()
    assert row is not None
    return bool(row[0])


def signed(secret: str, payment_id: str, *, msg_id: str = "msg_1", age: float = 0) -> Any:
    body = json.dumps(
        {
            "type": "Transaction.Cancelled",
            "timestamp": "2026-12-06T10:00:00Z",
            "data": {"storeId": "store-0a1b2c", "paymentId": payment_id},
        }
    )
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(time.time() - age, tz=UTC)
    signature = Webhook(secret).sign(msg_id, when, body)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return body, headers


def test_a_verified_message_makes_the_job_look_first_and_a_repeat_is_harmless(
    client: TestClient, service_env: dict[str, str]
) -> None:
    waiting_job(service_env, "order-v2-1")
    body, headers = signed(OLD, "order-v2-1")  # the older secret of the rotation verifies too
    r = client.post("/v1/portone/webhooks/shop2", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert look_first(service_env["DATABASE_URL"], "order-v2-1")
    again = client.post("/v1/portone/webhooks/shop2", content=body, headers=headers)
    assert again.status_code == 200
    # A payment with no job is answered 200 all the same (PortOne would only retry).
    body, headers = signed(NEW, "order-unknown")
    assert (
        client.post("/v1/portone/webhooks/shop2", content=body, headers=headers).status_code == 200
    )


@pytest.mark.parametrize("case", ["forged", "stale", "future", "missing", "tampered", "unsigned"])
def test_anything_unverified_is_401_and_changes_nothing(
    client: TestClient, service_env: dict[str, str], case: str
) -> None:
    waiting_job(service_env, "order-v2-2")
    body, headers = signed(NEW, "order-v2-2", age={"stale": 301, "future": -301}.get(case, 0))
    if case == "forged":
        body, headers = signed("whsec_" + "Zm9yZ2VkLXNlY3JldC1ub3QtdGhlLWFjY291bnRz", "order-v2-2")
    if case == "missing":
        del headers["webhook-signature"]
    if case == "tampered":
        body = body.replace("order-v2-2", "order-v2-3")
    if case == "unsigned":
        headers = {"content-type": "application/json"}
    r = client.post("/v1/portone/webhooks/shop2", content=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "unauthorized"
    assert not look_first(service_env["DATABASE_URL"], "order-v2-2")
    assert NEW not in r.text and OLD not in r.text


def test_an_account_without_v2_webhooks_is_not_found(client: TestClient) -> None:
    body, headers = signed(NEW, "x")
    for account in ("main", "nowhere"):
        r = client.post(f"/v1/portone/webhooks/{account}", content=body, headers=headers)
        assert r.status_code == 404, account
