"""Accounts through the API: events, jobs, stats and webhook endpoints belong to one account,
and a key bound to accounts sees and changes only theirs; another account's object is 404."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.factories import api_key, auth, event
from tests.support.settings import reset_caches

ACCOUNTS = """
[accounts.main]
api = "v1"
imp_key = "main_key"
imp_secret_env = "TEST_MAIN_SECRET"
webhook_token_env = "TEST_MAIN_HOOK"

[accounts.shop2]
api = "v1"
imp_key = "shop2_key"
imp_secret_env = "TEST_SHOP2_SECRET"
webhook_token_env = "TEST_SHOP2_HOOK"

[accounts.agency-a01]
api = "v1"
imp_key = "agency_key"
imp_secret_env = "TEST_AGENCY_SECRET"
tier = "A01"
"""


@pytest.fixture
def client(
    service_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    monkeypatch.setenv("ACCOUNTS_FILE", str(path))
    for name, value in {
        "TEST_MAIN_SECRET": "main-secret",
        "TEST_SHOP2_SECRET": "shop2-secret",
        "TEST_AGENCY_SECRET": "agency-secret",
        "TEST_MAIN_HOOK": "main-hook-token",
        "TEST_SHOP2_HOOK": "shop2-hook-token",
    }.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, key: str, body: dict[str, Any]) -> Any:
    return client.post("/v1/stockout-events", json=body, headers=auth(key))


def test_the_same_event_id_and_payment_in_two_accounts_are_two_events_and_two_jobs(
    client: TestClient,
) -> None:
    operator = api_key()
    body = event(1, event_id="evt-same", prefix="imps_same")
    a = post(client, operator, {**body, "account": "main"})
    b = post(client, operator, {**body, "account": "shop2"})
    assert a.status_code == 202 and b.status_code == 202, (a.text, b.text)
    assert a.json()["account"] == "main" and b.json()["account"] == "shop2"
    job_a, job_b = a.json()["jobs"][0], b.json()["jobs"][0]
    assert job_a["id"] != job_b["id"] and job_a["imp_uid"] == job_b["imp_uid"]
    assert (job_a["account"], job_b["account"]) == ("main", "shop2")
    # A replay is a replay within its account only.
    again = post(client, operator, {**body, "account": "shop2"})
    assert again.status_code == 200 and again.json()["jobs"][0]["id"] == job_b["id"]
    # The operator reads each by ?account=; without it, `default` (not configured: nothing).
    got = client.get("/v1/stockout-events/evt-same?account=shop2", headers=auth(operator))
    assert got.status_code == 200 and got.json()["jobs"][0]["id"] == job_b["id"]
    assert client.get("/v1/stockout-events/evt-same", headers=auth(operator)).status_code == 404
    listed = client.get("/v1/jobs?account=main", headers=auth(operator)).json()["items"]
    assert [j["id"] for j in listed] == [job_a["id"]]
    everything = client.get("/v1/jobs", headers=auth(operator)).json()["items"]
    assert {j["id"] for j in everything} == {job_a["id"], job_b["id"]}


def test_a_bound_key_writes_to_its_account_and_gets_422_for_another(client: TestClient) -> None:
    main = api_key(accounts=["main"])
    made = post(client, main, event(1))
    assert made.status_code == 202 and made.json()["account"] == "main"
    other = post(client, main, {**event(1), "account": "shop2"})
    assert other.status_code == 422 and other.json()["code"] == "unknown_account"
    unknown = post(client, api_key(), {**event(1), "account": "nowhere"})
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_account"
    # Without ACCOUNTS_FILE naming it, `default` does not exist either.
    plain = post(client, api_key(), event(1))
    assert plain.status_code == 422 and plain.json()["code"] == "unknown_account"
    bad = post(client, api_key(), {**event(1), "account": "Not A Name"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    several = api_key(accounts=["main", "shop2"])
    unnamed = post(client, several, event(1))
    assert unnamed.status_code == 422 and unnamed.json()["code"] == "unknown_account"
    assert post(client, several, {**event(1), "account": "shop2"}).status_code == 202


def test_a_bound_key_gets_404_for_the_other_accounts_job_event_and_endpoint(
    client: TestClient,
) -> None:
    operator = api_key()
    theirs = post(client, operator, {**event(1, event_id="evt-theirs"), "account": "shop2"})
    job_id = theirs.json()["jobs"][0]["id"]
    mine = post(client, operator, {**event(1, event_id="evt-mine"), "account": "main"})
    my_job = mine.json()["jobs"][0]["id"]
    endpoint = client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://93.184.215.14/hooks", "account": "shop2"},
        headers=auth(operator),
    )
    assert endpoint.status_code == 201 and endpoint.json()["account"] == "shop2"
    every_account = client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://93.184.215.14/all"},
        headers=auth(operator),
    )
    assert every_account.status_code == 201 and every_account.json()["account"] is None

    key = api_key(accounts=["main"])
    h = auth(key)
    for path in (
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/attempts",
        f"/v1/jobs/{job_id}/actions",
        "/v1/stockout-events/evt-theirs?account=shop2",
        "/v1/stockout-events/evt-theirs",
        f"/v1/webhook-endpoints/{endpoint.json()['id']}",
        f"/v1/webhook-endpoints/{endpoint.json()['id']}/deliveries",
        f"/v1/webhook-endpoints/{every_account.json()['id']}",
    ):
        r = client.get(path, headers=h)
        assert r.status_code == 404, (path, r.text)
        assert "shop2" not in r.text  # nothing of the other account is told
    for path in (f"/v1/jobs/{job_id}/retry", f"/v1/jobs/{job_id}/refund"):
        assert client.post(path, headers=h).status_code == 404, path
    gone = client.delete(f"/v1/webhook-endpoints/{endpoint.json()['id']}", headers=h)
    assert gone.status_code == 404
    rotated = client.post(f"/v1/webhook-endpoints/{endpoint.json()['id']}/rotate-secret", headers=h)
    assert rotated.status_code == 404
    # Its own job reads as usual; lists, stats and events show its account alone.
    assert client.get(f"/v1/jobs/{my_job}", headers=h).status_code == 200
    assert [j["id"] for j in client.get("/v1/jobs", headers=h).json()["items"]] == [my_job]
    assert client.get("/v1/jobs?account=shop2", headers=h).json()["items"] == []
    events = client.get("/v1/stockout-events", headers=h).json()["items"]
    assert [(e["account"], e["event_id"]) for e in events] == [("main", "evt-mine")]
    stats = client.get("/v1/stats", headers=h).json()
    assert sum(stats["counts"].values()) == 1
    assert sum(client.get("/v1/stats?account=shop2", headers=h).json()["counts"].values()) == 0
    assert sum(client.get("/v1/stats", headers=auth(operator)).json()["counts"].values()) == 2
    assert client.get("/v1/webhook-endpoints", headers=h).json()["items"] == []
    assert client.get("/v1/me", headers=h).json()["accounts"] == ["main"]


def test_a_bound_keys_endpoint_takes_its_account_and_may_not_name_another(
    client: TestClient,
) -> None:
    key = api_key(accounts=["main"])
    made = client.post(
        "/v1/webhook-endpoints", json={"url": "https://93.184.215.14/h"}, headers=auth(key)
    )
    assert made.status_code == 201 and made.json()["account"] == "main"
    other = client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://93.184.215.14/h", "account": "shop2"},
        headers=auth(key),
    )
    assert other.status_code == 422 and other.json()["code"] == "unknown_account"
    listed = client.get("/v1/webhook-endpoints", headers=auth(key)).json()["items"]
    assert [e["id"] for e in listed] == [made.json()["id"]]


def test_the_hook_token_names_the_account(client: TestClient) -> None:
    operator = api_key()
    body = event(1, prefix="imps_hook")
    post(client, operator, {**body, "account": "shop2"})
    imp_uid = body["payments"][0]["imp_uid"]
    form = {"imp_uid": imp_uid, "merchant_uid": "m"}
    # main's token: main has no job for this payment, so the barcode may be paid there...
    allowed = client.post("/v1/iamport/cvs-confirm?token=main-hook-token", json=form)
    assert allowed.status_code == 200
    # ...and shop2's token finds shop2's job and blocks it.
    blocked = client.post("/v1/iamport/cvs-confirm?token=shop2-hook-token", json=form)
    assert blocked.status_code == 409
    wrong = client.post("/v1/iamport/cvs-confirm?token=hook-secret-token", json=form)
    assert wrong.status_code == 401


def test_an_unknown_job_id_and_an_other_accounts_are_the_same_404(client: TestClient) -> None:
    operator = api_key()
    theirs = post(client, operator, {**event(1), "account": "shop2"}).json()["jobs"][0]["id"]
    key = api_key(accounts=["main"])
    a = client.get(f"/v1/jobs/{theirs}", headers=auth(key))
    b = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key))
    assert a.status_code == b.status_code == 404
    assert a.json()["code"] == b.json()["code"] == "not_found"
