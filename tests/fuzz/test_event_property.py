"""A property over the event schema: no input gives a 5xx, and rejected input stores nothing.

Bodies are built from strategies that reach the corners the schema must close: lone
surrogates, NUL and control characters, times beyond what Postgres or UTC can hold, huge and
negative numbers, wrong types, unknown fields, and every field missing in turn.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.factories import auth

ODD_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["\ud800", "a\udfffb", "\x00", "x\x1fy", "\U0001d518\U0001d52b", "", " ", "A" * 300]
    ),
)
ODD_TIMES = st.sampled_from(
    [
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "2026-11-25T06:00:00Z",
        "2026-11-25T06:00:00",
        "2026-13-45T99:99:99Z",
        "1e309",
        "",
    ]
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ODD_TEXT)
PAYMENT = st.fixed_dictionaries(
    {"imp_uid": st.one_of(ODD_TEXT, st.just("imps_ok_1"), SCALARS)},
    optional={
        "merchant_uid": st.one_of(ODD_TEXT, SCALARS),
        "pay_method": st.one_of(st.sampled_from(["cvs", "vbank", "card", "VBANK"]), SCALARS),
        "extra": SCALARS,
    },
)
EVENT = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(ODD_TEXT, st.just("ev-prop-1"), SCALARS),
        "sku": st.one_of(ODD_TEXT, SCALARS),
        "reason": st.one_of(ODD_TEXT, SCALARS),
        "occurred_at": st.one_of(ODD_TIMES, SCALARS),
        "payments": st.one_of(st.lists(PAYMENT, max_size=3), SCALARS),
        "on_paid": st.one_of(st.sampled_from(["hold", "refund", "later"]), SCALARS),
        "unknown": SCALARS,
    },
)


def stored(db: str) -> tuple[int, int]:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM jobs)")
        got = row.fetchone()
    assert got is not None
    return int(got[0]), int(got[1])


@pytest.mark.slow
def test_no_event_body_gives_a_5xx_and_rejects_store_nothing(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    db = service_env["DATABASE_URL"]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=EVENT)
    def check(body: dict[str, Any]) -> None:
        before = stored(db)
        raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
        r = api.post(
            "/v1/stockout-events",
            content=raw,
            headers={**auth(key), "content-type": "application/json"},
        )
        assert r.status_code < 500, (body, r.text)
        if r.status_code not in (200, 202):
            assert r.headers["content-type"].startswith("application/problem+json")
            assert stored(db) == before, body

    check()


@pytest.mark.parametrize(
    "path",
    ["/v1/stockout-events/%00", "/v1/jobs/%00", "/v1/jobs?imp_uid=%00", "/v1/jobs?sku=a%00b"],
)
def test_nul_and_odd_bytes_in_paths_and_queries_are_4xx(
    api: TestClient, key: str, path: str
) -> None:
    r = api.get(path, headers=auth(key))
    assert 400 <= r.status_code < 500, r.text
