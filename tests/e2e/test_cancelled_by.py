"""Whose cancellation it was, end to end: a real worker against the sandbox.

A barcode cancelled at iamport before the event, whose first cancel of ours went unanswered,
was credited to us. The lookup's own cancellation time (here in milliseconds, as some PGs
write it) against our first call's start tells: upstream. A cancel of ours that the sandbox
applies while its answer is lost or late stays ours.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from devtools.sandbox.control import SandboxControl
from tests.e2e.test_worker import drain
from tests.support.factories import auth

pytestmark = pytest.mark.slow
_n = itertools.count()

# Every call for these payments: timestamps in milliseconds; the cancels unanswered (our
# timeout is 1 s): hung before applying, applied then hung, or applied 3 s after arriving.
MS = {"odd_timestamps_rate": 1.0, "odd_timestamps_style": "ms", "calls": ["cancel", "lookup"]}
UNANSWERED: dict[str, dict[str, Any]] = {
    "timeout_before": {"timeout_before_rate": 1.0, "hang_seconds": 2.5},
    "timeout_after": {"timeout_after_rate": 1.0, "hang_seconds": 2.5},
    "late_apply": {"late_apply_rate": 1.0, "late_apply_seconds": 3.0},
}


@pytest.fixture
def client(stack_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, key: str, uid: str) -> None:
    body = {"event_id": f"by-{next(_n)}", "sku": "SKU-1", "payments": [{"imp_uid": uid}]}
    r = client.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text


def outcome(db: str, uid: str) -> tuple[str, str | None, int]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, cancellation->>'cancelled_by', (SELECT count(*) FROM attempts a"
            " WHERE a.job_id = jobs.id AND a.call = 'cancel') FROM jobs WHERE imp_uid = %s",
            (uid,),
        ).fetchone()
    assert row is not None
    return str(row[0]), row[1], int(row[2])


def test_cancelled_before_the_event_whose_first_cancel_times_out_is_upstream(
    client: TestClient,
    key: str,
    sandbox: SandboxControl,
    stack_env: dict[str, str],
    worker: object,
) -> None:
    uid = f"imps_by_upstream_{next(_n)}"
    sandbox.create_payments(
        [{"imp_uid": uid, "status": "cancelled", "cancelled_ago": 120, "amount": 1000}]
    )
    sandbox.set_faults(imp_uids=[uid], **MS, **UNANSWERED["timeout_before"])
    post(client, key, uid)
    db = stack_env["DATABASE_URL"]
    drain(db)
    status, by, cancels = outcome(db, uid)
    assert (status, by) == ("cancelled", "upstream")
    assert cancels == 1  # the one that timed out; the lookup settled it
    answer = client.get(f"/v1/jobs?imp_uid={uid}", headers=auth(key)).json()["items"][0]
    assert answer["cancellation"]["cancelled_by"] == "upstream"


@pytest.mark.parametrize("fault", ["timeout_after", "late_apply"])
def test_a_cancel_of_ours_applied_while_its_answer_is_lost_is_service(
    client: TestClient,
    key: str,
    sandbox: SandboxControl,
    stack_env: dict[str, str],
    worker: object,
    fault: str,
) -> None:
    uid = f"imps_by_service_{fault}_{next(_n)}"
    sandbox.create_payments([{"imp_uid": uid, "status": "ready", "amount": 1000}])
    sandbox.set_faults(imp_uids=[uid], **MS, **UNANSWERED[fault])
    post(client, key, uid)
    db = stack_env["DATABASE_URL"]
    drain(db)
    status, by, cancels = outcome(db, uid)
    assert (status, by) == ("cancelled", "service")
    assert cancels == 1
    assert sandbox.tally(uid)["cancels_applied"] == 1
