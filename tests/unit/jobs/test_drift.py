"""The reconciliation's rules: every job status against every payment status, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.jobs.drift import Move, Seen, Verdict, verdict
from app.jobs.records import Drift
from app.jobs.status import WAITING, JobStatus
from app.upstream.payment import Payment

S = JobStatus


def pay(status: str, **over: Any) -> Payment:
    amount = over.pop("amount", 1000)
    cancel = over.pop("cancel_amount", amount if status == "cancelled" else 0)
    return Payment(imp_uid="imp_1", status=status, amount=amount, cancel_amount=cancel, **over)


def seen(status: JobStatus, **over: Any) -> Seen:
    values: dict[str, Any] = {
        "payment_status": None,
        "uncertain_call": None,
        "in_window": True,
        "drift": None,
    }
    values.update(over)
    return Seen(status=status, **values)


def drift(kind: str) -> Verdict:
    return Verdict(Move.DRIFT, kind)  # type: ignore[arg-type]


UNCHANGED = Verdict(Move.UNCHANGED)

# (job status, payment status or None for not found) -> verdict, for a job within the window
TABLE = [
    (S.NEEDS_REFUND, "cancelled", Verdict(Move.REFUNDED_UPSTREAM)),
    (S.NEEDS_REFUND, "paid", UNCHANGED),
    (S.NEEDS_REFUND, "ready", drift("needs_refund_but_ready")),
    (S.NEEDS_REFUND, "failed", drift("needs_refund_but_failed")),
    (S.NEEDS_REFUND, None, drift("missing")),
    (S.FAILED, "paid", Verdict(Move.NEEDS_REFUND)),
    (S.FAILED, "cancelled", Verdict(Move.CANCELLED_UPSTREAM)),
    (S.FAILED, "ready", UNCHANGED),
    (S.FAILED, "failed", UNCHANGED),
    (S.FAILED, None, UNCHANGED),
    (S.CANCELLED, "paid", drift("cancelled_but_paid")),
    (S.CANCELLED, "ready", drift("cancelled_but_ready")),
    (S.CANCELLED, "cancelled", UNCHANGED),
    (S.CANCELLED, "failed", UNCHANGED),
    (S.CANCELLED, None, drift("missing")),
    (S.REFUNDED, "paid", drift("refunded_but_paid")),
    (S.REFUNDED, "ready", drift("refunded_but_ready")),
    (S.REFUNDED, "cancelled", UNCHANGED),
    (S.REFUNDED, "failed", UNCHANGED),
    (S.REFUNDED, None, drift("missing")),
]


@pytest.mark.parametrize(("job", "payment", "expected"), TABLE)
def test_finished_jobs(job: JobStatus, payment: str | None, expected: Verdict) -> None:
    assert verdict(seen(job), None if payment is None else pay(payment)) == expected


def test_the_table_covers_every_finished_status_and_payment_status() -> None:
    covered = {(j, p) for j, p, _ in TABLE}
    finished = set(JobStatus) - WAITING
    assert covered == {
        (j, p) for j in finished for p in ("ready", "paid", "cancelled", "failed", None)
    }


@pytest.mark.parametrize("job", sorted(WAITING))
@pytest.mark.parametrize(
    ("last_seen", "payment", "move"),
    [
        (None, "ready", Move.UNCHANGED),
        ("ready", "ready", Move.UNCHANGED),
        (None, "paid", Move.LOOK_FIRST),
        ("ready", "cancelled", Move.LOOK_FIRST),
        ("ready", "failed", Move.LOOK_FIRST),
        ("paid", "paid", Move.UNCHANGED),
        ("ready", None, Move.LOOK_FIRST),
    ],
)
def test_waiting_jobs_look_first_when_the_payment_changed(
    job: JobStatus, last_seen: str | None, payment: str | None, move: Move
) -> None:
    found = None if payment is None else pay(payment)
    assert verdict(seen(job, payment_status=last_seen), found).move is move


@pytest.mark.parametrize("job", list(JobStatus))
def test_an_unknown_payment_status_changes_nothing(job: JobStatus) -> None:
    assert verdict(seen(job), pay("pending_review")) == UNCHANGED


def test_a_failed_job_whose_call_may_have_cancelled_it_goes_back_to_its_run() -> None:
    job = seen(S.FAILED, uncertain_call="cancel")
    assert verdict(job, pay("cancelled")).move is Move.RUN_AGAIN
    assert verdict(job, pay("paid")).move is Move.NEEDS_REFUND


def test_partly_refunded_elsewhere_is_not_refunded() -> None:
    # Still paid with a balance: the person's refund decision stands.
    assert verdict(seen(S.NEEDS_REFUND), pay("paid", cancel_amount=300)) == UNCHANGED
    # A refunded job whose payment still shows paid but nothing left to give back: no drift.
    assert verdict(seen(S.REFUNDED), pay("paid", cancel_amount=1000)) == UNCHANGED
    # A failed job paid and already refunded in full elsewhere: nothing to hold.
    assert verdict(seen(S.FAILED), pay("paid", cancel_amount=1000)) == UNCHANGED


def test_outside_the_window_only_the_refund_is_settled() -> None:
    old = {"in_window": False}
    assert verdict(seen(S.NEEDS_REFUND, **old), pay("cancelled")).move is Move.REFUNDED_UPSTREAM
    assert verdict(seen(S.NEEDS_REFUND, **old), pay("ready")) == UNCHANGED
    assert verdict(seen(S.CANCELLED, **old), pay("paid")) == UNCHANGED
    assert verdict(seen(S.FAILED, **old), pay("paid")) == UNCHANGED


def test_a_drift_is_recorded_once_and_a_new_one_again() -> None:
    at = datetime(2026, 12, 7, tzinfo=UTC)
    known = Drift(kind="cancelled_but_paid", seen_status="paid", seen_at=at)
    assert verdict(seen(S.CANCELLED, drift=known), pay("paid")) == UNCHANGED
    cleared = known.model_copy(update={"cleared_by": "ops", "cleared_at": at, "note": "ok"})
    assert verdict(seen(S.CANCELLED, drift=cleared), pay("paid")) == UNCHANGED
    assert verdict(seen(S.CANCELLED, drift=known), pay("ready")) == drift("cancelled_but_ready")
    gone = Drift(kind="missing", seen_status=None, seen_at=at)
    assert verdict(seen(S.CANCELLED, drift=gone), None) == UNCHANGED


def test_labels() -> None:
    assert drift("missing").label == "drift:missing"
    assert Verdict(Move.LOOK_FIRST).label == "look_first"
