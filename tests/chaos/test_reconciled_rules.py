"""The chaos checker's reconciliation rules, and the admin strike's picks, without a stack."""

from __future__ import annotations

import random
from typing import Any

from tests.chaos.nemesis import ADMIN_ACTIONS, Nemesis
from tests.support.checker import Change, _where

PAID = {"status": "paid", "amount": 1000, "cancel_amount": 0}
REFUNDED = {"status": "cancelled", "amount": 1000, "cancel_amount": 1000}


def test_a_payment_refunded_in_the_admin_must_end_refunded_by_upstream() -> None:
    change = Change("u", "refund", "needs_refund")
    assert _where(change, REFUNDED, "refunded", None, {"refunded_by": "upstream"}) is None
    assert _where(change, REFUNDED, "needs_refund", None, None) is not None
    assert _where(change, REFUNDED, "refunded", None, {"refunded_by": "service"}) is not None


def test_a_payment_refunded_while_its_job_waits_ends_cancelled_or_refunded() -> None:
    change = Change("u", "refund", "waiting")
    assert _where(change, REFUNDED, "cancelled", None, None) is None
    assert _where(change, REFUNDED, "refunded", None, {"refunded_by": "upstream"}) is None
    assert _where(change, REFUNDED, "refunded", None, {"refunded_by": "service"}) is not None
    ours = {**REFUNDED, "refund_calls": 1}  # a refund of ours went unanswered: the credit rule
    assert _where(change, ours, "refunded", None, {"refunded_by": "service"}) is None
    assert _where(change, REFUNDED, "needs_refund", None, None) is not None


def test_a_failed_job_paid_since_needs_a_refund_or_was_refunded_by_us() -> None:
    change = Change("u", "pay", "failed")
    assert _where(change, PAID, "needs_refund", None, None) is None
    assert _where(change, PAID, "failed", None, None) is not None
    ours = {**REFUNDED, "refunds_applied": 1}
    assert _where(change, ours, "refunded", None, {"refunded_by": "service"}) is None
    assert _where(change, REFUNDED, "refunded", None, None) is not None  # not by a refund of ours


def test_a_cancelled_job_paid_since_keeps_its_status_with_one_drift_record() -> None:
    change = Change("u", "drift", "cancelled")
    drift = {"kind": "cancelled_but_paid", "seen_status": "paid"}
    assert _where(change, PAID, "cancelled", drift, None) is None
    assert _where(change, PAID, "cancelled", None, None) is not None
    assert _where(change, PAID, "needs_refund", drift, None) is not None


def test_the_general_rules_hold_for_jobs_nobody_changed() -> None:
    assert _where(None, REFUNDED, "needs_refund", None, None) is not None
    assert _where(None, PAID, "failed", None, None) is not None
    assert _where(None, PAID, "cancelled", None, None) is not None
    assert _where(None, PAID, "needs_refund", None, None) is None
    assert _where(None, None, "failed", None, None) is None


class FakeSandbox:
    """The sandbox's payments and admin route, enough for the strike."""

    def __init__(self, payments: dict[str, str]) -> None:
        self.status = payments
        self.done: list[tuple[str, str]] = []

    def payment(self, imp_uid: str) -> dict[str, Any]:
        import httpx

        if imp_uid not in self.status:
            request = httpx.Request("GET", "http://sandbox")
            raise httpx.HTTPStatusError("404", request=request, response=httpx.Response(404))
        return {"status": self.status[imp_uid]}

    def create_payment(self, **spec: Any) -> dict[str, Any]:
        self.status[spec["imp_uid"]] = "ready"
        return spec

    def admin(self, imp_uid: str, action: str) -> dict[str, Any]:
        self.done.append((imp_uid, action))
        return {}

    def set_status(self, imp_uid: str, status: str) -> dict[str, Any]:
        self.done.append((imp_uid, f"set {status}"))
        return {}


class FakeTarget:
    def kill_worker(self, rng: random.Random) -> str:
        return ""

    def stop_redis(self) -> None: ...
    def start_redis(self) -> None: ...
    def stop_postgres(self) -> None: ...
    def start_postgres(self) -> None: ...

    def admin_candidates(self) -> dict[str, list[tuple[str, str]]]:
        return {
            "needs_refund": [("nr-a", "a"), ("nr-b", "b")],
            "failed": [("f-a", "a"), ("unknown-a", "a"), ("f-b", "b")],
            "cancelled": [("c-a", "a"), ("c-b", "b")],
            "waiting": [("w-a", "a")],
        }

    def payment_spec(self, imp_uid: str, account: str) -> dict[str, Any]:
        return {"imp_uid": imp_uid}


def test_an_admin_strike_changes_each_kind_per_account_once_and_only_what_fits() -> None:
    sandbox = FakeSandbox(
        {
            "nr-a": "paid",
            "nr-b": "paid",
            "f-a": "failed",
            "f-b": "failed",
            "c-a": "cancelled",
            "c-b": "cancelled",
            "w-a": "paid",
        }
    )
    nemesis = Nemesis(1, FakeTarget(), "http://sandbox", 1.0)
    nemesis.admin(sandbox)  # type: ignore[arg-type]
    by = {(c.imp_uid, c.action) for c in nemesis.admin_changes}
    assert {("nr-a", "refund"), ("nr-b", "refund"), ("c-a", "drift"), ("c-b", "drift")} <= by
    assert ("w-a", "refund") in by  # a job not ended yet: its run meets the refund
    assert ("unknown-a", "cancel") in by  # created at the sandbox first, then voided
    assert {a for _, a in by} == set(ADMIN_ACTIONS)
    assert ("c-a", "set paid") in sandbox.done
    again = len(nemesis.admin_changes)
    nemesis.admin(sandbox)  # type: ignore[arg-type]
    uids = [c.imp_uid for c in nemesis.admin_changes]
    assert len(uids) == len(set(uids)) >= again  # never the same payment twice
