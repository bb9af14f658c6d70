"""Webhook endpoints over HTTP: CRUD, scope, URL rules, secrets shown only on create and rotate."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from tests.support.factories import api_key, auth
from tests.support.settings import reset_caches
from tests.support.webhooks import add_endpoint, hooks_key

PUBLIC = "https://93.184.215.14/hooks/stockout"  # a public address: no DNS needed
BASE = "/v1/webhook-endpoints"


def test_create_list_get_delete(api: TestClient, capfd: pytest.CaptureFixture[str]) -> None:
    key = hooks_key()
    created = add_endpoint(
        api, key, PUBLIC, event_types=["job.cancelled", "event.completed"], description="orders"
    )
    assert set(created) == {
        "id",
        "account",
        "url",
        "event_types",
        "description",
        "enabled",
        "created_at",
        "secret",
    }
    assert created["url"] == PUBLIC
    assert created["event_types"] == ["job.cancelled", "event.completed"]
    assert created["enabled"] is True
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64

    everything = add_endpoint(api, key, PUBLIC)
    assert everything["event_types"] is None and everything["description"] is None

    listed = api.get(BASE, headers=auth(key))
    assert listed.status_code == 200
    assert [e["id"] for e in listed.json()["items"]] == [created["id"], everything["id"]]
    one = api.get(f"{BASE}/{created['id']}", headers=auth(key))
    assert one.status_code == 200
    assert one.json() == {k: v for k, v in created.items() if k != "secret"}
    assert secret not in listed.text + one.text and "whsec_" not in listed.text + one.text

    rotated = api.post(f"{BASE}/{created['id']}/rotate-secret", headers=auth(key))
    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != secret
    assert rotated.json()["id"] == created["id"]

    assert api.delete(f"{BASE}/{created['id']}", headers=auth(key)).status_code == 204
    assert api.get(f"{BASE}/{created['id']}", headers=auth(key)).status_code == 404
    assert api.delete(f"{BASE}/{created['id']}", headers=auth(key)).status_code == 404
    assert [e["id"] for e in api.get(BASE, headers=auth(key)).json()["items"]] == [everything["id"]]
    logs = capfd.readouterr()
    assert secret not in logs.out + logs.err
    assert rotated.json()["secret"] not in logs.out + logs.err


def test_scope_is_needed(api: TestClient) -> None:
    others = api_key("events:write", "jobs:read", "jobs:write")
    for method, path in [
        ("POST", BASE),
        ("GET", BASE),
        ("GET", f"{BASE}/00000000-0000-0000-0000-000000000000"),
        ("DELETE", f"{BASE}/00000000-0000-0000-0000-000000000000"),
        ("POST", f"{BASE}/00000000-0000-0000-0000-000000000000/rotate-secret"),
        ("GET", f"{BASE}/00000000-0000-0000-0000-000000000000/deliveries"),
        ("POST", f"{BASE}/00000000-0000-0000-0000-000000000000/replay"),
    ]:
        assert api.request(method, path).status_code == 401
        r = api.request(method, path, headers=auth(others), json={"url": PUBLIC})
        assert r.status_code == 403, (method, path)
        assert r.json()["code"] == "forbidden"


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/hook",  # not https
        "https://127.0.0.1/hook",
        "https://localhost/hook",  # a name resolving to loopback
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "https://user:pw@93.184.215.14/hook",
        "ftp://93.184.215.14/hook",
        "https:///nohost",
        "https://93.184.215.14:99999/hook",
        "https://no-such-host.invalid/hook",
    ],
)
def test_forbidden_urls_are_invalid_url(api: TestClient, url: str) -> None:
    r = api.post(BASE, json={"url": url}, headers=auth(hooks_key()))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "invalid_url"


def test_private_urls_when_allowed(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_URLS", "true")
    reset_caches()
    created = add_endpoint(api, hooks_key(), "http://localhost:9/hook")
    assert created["url"] == "http://localhost:9/hook"


def test_bad_bodies_are_validation_errors(api: TestClient) -> None:
    key = hooks_key()
    for body in (
        {},
        {"url": PUBLIC, "event_types": ["job.exploded"]},
        {"url": PUBLIC, "event_types": []},
        {"url": PUBLIC, "extra": 1},
    ):
        r = api.post(BASE, json=body, headers=auth(key))
        assert r.status_code == 422 and r.json()["code"] == "validation_error", body
