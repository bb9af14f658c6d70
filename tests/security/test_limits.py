"""Input limits that protect the service: body size (413) and list and field lengths (422)."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi.testclient import TestClient

from tests.support.factories import auth


def event(n: int, **extra: Any) -> dict[str, Any]:
    body = {
        "event_id": f"lim-{n}",
        "sku": "S",
        "payments": [{"imp_uid": f"imps_lim{n}_{i}"} for i in range(n)],
    }
    body.update(extra)
    return body


def jobs(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    return int(row[0]) if row else -1


def test_1000_payments_accepted_1001_refused_without_jobs(
    api: TestClient, key: str, clean_db: str
) -> None:
    r = api.post("/v1/stockout-events", json=event(1001), headers=auth(key))
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    assert jobs(clean_db) == 0
    r = api.post("/v1/stockout-events", json=event(1000), headers=auth(key))
    assert r.status_code == 202
    assert jobs(clean_db) == 1000


def test_body_over_1_mib_is_413_before_auth_or_parsing(api: TestClient, key: str) -> None:
    big = event(1, sku="S", reason="r")
    big["padding"] = "x" * (1024 * 1024)
    for headers in (auth(key), {}):  # no key: still 413, the body is never read whole
        r = api.post("/v1/stockout-events", json=big, headers=headers)
        assert r.status_code == 413, r.status_code
        assert r.headers["content-type"].startswith("application/problem+json")


def test_streamed_body_over_1_mib_is_413(api: TestClient, key: str) -> None:
    def chunks() -> Any:
        for _ in range(20):
            yield b" " * (64 * 1024)

    r = api.post(
        "/v1/stockout-events",
        content=chunks(),
        headers={**auth(key), "content-type": "application/json"},
    )
    assert r.status_code == 413


def test_field_lengths(api: TestClient, key: str, clean_db: str) -> None:
    too_long = [
        event(1, event_id="e" * 129),
        event(1, sku="s" * 129),
        event(1, reason="r" * 257),
        {**event(1), "payments": [{"imp_uid": "i" * 65}]},
        {**event(1), "payments": [{"imp_uid": "imps_ok", "merchant_uid": "m" * 129}]},
        {**event(1), "payments": []},
        {**event(1), "payments": [{"imp_uid": "../etc/passwd"}]},
    ]
    for body in too_long:
        r = api.post("/v1/stockout-events", json=body, headers=auth(key))
        assert r.status_code == 422, (body.get("event_id"), r.status_code)
    assert jobs(clean_db) == 0


def test_list_paging_limit(api: TestClient, key: str) -> None:
    assert api.get("/v1/jobs?limit=500", headers=auth(key)).status_code == 200
    assert api.get("/v1/jobs?limit=501", headers=auth(key)).status_code == 422
    assert api.get("/v1/jobs?limit=0", headers=auth(key)).status_code == 422
