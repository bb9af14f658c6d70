"""Virtual accounts and refunds end to end: a real worker process, Redis, Postgres, sandbox."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devtools.sandbox.control import SandboxControl
from tests.e2e.test_worker import assert_clean, drain
from tests.support.checker import check
from tests.support.factories import auth

pytestmark = pytest.mark.slow
_n = itertools.count()


@pytest.fixture
def client(stack_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def payments(sandbox: SandboxControl, n: int, **spec: Any) -> list[str]:
    batch = next(_n)
    uids = [f"imps_rv{batch}_{i}" for i in range(n)]
    sandbox.create_payments([{"imp_uid": u, "amount": 1000, **spec} for u in uids])
    return uids


def post(
    client: TestClient, key: str, uids: list[str], hint: str = "cvs", **extra: Any
) -> list[dict[str, Any]]:
    body = {
        "event_id": f"rv-{next(_n)}",
        "sku": "SKU-1",
        "payments": [{"imp_uid": u, "pay_method": hint} for u in uids],
        **extra,
    }
    r = client.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return r.json()["jobs"]  # type: ignore[no-any-return]


def jobs(client: TestClient, key: str, uids: list[str]) -> list[dict[str, Any]]:
    out = []
    for u in uids:
        items = client.get("/v1/jobs", params={"imp_uid": u}, headers=auth(key)).json()["items"]
        out.extend(items)
    return out


def test_virtual_accounts_are_closed_by_vbanks_even_under_a_wrong_hint(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], worker: object
) -> None:
    right = payments(sandbox, 4, pay_method="vbank")
    wrong = payments(sandbox, 4, pay_method="vbank")
    post(client, key, right, hint="vbank")
    post(client, key, wrong, hint="cvs")
    drain(stack_env["DATABASE_URL"])
    assert_clean(check(stack_env["DATABASE_URL"], sandbox))
    got = jobs(client, key, right + wrong)
    assert {j["status"] for j in got} == {"cancelled"}
    assert {j["pay_method"] for j in got} == {"vbank"}  # iamport's record decided
    stats = sandbox.stats()
    assert stats["vbanks_closed"] == 8 and stats["cvs_cancelled"] == 0
    for u in wrong:  # the wrong hint cost one refused call and a lookup
        assert sandbox.tally(u)["mutating_calls"] == 2


def test_paid_payments_are_refunded_under_on_paid_refund_and_held_otherwise(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], worker: object
) -> None:
    refund = payments(sandbox, 3, status="paid", pay_method="card")
    hold = payments(sandbox, 3, status="paid", pay_method="card")
    post(client, key, refund, on_paid="refund")
    post(client, key, hold)
    drain(stack_env["DATABASE_URL"])
    report = check(stack_env["DATABASE_URL"], sandbox)
    assert_clean(report)
    assert report.refunds_max == 1 and report.refunds_without_lookup == 0
    assert report.refunds_unasked == []
    by_uid = {j["imp_uid"]: j for j in jobs(client, key, refund + hold)}
    for u in refund:
        assert by_uid[u]["status"] == "refunded" and by_uid[u]["on_paid"] == "refund"
        assert by_uid[u]["refund"]["amount"] == 1000 and by_uid[u]["cancellation"] is None
    for u in hold:
        assert by_uid[u]["status"] == "needs_refund"
        assert sandbox.tally(u)["refund_calls"] == 0

    # A person decides: the held payments are refunded, once, and nothing else.
    for u in hold:
        r = client.post(f"/v1/jobs/{by_uid[u]['id']}/refund", headers=auth(key))
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        again = client.post(f"/v1/jobs/{by_uid[u]['id']}/refund", headers=auth(key))
        assert again.status_code == 409 and again.json()["code"] == "not_refundable"
    drain(stack_env["DATABASE_URL"])
    for j in jobs(client, key, hold):
        assert j["status"] == "refunded"
        attempts = client.get(f"/v1/jobs/{j['id']}/attempts", headers=auth(key)).json()["items"]
        calls = [a["call"] for a in attempts if a["call"] != "token"]
        assert calls[-2:] == ["lookup", "refund"]  # the checksum came from that lookup
    report = check(stack_env["DATABASE_URL"], sandbox)
    assert_clean(report)
    assert report.refunds_max == 1 and report.refunds_unasked == []


def test_a_refund_iamport_will_not_do_ends_needs_refund_with_its_refusal(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], worker: object
) -> None:
    uids = payments(sandbox, 2, status="paid", pay_method="vbank")
    post(client, key, uids, hint="vbank", on_paid="refund")
    drain(stack_env["DATABASE_URL"])
    assert_clean(check(stack_env["DATABASE_URL"], sandbox))
    for j in jobs(client, key, uids):
        assert j["status"] == "needs_refund" and j["payment_status"] == "paid"
        assert j["error"] is not None  # iamport's refusal, for the person who finishes it


def test_refunds_under_faults_never_double(
    client: TestClient, key: str, sandbox: SandboxControl, stack_env: dict[str, str], worker: object
) -> None:
    uids = payments(sandbox, 12, status="paid", pay_method="card")
    sandbox.set_faults(
        seed=11,
        calls=["refund", "lookup"],
        error_rate=0.2,
        error_after_rate=0.2,
        drop_after_rate=0.15,
        late_apply_rate=0.2,
        late_apply_seconds=2.0,
        rate_429=0.1,
    )
    post(client, key, uids, on_paid="refund")
    drain(stack_env["DATABASE_URL"], timeout=120)
    sandbox.clear_faults()
    report = check(stack_env["DATABASE_URL"], sandbox)
    assert_clean(report)
    assert report.refunds_max == 1 and report.refunds_without_lookup == 0
    assert {j["status"] for j in jobs(client, key, uids)} <= {"refunded", "needs_refund"}
