"""API keys: only their hashes are stored, and a revoked key stops working at once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import psycopg
from fastapi.testclient import TestClient

from app.kit.db import unit_of_work
from app.operators.keys import revoke_key
from devtools.launch import ROOT
from tests.support.factories import api_key, auth


def stockout(*args: str) -> subprocess.CompletedProcess[str]:
    """The `stockout` command, as an operator runs it, on the test database."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_key_is_stored_only_as_a_hash(api: TestClient, clean_db: str) -> None:
    result = stockout("keys", "create", "ops", "--scope", "jobs:read")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    _, prefix, secret = key.split("_", 2)
    assert api.get("/v1/jobs", headers=auth(key)).status_code == 200
    with psycopg.connect(clean_db) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
        (stored_hash,) = conn.execute(
            "SELECT secret_hash FROM api_keys WHERE prefix = %s", (prefix,)
        ).fetchone() or (None,)
    assert len(rows) == 1
    dump = repr(rows)
    assert secret not in dump and key not in dump
    assert stored_hash == hashlib.sha256(secret.encode()).hexdigest()
    listing = stockout("keys", "list")
    assert listing.returncode == 0
    assert secret not in listing.stdout and stored_hash not in listing.stdout


def test_revoked_by_cli_fails_on_the_very_next_request(api: TestClient) -> None:
    key = api_key("jobs:read")
    prefix = key.split("_")[1]
    assert api.get("/v1/jobs", headers=auth(key)).status_code == 200
    assert stockout("keys", "revoke", prefix).returncode == 0
    r = api.get("/v1/jobs", headers=auth(key))
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert stockout("keys", "revoke", prefix).returncode == 1  # already revoked


def test_revoked_in_process_fails_at_once_and_others_still_work(api: TestClient) -> None:
    doomed, other = api_key(), api_key()
    body = {"event_id": "k-1", "sku": "S", "payments": [{"imp_uid": "imps_k1"}]}
    assert api.post("/v1/stockout-events", json=body, headers=auth(doomed)).status_code == 202
    with unit_of_work() as uow:
        assert revoke_key(uow.conn, doomed.split("_")[1])
    body["event_id"] = "k-2"
    assert api.post("/v1/stockout-events", json=body, headers=auth(doomed)).status_code == 401
    assert api.post("/v1/stockout-events", json=body, headers=auth(other)).status_code == 202


def test_near_misses_are_refused(api: TestClient) -> None:
    key = api_key("jobs:read")
    _, prefix, secret = key.split("_", 2)
    tries = [
        f"sk_{prefix}_{secret[:-1]}",  # one character short
        f"sk_{prefix}_{secret}x",  # one too many
        f"sk_{prefix}_" + hashlib.sha256(secret.encode()).hexdigest(),  # the stored hash itself
        f"sk_{prefix}_",
        f"sk__{secret}",
        secret,
        "",
    ]
    for bad in tries:
        r = api.get("/v1/jobs", headers=auth(bad))
        assert r.status_code == 401, (bad, r.status_code)
    assert api.get("/v1/jobs", headers={"Authorization": f"Basic {key}"}).status_code == 401
    assert api.get("/v1/jobs", headers={"Authorization": f"bearer {key}"}).status_code == 200


def test_scopes_are_enforced(api: TestClient) -> None:
    reader = api_key("jobs:read")
    body = {"event_id": "k-3", "sku": "S", "payments": [{"imp_uid": "imps_k3"}]}
    r = api.post("/v1/stockout-events", json=body, headers=auth(reader))
    assert r.status_code == 403 and r.json()["code"]
    writer = api_key("events:write")
    assert api.get("/v1/jobs", headers=auth(writer)).status_code == 403
