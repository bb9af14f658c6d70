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


class Refund(_Record):
    """iamport's record of our refund: the payment's newest cancel_history entry."""

    pg_tid: str | None = None
    amount: float = 0
    cancelled_at: datetime | None = None
    reason: str | None = None
    receipt_url: str | None = None


class Cancellation(Refund):
    """iamport's record of the cancellation, and whether a call of ours may have done it."""

    cancelled_by: CancelledBy = "service"


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
    return Cancellation(**refund_of(payment).model_dump(), cancelled_by=by)


def exhausted(error: UpstreamError | None, max_attempts: int) -> UpstreamError:
    """The error of a job that ran out of attempts: the last upstream error, said plainly."""
    base = error or UpstreamError()
    last = f"; last upstream answer: {base.message}" if base.message else ""
    return base.model_copy(update={"message": f"gave up after {max_attempts} attempts{last}"})
