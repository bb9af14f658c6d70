"""Postgres or Redis down: 503 (never 500) with Retry-After, 202 kept for events while Redis
is down, and recovery without a restart when the database returns (stale connections detected)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.support.factories import auth, event


def test_postgres_down_503_then_recovers(api: TestClient, key: str, postgres_server: Any) -> None:
    # Fill the pool with live connections first, so that the restart leaves them stale.
    assert api.post("/v1/stockout-events", json=event(1), headers=auth(key)).status_code == 202
    postgres_server.stop("immediate")
    try:
        r = api.post("/v1/stockout-events", json=event(1), headers=auth(key))
        assert r.status_code == 503
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["retry-after"].isdigit()
        assert r.json()["code"] == "database_unavailable"
        assert (
            api.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=auth(key)).status_code
            == 503
        )
        assert api.get("/readyz").status_code == 503
        assert api.get("/healthz").status_code == 200
    finally:
        postgres_server.start()
    r = api.post("/v1/stockout-events", json=event(1), headers=auth(key))
    assert r.status_code == 202, r.text
    assert api.get("/readyz").status_code == 200


def test_redis_down_events_still_202_and_readyz_503(
    api: TestClient, key: str, redis_server: Any
) -> None:
    redis_server.stop()
    try:
        r = api.post("/v1/stockout-events", json=event(3), headers=auth(key))
        assert r.status_code == 202
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] != "ok"
    finally:
        redis_server.start()
    assert api.get("/readyz").status_code == 200
