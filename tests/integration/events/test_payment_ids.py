"""Events name each payment by its account's field: `imp_uid` on an iamport V1 account,
`payment_id` on a PortOne V2 one; the other field on the wrong kind of account is a 422. Jobs
show `payment_id` always, and `imp_uid` on V1 accounts only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.factories import api_key, auth
from tests.support.settings import reset_caches

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ACCOUNTS = """
[accounts.main]
api = "v1"
imp_key = "main_key"
imp_secret_env = "TEST_MAIN_SECRET"

[accounts.shop2]
api = "v2"
store_id = "store-0a1b2c"
api_secret_env = "TEST_SHOP2_SECRET"
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
    reset_caches()
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c
    reset_caches()


def body(account: str, *payments: dict[str, Any], event_id: str = "evt-ids") -> dict[str, Any]:
    return {"account": account, "event_id": event_id, "sku": "SKU-1", "payments": list(payments)}


def post(client: TestClient, payload: dict[str, Any]) -> Any:
    return client.post("/v1/stockout-events", json=payload, headers=auth(api_key()))


def test_a_v1_payment_named_by_imp_uid_shows_it_as_both_ids(client: TestClient) -> None:
    r = post(client, body("main", {"imp_uid": "imps_1"}))
    assert r.status_code == 202, r.text
    job = r.json()["jobs"][0]
    assert job["payment_id"] == "imps_1" and job["imp_uid"] == "imps_1"
    key = api_key()
    read = client.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()
    assert (read["payment_id"], read["imp_uid"]) == ("imps_1", "imps_1")
    found = client.get("/v1/jobs?account=main&payment_id=imps_1", headers=auth(key)).json()
    assert [j["id"] for j in found["items"]] == [job["id"]]


def test_payment_id_on_a_v1_account_is_a_plain_422(client: TestClient) -> None:
    r = post(client, body("main", {"imp_uid": "imps_2"}, {"payment_id": "order-2"}))
    assert r.status_code == 422, r.text
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == "validation_error"
    assert "imp_uid" in problem["detail"] and "main" in problem["detail"]
    assert [e["loc"] for e in problem["errors"]] == [["body", "payments", "1", "payment_id"]]
    assert problem["errors"][0]["type"] == "wrong_payment_field"
    # Nothing of the event was accepted.
    jobs = client.get("/v1/jobs?account=main", headers=auth(api_key())).json()
    assert jobs["items"] == []


def test_imp_uid_on_a_v2_account_is_a_plain_422(client: TestClient) -> None:
    r = post(client, body("shop2", {"imp_uid": "imps_3"}))
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == "validation_error"
    assert "PortOne V2" in problem["detail"] and "payment_id" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "payments", "0", "imp_uid"]


@pytest.mark.parametrize(
    "payment",
    [
        {},
        {"imp_uid": "imps_4", "payment_id": "imps_4"},
        {"payment_id": ""},
        {"payment_id": "x" * 201},
        {"payment_id": "bad\nid"},
    ],
    ids=["neither", "both", "empty", "too-long", "control-character"],
)
def test_a_payment_needs_exactly_one_valid_id(client: TestClient, payment: dict[str, Any]) -> None:
    r = post(client, body("shop2", payment))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error" and r.json()["errors"]


def test_a_v2_payment_named_by_payment_id_has_no_imp_uid(client: TestClient) -> None:
    long_id = "order-" + "7" * 190  # PortOne's paymentId: up to 200 characters
    r = post(client, body("shop2", {"payment_id": long_id, "pay_method": "vbank"}))
    assert r.status_code == 202, r.text
    job = r.json()["jobs"][0]
    assert job["payment_id"] == long_id and job["imp_uid"] is None
    key = api_key()
    read = client.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()
    assert read["payment_id"] == long_id and read["imp_uid"] is None
    assert read == job | {"updated_at": read["updated_at"]}
    by_id = client.get(f"/v1/jobs?payment_id={long_id}", headers=auth(key)).json()["items"]
    assert [j["id"] for j in by_id] == [job["id"]]
    # imp_uid names only v1 payments.
    short = post(client, body("shop2", {"payment_id": "order-9"}, event_id="evt-short"))
    assert short.status_code == 202, short.text
    assert client.get("/v1/jobs?imp_uid=order-9", headers=auth(key)).json()["items"] == []
