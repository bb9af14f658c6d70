"""The sandbox's unkind faults and its tallies, seen through the real client over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.upstream.iamport import (
    CallRecord,
    IamportClient,
    OutcomeUnknown,
    RateLimited,
    Refused,
    ServerError,
    Unauthorized,
    Unavailable,
)
from devtools.sandbox.control import SandboxControl
from tests.support.sandbox import IMP_KEY, IMP_SECRET


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class Records:
    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def before_send(self, call: str) -> None:
        pass

    def after_call(self, record: CallRecord) -> None:
        self.records.append(record)


@pytest.fixture
def make(sandbox_url: str) -> Iterator[Callable[..., IamportClient]]:
    clients: list[IamportClient] = []

    def make(timeout: float = 10) -> IamportClient:
        client = IamportClient(
            base_url=sandbox_url, imp_key=IMP_KEY, imp_secret=IMP_SECRET, timeout=timeout
        )
        client.tokens.get()  # the token first, so faults meet the calls under test
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def last_call(sandbox: SandboxControl, kind: str) -> dict[str, Any]:
    return dict(next(c for c in reversed(sandbox.calls()) if c["call"] == kind))


# -- virtual accounts and refunds --------------------------------------------------------------


def test_close_vbank_and_the_wrong_call_for_the_method(
    sandbox: SandboxControl, make: Callable[..., IamportClient]
) -> None:
    client = make()
    vbank, cvs = (p["imp_uid"] for p in sandbox.create_payments([{"pay_method": "vbank"}, {}]))
    with pytest.raises(Refused):
        client.void_barcode(vbank)  # a barcode cancel for a virtual account
    with pytest.raises(Refused):
        client.close_vbank(cvs)
    assert client.look_up(vbank).status == "ready" and client.look_up(cvs).status == "ready"
    closed = client.close_vbank(vbank)
    assert closed.status == "cancelled" and closed.pay_method == "vbank"
    with pytest.raises(Refused):
        client.close_vbank(vbank)
    stats = sandbox.stats()
    assert (stats["vbanks_closed"], stats["cvs_cancelled"]) == (1, 0)
    assert stats["calls"]["cancel_vbank"] == 3 and stats["calls"]["cancel"] == 1
    assert sandbox.tally(vbank)["calls_after_applied"] == 1


def test_refund_after_a_lookup_with_its_checksum(
    sandbox: SandboxControl, make: Callable[..., IamportClient]
) -> None:
    client = make()
    uid = sandbox.create_payment(amount=8000, status="paid", pay_method="card")["imp_uid"]
    sandbox.set_amounts(uid, cancel_amount=3000)
    seen = client.look_up(uid)
    with pytest.raises(Refused):
        client.refund(imp_uid=uid, amount=None, reason="stock", checksum=seen.amount)
    seen = client.look_up(uid)
    refunded = client.refund(imp_uid=uid, amount=None, reason="stock", checksum=seen.balance)
    assert refunded.status == "cancelled" and refunded.cancel_history[-1].amount == 5000
    with pytest.raises(Refused):
        client.refund(imp_uid=uid, amount=None, reason="again", checksum=0)  # no lookup first
    tally = sandbox.tally(uid)
    assert tally["refunds_applied"] == 1 and tally["refund_calls"] == 3
    assert tally["refunds_without_lookup"] == 1 and tally["calls_after_applied"] == 1
    vbank = sandbox.create_payment(pay_method="vbank", status="paid", amount=100)["imp_uid"]
    client.look_up(vbank)
    with pytest.raises(Refused):  # no refund account: a person has to finish it
        client.refund(imp_uid=vbank, amount=None, reason="stock", checksum=100)
    assert sandbox.payment(vbank)["status"] == "paid"
    assert sandbox.stats()["refunds_applied_max_per_imp_uid"] == 1


# -- faults after applying ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "error", "statuses"),
    [("json", ServerError, {500}), ("html", Unavailable, {502, 503, 504})],
)
def test_5xx_after_applying(
    sandbox: SandboxControl,
    make: Callable[..., IamportClient],
    style: str,
    error: type[Unavailable],
    statuses: set[int],
) -> None:
    client = make()
    uid = sandbox.create_payment()["imp_uid"]
    sandbox.set_faults(error_after_rate=1.0, error_style=style, calls=["cancel"])
    with pytest.raises(Unavailable) as info:
        client.void_barcode(uid)
    assert type(info.value) is error and info.value.http_status in statuses
    assert sandbox.payment(uid)["status"] == "cancelled"  # it applied all the same
    entry = last_call(sandbox, "cancel")
    assert (entry["applied"], entry["fault"]) == (True, "error_after")


def test_answer_lost_after_applying(
    sandbox: SandboxControl, make: Callable[..., IamportClient]
) -> None:
    client = make()
    uid = sandbox.create_payment(pay_method="vbank")["imp_uid"]
    sandbox.set_faults(drop_after_rate=1.0, calls=["cancel_vbank"])
    records = Records()
    with pytest.raises(OutcomeUnknown):
        client.close_vbank(uid, records)
    assert records.records[-1].outcome == "connection_error"
    assert sandbox.payment(uid)["status"] == "cancelled"
    entry = last_call(sandbox, "cancel_vbank")
    assert (entry["applied"], entry["fault"]) == (True, "drop_after")


def test_late_apply_after_the_caller_hung_up(
    sandbox: SandboxControl, make: Callable[..., IamportClient]
) -> None:
    client = make(timeout=0.3)
    uid = sandbox.create_payment()["imp_uid"]
    sandbox.set_faults(late_apply_rate=1.0, late_apply_seconds=1.2, calls=["cancel"])
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        client.void_barcode(uid)
    assert time.monotonic() - started < 1.0
    # Meanwhile a lookup still shows the payment unchanged: it proves nothing yet.
    assert client.look_up(uid).status == "ready"
    wait_until(lambda: sandbox.payment(uid)["status"] == "cancelled", timeout=5)
    entry = last_call(sandbox, "cancel")
    assert entry["status_code"] == 499 and entry["applied"] is True
    assert entry["ended_at"] is not None and entry["applied_at"] >= entry["ended_at"]
    assert entry["applied_at"] - entry["started_at"] >= 1.1
    stats = sandbox.stats()
    assert stats["late_applies_after_hangup"] == 1 and stats["working"] == 0
    assert stats["overlaps"] == 0


def test_a_second_call_while_the_first_is_worked_on_is_an_overlap(
    sandbox: SandboxControl, make: Callable[..., IamportClient]
) -> None:
    client = make(timeout=0.3)
    uid = sandbox.create_payment()["imp_uid"]
    sandbox.set_faults(late_apply_rate=1.0, late_apply_seconds=1.0, calls=["cancel"])
    with pytest.raises(OutcomeUnknown):
        client.void_barcode(uid)
    sandbox.set_faults(late_apply_rate=0)
    assert client.void_barcode(uid).status == "cancelled"  # too soon: the first is still running
    wait_until(lambda: sandbox.stats()["working"] == 0, timeout=5)
    tally = sandbox.tally(uid)
    assert tally["overlaps"] == 1 and tally["mutating_applied"] == 1
    assert sandbox.stats()["overlapping_cancels"] == 1
    assert last_call(sandbox, "cancel")["applied"] is True  # the second one applied
    assert sandbox.calls()[-2]["applied"] is False  # the first, refused once it got there


# -- slow, limited and odd answers ---------------------------------------------------------------


def test_a_trickling_answer_is_cut_off_at_the_deadline(
    sandbox: SandboxControl, make: Callable[..., IamportClient]
) -> None:
    client = make(timeout=1.0)
    uid = sandbox.create_payment()["imp_uid"]
    sandbox.set_faults(trickle_rate=1.0, trickle_interval_ms=300, calls=["cancel"])
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        client.void_barcode(uid)
    assert 0.95 <= time.monotonic() - started < 1.5
    assert sandbox.payment(uid)["status"] == "cancelled"
    wait_until(lambda: sandbox.stats()["in_flight"] == 0)
    entry = last_call(sandbox, "cancel")
    assert (entry["status_code"], entry["applied"], entry["fault"]) == (499, True, "trickle")


def test_a_quick_trickle_arrives_whole(
    sandbox: SandboxControl, make: Callable[..., IamportClient]
) -> None:
    client = make(timeout=5.0)
    uid = sandbox.create_payment()["imp_uid"]
    sandbox.set_faults(trickle_rate=1.0, trickle_interval_ms=5, trickle_bytes=100)
    assert client.look_up(uid).imp_uid == uid
    wait_until(lambda: sandbox.stats()["in_flight"] == 0)
    assert last_call(sandbox, "lookup")["status_code"] == 200


def test_429_with_an_http_date(sandbox: SandboxControl, make: Callable[..., IamportClient]) -> None:
    client = make()
    uid = sandbox.create_payment()["imp_uid"]
    sandbox.set_faults(rate_429=1.0, retry_after=3, retry_after_style="date", calls=["lookup"])
    with pytest.raises(RateLimited) as info:
        client.look_up(uid)
    assert 1.5 <= info.value.retry_after <= 4.0


def test_expired_tokens(sandbox: SandboxControl, make: Callable[..., IamportClient]) -> None:
    client = make()
    uid = sandbox.create_payment()["imp_uid"]
    sandbox.set_faults(token_expiry_rate=1.0, calls=["lookup"])
    records = Records()
    with pytest.raises(Unauthorized):
        client.look_up(uid, records)  # a fresh token, one repeat, then it gives up
    assert [(r.call, r.http_status) for r in records.records] == [
        ("lookup", 401),
        ("token", 200),
        ("lookup", 401),
    ]
    sandbox.clear_faults()
    assert client.look_up(uid).status == "ready"


def test_odd_payloads_parse(sandbox: SandboxControl, make: Callable[..., IamportClient]) -> None:
    client = make()
    uid = sandbox.create_payment(status="paid")["imp_uid"]
    paid_at = sandbox.payment(uid)["paid_at"]
    sandbox.set_faults(
        odd_timestamps_rate=1.0, unknown_status_rate=1.0, missing_history_rate=1.0, seed=4
    )
    seen = [client.look_up(uid) for _ in range(12)]
    assert {p.status for p in seen} == {"pending_review"}
    assert all(abs(p.paid_at - paid_at) < 1 and p.cancel_history == [] for p in seen)
    assert sandbox.payment(uid)["status"] == "paid"  # the truth never changed


def test_faults_for_one_imp_uid(
    sandbox: SandboxControl, make: Callable[..., IamportClient]
) -> None:
    client = make()
    hit, spared = (p["imp_uid"] for p in sandbox.create_payments([{}, {}]))
    sandbox.set_faults(error_rate=1.0, error_style="html", imp_uids=[hit])
    with pytest.raises(Unavailable):
        client.look_up(hit)
    assert client.void_barcode(spared).status == "cancelled"
    assert sandbox.payment(hit)["status"] == "ready"
