"""The sandbox's batch lookup (`GET /payments?imp_uid[]=…`) and its admin changes: what a
reconciliation looks up, and what changes behind the service's back."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devtools.sandbox.control import SandboxControl
from devtools.sandbox.merchants import Caller, Merchant
from devtools.sandbox.state import BATCH_LOOKUP_MAX, Sandbox
from tests.support.sandbox import IMP_KEY, IMP_SECRET

# -- the rules, without HTTP ------------------------------------------------------------------


@pytest.fixture
def sb() -> Sandbox:
    return Sandbox(seed=3, clock=lambda: 1_800_000_000.0)


def made(sb: Sandbox, n: int, **spec: object) -> list[str]:
    return [sb.add_payment({"amount": 1000, **spec}).imp_uid for _ in range(n)]


def test_batch_lookup_all_found_in_order(sb: Sandbox) -> None:
    ids = made(sb, 3)
    status, body = sb.lookup_many(list(reversed(ids)))
    assert status == 200 and body["code"] == 0
    assert [p["imp_uid"] for p in body["response"]] == list(reversed(ids))
    assert all(sb.tally(i).lookups == 1 for i in ids)


def test_batch_lookup_207_with_the_found_ones_and_404_when_none(sb: Sandbox) -> None:
    ids = made(sb, 2)
    status, body = sb.lookup_many([ids[0], "imp_nope", ids[1]])
    assert status == 207
    assert [p["imp_uid"] for p in body["response"]] == ids
    status, body = sb.lookup_many(["imp_nope", "imp_nada"])
    assert status == 404 and body["response"] is None and body["code"] != 0


def test_batch_lookup_bounds(sb: Sandbox) -> None:
    assert sb.lookup_many([])[0] == 400
    ids = made(sb, BATCH_LOOKUP_MAX + 1)
    assert sb.lookup_many(ids[:BATCH_LOOKUP_MAX])[0] == 200
    status, body = sb.lookup_many(ids)
    assert status == 400 and body["response"] is None


def test_batch_lookup_shows_only_the_callers_payments(sb: Sandbox) -> None:
    sb.add_merchants([Merchant("other_key", "other_secret")])
    mine = made(sb, 1)
    theirs = made(sb, 1, imp_key="other_key")
    status, body = sb.lookup_many([*mine, *theirs])
    assert status == 207 and [p["imp_uid"] for p in body["response"]] == mine
    status, body = sb.lookup_many([*mine, *theirs], Caller("other_key", None))
    assert status == 207 and [p["imp_uid"] for p in body["response"]] == theirs


def test_admin_refund_pay_and_cancel(sb: Sandbox) -> None:
    paid, ready, failed = made(sb, 1, status="paid"), made(sb, 1), made(sb, 1, status="failed")
    refunded = sb.admin(paid[0], "refund")
    assert refunded.status == "cancelled" and refunded.cancel_amount == refunded.amount
    assert refunded.cancel_history[-1]["reason"].endswith("(refunded in admin)")
    assert sb.admin(failed[0], "pay").status == "paid"
    cancelled = sb.admin(ready[0], "cancel")
    assert cancelled.status == "cancelled" and len(cancelled.cancel_history) == 1
    # Nothing the service did: no call logged, no mutating call counted.
    assert sb.log == [] and sb.totals.mutating_calls == 0


def test_admin_refuses_what_does_not_fit(sb: Sandbox) -> None:
    ready = made(sb, 1)[0]
    with pytest.raises(ValueError, match="cannot refund"):
        sb.admin(ready, "refund")
    with pytest.raises(ValueError, match="action must be"):
        sb.admin(ready, "explode")
    with pytest.raises(KeyError):
        sb.admin("imp_nope", "pay")


# -- over HTTP --------------------------------------------------------------------------------


@pytest.fixture
def http(sandbox_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox_url, timeout=10) as client:
        token = client.post(
            "/users/getToken", json={"imp_key": IMP_KEY, "imp_secret": IMP_SECRET}
        ).json()["response"]["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def test_batch_lookup_over_http(sandbox: SandboxControl, http: httpx.Client) -> None:
    ids = [p["imp_uid"] for p in sandbox.create_payments([{"amount": 500}] * 2)]
    answer = http.get("/payments", params=[("imp_uid[]", i) for i in ids])
    assert answer.status_code == 200
    assert [p["imp_uid"] for p in answer.json()["response"]] == ids
    partial = http.get("/payments", params=[("imp_uid[]", ids[0]), ("imp_uid[]", "imp_x")])
    assert partial.status_code == 207 and len(partial.json()["response"]) == 1
    assert http.get("/payments", params={"imp_uid[]": "imp_x"}).status_code == 404
    assert http.get("/payments").status_code == 400
    unauthed = httpx.get(f"{sandbox.base_url}/payments", params={"imp_uid[]": ids[0]})
    assert unauthed.status_code == 401
    log = sandbox.calls()
    assert {e["call"] for e in log if e["call"] != "token"} == {"lookup"}
    assert sandbox.tally(ids[0])["lookups"] == 2


def test_batch_lookup_gets_the_faults(sandbox: SandboxControl, http: httpx.Client) -> None:
    ids = [p["imp_uid"] for p in sandbox.create_payments([{"amount": 500}] * 3)]
    params = [("imp_uid[]", i) for i in ids]
    sandbox.set_faults(rate_429=1.0, calls=["lookup"])
    assert http.get("/payments", params=params).status_code == 429
    sandbox.set_faults(rate_429=0.0, unknown_status_rate=1.0, odd_timestamps_rate=1.0)
    odd = http.get("/payments", params=params).json()["response"]
    assert {p["status"] for p in odd} == {"pending_review"}
    sandbox.set_faults(unknown_status_rate=0.0, odd_timestamps_rate=0.0, error_rate=1.0)
    assert http.get("/payments", params=params).status_code >= 500


def test_admin_over_http_sends_no_notification(sandbox: SandboxControl) -> None:
    payment = sandbox.create_payment(amount=700, status="paid", notice_url="http://127.0.0.1:9/x")
    truth = sandbox.admin(payment["imp_uid"], "refund")
    assert truth["status"] == "cancelled" and truth["cancel_amount"] == 700
    assert truth["refunds_applied"] == 0 and truth["mutating_calls"] == 0
    with pytest.raises(httpx.HTTPStatusError) as refused:
        sandbox.admin(payment["imp_uid"], "cancel")
    assert refused.value.response.status_code == 409
    assert sandbox.calls() == []
