"""Reconciliation end to end: a real worker with beat running `reconcile` every second, the
sandbox changing payments behind the service's back, and the call log showing that the
reconciliation itself only looked payments up."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devtools.sandbox.control import SandboxControl
from tests.e2e.test_worker import drain
from tests.support.factories import auth
from tests.support.processes import start_worker, stop, wait_until

pytestmark = pytest.mark.slow
_n = itertools.count()


@pytest.fixture
def client(stack_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def reconciling(stack_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    env = {
        **stack_env,
        "RECONCILE_INTERVAL_SECONDS": "1",
        "RECONCILE_STALE_SECONDS": "0",
        # A job whose cancel went unanswered waits ten minutes: only a reconciliation
        # can make it look sooner.
        "CANCEL_RETRY_BASE_SECONDS": "600",
        "CANCEL_RETRY_MAX_SECONDS": "600",
    }
    proc = start_worker(env, tmp_path / "worker.log")
    yield proc
    stop(proc)


def post(client: TestClient, key: str, uid: str) -> str:
    body = {"event_id": f"rec-{next(_n)}", "sku": "SKU-1", "payments": [{"imp_uid": uid}]}
    r = client.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return str(r.json()["jobs"][0]["id"])


def job(client: TestClient, key: str, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}", headers=auth(key))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def becomes(client: TestClient, key: str, job_id: str, status: str, timeout: float = 30) -> None:
    wait_until(lambda: job(client, key, job_id)["status"] == status, timeout, f"{job_id} {status}")


def test_each_drift_case_is_found_with_lookups_only(
    client: TestClient,
    key: str,
    sandbox: SandboxControl,
    stack_env: dict[str, str],
    reconciling: object,
) -> None:
    db = stack_env["DATABASE_URL"]
    refunded_elsewhere = sandbox.create_payment(status="paid", pay_method="card")["imp_uid"]
    paid_after_failed = sandbox.create_payment(status="failed")["imp_uid"]
    cancelled_elsewhere = "imps_rec_not_yet_known"
    cancelled_then_paid = sandbox.create_payment()["imp_uid"]
    stale = sandbox.create_payment()["imp_uid"]
    sandbox.set_faults(error_rate=1.0, error_style="html", calls=["cancel"], imp_uids=[stale])

    ids = {
        "refunded": post(client, key, refunded_elsewhere),
        "paid": post(client, key, paid_after_failed),
        "cancelled": post(client, key, cancelled_elsewhere),
        "drift": post(client, key, cancelled_then_paid),
    }
    drain(db)
    stale_id = post(client, key, stale)
    becomes(client, key, stale_id, "retry_wait")
    sandbox.clear_faults()
    assert job(client, key, ids["refunded"])["status"] == "needs_refund"
    assert job(client, key, ids["paid"])["status"] == "failed"
    assert job(client, key, ids["cancelled"])["status"] == "failed"  # unknown at iamport
    assert job(client, key, ids["drift"])["status"] == "cancelled"
    mark = len(sandbox.calls())

    # Behind the service's back, with no notification.
    sandbox.admin(refunded_elsewhere, "refund")
    sandbox.admin(paid_after_failed, "pay")
    sandbox.create_payment(imp_uid=cancelled_elsewhere)
    sandbox.admin(cancelled_elsewhere, "cancel")
    sandbox.set_status(cancelled_then_paid, "paid")
    sandbox.admin(stale, "pay")

    becomes(client, key, ids["refunded"], "refunded")
    refunded = job(client, key, ids["refunded"])
    assert refunded["refund"]["refunded_by"] == "upstream"
    becomes(client, key, ids["paid"], "needs_refund")  # its own run, looking first
    becomes(client, key, ids["cancelled"], "cancelled")
    assert job(client, key, ids["cancelled"])["cancellation"]["cancelled_by"] == "upstream"
    wait_until(lambda: job(client, key, ids["drift"])["drift"] is not None, 30, "drift")
    drifted = job(client, key, ids["drift"])
    assert drifted["status"] == "cancelled"
    assert drifted["drift"]["kind"] == "cancelled_but_paid"
    assert drifted["drift"]["seen_status"] == "paid"
    becomes(client, key, stale_id, "needs_refund")  # minutes before its retry was due

    after = sandbox.calls(mark)
    assert after, "nothing was looked up"
    assert {e["call"] for e in after} <= {"token", "lookup"}
    assert any(e["call"] == "lookup" and e["imp_uid"] is None for e in after)  # batches
    for uid in (refunded_elsewhere, paid_after_failed, cancelled_then_paid, stale):
        assert sandbox.tally(uid)["mutating_calls"] <= 1  # the ones before the mark
    # A few more rounds: the drift is recorded once, nothing else moves.
    seen_at = drifted["drift"]["seen_at"]
    rounds = len([e for e in sandbox.calls(mark) if e["imp_uid"] is None])
    wait_until(
        lambda: len([e for e in sandbox.calls(mark) if e["imp_uid"] is None]) >= rounds + 2,
        20,
        "two more rounds",
    )
    assert job(client, key, ids["drift"])["drift"]["seen_at"] == seen_at
    assert {e["call"] for e in sandbox.calls(mark)} <= {"token", "lookup"}
