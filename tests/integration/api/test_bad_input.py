"""Bad input of every kind gets the right 4xx as problem details, and nothing is stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.support.factories import auth, event


def stored(db: str) -> tuple[int, int]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM jobs)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def valid() -> dict[str, Any]:
    return event(1, event_id="bad-input-1")


def with_(**changes: Any) -> bytes:
    body = valid()
    body.update(changes)
    return json.dumps(body).encode()


def payment(**p: Any) -> bytes:
    return with_(payments=[p])


CASES: list[tuple[str, bytes, int]] = [
    ("malformed json", b'{"event_id": "x",', 422),
    ("not an object", b"[1, 2, 3]", 422),
    ("empty body", b"", 422),
    ("string instead of list", with_(payments="imps_1"), 422),
    ("number event_id", with_(event_id=12), 422),
    ("empty event_id", with_(event_id=""), 422),
    ("event_id too long", with_(event_id="e" * 129), 422),
    ("event_id bad chars", with_(event_id="evt/../1"), 422),
    ("event_id space", with_(event_id="evt 1"), 422),
    ("missing sku", json.dumps({k: v for k, v in valid().items() if k != "sku"}).encode(), 422),
    ("sku too long", with_(sku="s" * 129), 422),
    ("reason too long", with_(reason="r" * 257), 422),
    ("empty reason", with_(reason=""), 422),
    ("bad occurred_at", with_(occurred_at="yesterday"), 422),
    ("naive occurred_at", with_(occurred_at="2026-11-25T06:00:00"), 422),
    ("no payments", with_(payments=[]), 422),
    ("too many payments", with_(payments=[{"imp_uid": f"imps_{i}"} for i in range(1001)]), 422),
    ("imp_uid missing", payment(merchant_uid="m"), 422),
    ("imp_uid empty", payment(imp_uid=""), 422),
    ("imp_uid too long", payment(imp_uid="i" * 65), 422),
    ("imp_uid bad chars", payment(imp_uid="imps_1;DROP TABLE jobs"), 422),
    ("imp_uid unicode", payment(imp_uid="imps_한글"), 422),
    ("imp_uid null", payment(imp_uid=None), 422),
    ("merchant_uid too long", payment(imp_uid="imps_1", merchant_uid="m" * 129), 422),
    ("nul in sku", with_(sku="SKU\u0000X"), 422),
    ("nul in reason", with_(reason="out\u0000of stock"), 422),
    ("nul in merchant_uid", payment(imp_uid="imps_1", merchant_uid="m\u0000"), 422),
    ("nul in event_id", with_(event_id="evt\u0000"), 422),
    ("unknown field", with_(extra_field=1), 422),
    ("invalid utf-8", b'{"event_id": "\xff\xfe", "sku": "s", "payments": [{"imp_uid": "a"}]}', 422),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, 422),
]


@pytest.mark.parametrize(("name", "body", "status"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    api: TestClient, key: str, service_env: dict[str, str], name: str, body: bytes, status: int
) -> None:
    r = api.post(
        "/v1/stockout-events",
        content=body,
        headers={**auth(key), "Content-Type": "application/json"},
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == status and problem["code"] == "validation_error"
    assert isinstance(problem["errors"], list) and problem["errors"]
    assert stored(service_env["DATABASE_URL"]) == (0, 0)


def test_oversized_body_is_413(api: TestClient, key: str, service_env: dict[str, str]) -> None:
    body = with_(reason="x" * 200, sku="s" * 100) + b" " * (1024 * 1024)
    r = api.post(
        "/v1/stockout-events",
        content=body,
        headers={**auth(key), "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    assert stored(service_env["DATABASE_URL"]) == (0, 0)


def test_oversized_chunked_body_is_413(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * (100 * 1024)

    r = api.post(
        "/v1/stockout-events",
        content=chunks(),
        headers={**auth(key), "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert stored(service_env["DATABASE_URL"]) == (0, 0)


def test_wrong_content_type_is_4xx(api: TestClient, key: str, service_env: dict[str, str]) -> None:
    r = api.post(
        "/v1/stockout-events", content=with_(), headers={**auth(key), "Content-Type": "text/plain"}
    )
    assert 400 <= r.status_code < 500
    assert stored(service_env["DATABASE_URL"]) == (0, 0)


@pytest.mark.parametrize(
    "path", ["/v1/jobs/not-a-uuid", "/v1/jobs/" + "9" * 500, "/v1/stockout-events/" + "e" * 300]
)
def test_bad_path_params_are_4xx(api: TestClient, key: str, path: str) -> None:
    r = api.get(path, headers=auth(key))
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"].startswith("application/problem+json")
