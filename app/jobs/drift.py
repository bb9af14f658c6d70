"""What a reconciliation makes of a job and its payment as the gateway shows it now: pure.

A reconciliation only looks; what it may do with what it saw is decided here, over plain
values, and is one of: nothing (`unchanged`); make a waiting job look first, as a notification
does; settle a finished job the way the payment proves, with no call (`refunded_upstream`,
`cancelled_upstream`); hand a failed job back to its run, which looks first and applies its
rules (`needs_refund`: paid since, so `on_paid` decides; `run_again`: cancelled since, but a
call of ours may have done it, so the run's credit rule decides); or record a `drift`: a
finished job that the payment contradicts, never silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.jobs.records import Drift, DriftKind
from app.jobs.status import WAITING, JobStatus
from app.upstream.payment import Payment

KNOWN_STATUSES = frozenset({"ready", "paid", "cancelled", "failed"})


class Move(StrEnum):
    UNCHANGED = "unchanged"
    LOOK_FIRST = "look_first"  # a waiting job: its next run looks the payment up first
    REFUNDED_UPSTREAM = "refunded_upstream"  # needs_refund -> refunded, refunded_by upstream
    CANCELLED_UPSTREAM = "cancelled_upstream"  # failed -> cancelled, cancelled_by upstream
    NEEDS_REFUND = "needs_refund"  # failed, paid since: back to its run (on_paid decides)
    RUN_AGAIN = "run_again"  # failed, cancelled since, a call of ours may have done it
    DRIFT = "drift"


@dataclass(frozen=True, slots=True)
class Seen:
    """What the verdict reads of a job."""

    status: JobStatus
    payment_status: str | None  # as the job's last lookup saw it
    uncertain_call: str | None  # a cancel or refund of ours whose answer never came
    in_window: bool  # finished within RECONCILE_WINDOW_HOURS (or --since)
    drift: Drift | None = None  # the drift recorded already, cleared or not


@dataclass(frozen=True, slots=True)
class Verdict:
    move: Move
    kind: DriftKind | None = None  # for DRIFT

    @property
    def label(self) -> str:
        """How a summary counts it: the move, or `drift:<kind>`."""
        return f"drift:{self.kind}" if self.move is Move.DRIFT else self.move.value


UNCHANGED = Verdict(Move.UNCHANGED)


def _balance(payment: Payment) -> float:
    return max(payment.amount - payment.cancel_amount, 0.0)


def _drift(job: Seen, kind: DriftKind, payment: Payment | None) -> Verdict:
    if not job.in_window:
        return UNCHANGED
    seen = None if payment is None else payment.status
    known = job.drift
    if known is not None and known.kind == kind and known.seen_status == seen:
        return UNCHANGED  # recorded already (and perhaps cleared by a person): not twice
    return Verdict(Move.DRIFT, kind)


def verdict(job: Seen, payment: Payment | None) -> Verdict:
    """What to do with `job`, given its payment as just looked up (None: not found)."""
    if payment is not None and payment.status not in KNOWN_STATUSES:
        return UNCHANGED  # a status we do not know says nothing we may act on
    if job.status in WAITING:
        return _waiting(job, payment)
    if job.status is JobStatus.NEEDS_REFUND:
        return _needs_refund(job, payment)
    if job.status is JobStatus.FAILED:
        return _failed(job, payment)
    if job.status is JobStatus.CANCELLED:
        return _cancelled(job, payment)
    return _refunded(job, payment)


def _waiting(job: Seen, payment: Payment | None) -> Verdict:
    # A changed payment (or one gone) is news, as a notification would have brought; the run
    # looks it up again and decides by its own rules.
    if payment is None or payment.status != (job.payment_status or "ready"):
        return Verdict(Move.LOOK_FIRST)
    return UNCHANGED


def _needs_refund(job: Seen, payment: Payment | None) -> Verdict:
    if payment is None:
        return _drift(job, "missing", payment)
    if payment.status == "cancelled" and _balance(payment) <= 0:
        return Verdict(Move.REFUNDED_UPSTREAM)
    if payment.status == "ready":
        return _drift(job, "needs_refund_but_ready", payment)
    if payment.status == "failed":
        return _drift(job, "needs_refund_but_failed", payment)
    return UNCHANGED  # still paid (in part, perhaps): still a person's to refund


def _failed(job: Seen, payment: Payment | None) -> Verdict:
    if payment is None or not job.in_window:
        return UNCHANGED
    if payment.status == "paid" and _balance(payment) > 0:
        return Verdict(Move.NEEDS_REFUND)
    if payment.status == "cancelled":
        # Ours or someone else's? Only the run's credit rule may say, when a call of ours was
        # never answered; else nothing of ours can have done it.
        return Verdict(Move.CANCELLED_UPSTREAM if job.uncertain_call is None else Move.RUN_AGAIN)
    return UNCHANGED


def _cancelled(job: Seen, payment: Payment | None) -> Verdict:
    if payment is None:
        return _drift(job, "missing", payment)
    if payment.status == "paid":
        return _drift(job, "cancelled_but_paid", payment)
    if payment.status == "ready":
        return _drift(job, "cancelled_but_ready", payment)
    return UNCHANGED


def _refunded(job: Seen, payment: Payment | None) -> Verdict:
    if payment is None:
        return _drift(job, "missing", payment)
    if payment.status == "paid" and _balance(payment) > 0:
        return _drift(job, "refunded_but_paid", payment)
    if payment.status == "ready":
        return _drift(job, "refunded_but_ready", payment)
    return UNCHANGED
