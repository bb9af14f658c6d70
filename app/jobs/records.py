"""The typed values a job keeps beside its status: what iamport did, and what went wrong.

The same models are the API's shapes (app/schemas.py) and what the store writes as JSON, so a
record is built in one place and read back as it was written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from app.upstream.payment import Payment

CancelledBy = Literal["service", "upstream"]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class UpstreamError(_Record):
    """The last upstream error a job met (iamport's words are kept, never acted on)."""

    http_status: int | None = None
    code: int | None = None
    message: str | None = None


class _Cancelled(_Record):
    """The payment's newest cancel_history entry, as the gateway recorded it."""

    pg_tid: str | None = None
    amount: float = 0
    cancelled_at: datetime | None = None
    reason: str | None = None
    receipt_url: str | None = None


class Refund(_Cancelled):
    """iamport's record of the refund, and whose it is: ours (`service`), or one made by
    someone else (iamport's admin, another system) that a reconciliation found (`upstream`)."""

    refunded_by: CancelledBy = "service"


class Cancellation(_Cancelled):
    """iamport's record of the cancellation, and whether a call of ours may have done it."""

    cancelled_by: CancelledBy = "service"


DriftKind = Literal[
    "cancelled_but_paid",  # we cancelled it, yet the customer paid
    "cancelled_but_ready",  # we cancelled it, yet it is open again
    "refunded_but_paid",  # we refunded it, yet money is still held
    "refunded_but_ready",
    "needs_refund_but_ready",  # held for a refund, yet no payment is held
    "needs_refund_but_failed",
    "missing",  # the gateway no longer knows the payment of a finished job
]


class Drift(_Record):
    """A finished job whose payment at the gateway contradicts it, as a reconciliation saw it;
    never a silent change: a person clears it with a note."""

    kind: DriftKind
    seen_status: str | None  # the payment's status at the gateway; None when it was not found
    seen_at: datetime
    cleared_by: str | None = None  # the key that cleared it
    cleared_at: datetime | None = None
    note: str | None = None


def _when(unix: float) -> datetime | None:
    if not unix or unix <= 0:
        return None
    try:
        return datetime.fromtimestamp(unix, UTC)
    except (OverflowError, OSError, ValueError):
        return None  # a time no calendar holds: say nothing rather than stop the job


def refund_of(payment: Payment) -> Refund:
    """The record of the payment's latest cancellation (newest cancel_history entry)."""
    last = payment.last_cancel()
    if last is None:
        return Refund(
            amount=payment.cancel_amount or payment.amount,
            cancelled_at=_when(payment.cancelled_at),
        )
    return Refund(
        pg_tid=last.pg_tid,
        amount=last.amount,
        cancelled_at=_when(last.cancelled_at),
        reason=last.reason,
        receipt_url=last.receipt_url,
    )


def cancellation_of(payment: Payment, by: CancelledBy) -> Cancellation:
    """The cancellation record from the payment's latest cancel_history entry."""
    return Cancellation(**refund_of(payment).model_dump(exclude={"refunded_by"}), cancelled_by=by)


def exhausted(error: UpstreamError | None, max_attempts: int) -> UpstreamError:
    """The error of a job that ran out of attempts: the last upstream error, said plainly."""
    base = error or UpstreamError()
    last = f"; last upstream answer: {base.message}" if base.message else ""
    return base.model_copy(update={"message": f"gave up after {max_attempts} attempts{last}"})
