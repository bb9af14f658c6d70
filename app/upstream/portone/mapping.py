"""PortOne V2's payment in iamport V1's shape, the one the decisions read. Pure.

The decisions know four statuses and two ways to stop a payment; V2's seven statuses and
its method objects are mapped onto them so that each V2 state asks for what it should:
- VIRTUAL_ACCOUNT_ISSUED is `ready` and `vbank`: an unpaid virtual account, to be closed;
- PAID, and PARTIAL_CANCELLED (its balance still refundable), are `paid`;
- CANCELLED is `cancelled`, FAILED is `failed`;
- READY and PENDING are `pending`: nothing to stop yet. Not `ready`, which would send a cancel
  for a payment that has nothing to cancel;
- any other status is kept as sent, which the decisions treat as unknown: look again later.
Only SUCCEEDED cancellations are history; a REQUESTED one sets `cancel_pending`, and a newest
one that FAILED `cancel_failed`.
"""

from __future__ import annotations

from typing import Any

from app.upstream.payment import Payment, unix_seconds
from app.upstream.portone.schemas import Cancellation, V2Payment

STATUSES = {
    "VIRTUAL_ACCOUNT_ISSUED": "ready",
    "PAID": "paid",
    "PARTIAL_CANCELLED": "paid",
    "CANCELLED": "cancelled",
    "FAILED": "failed",
    "READY": "pending",
    "PENDING": "pending",
}
METHODS = {
    "PaymentMethodVirtualAccount": "vbank",
    "PaymentMethodConvenienceStore": "cvs",
    "PaymentMethodCard": "card",
    "PaymentMethodTransfer": "trans",
    "PaymentMethodMobile": "phone",
    "PaymentMethodEasyPay": "easy_pay",
    "PaymentMethodGiftCertificate": "gift_certificate",
}
SUCCEEDED = "SUCCEEDED"
REQUESTED = "REQUESTED"
FAILED = "FAILED"


def payment_status(status: str) -> str:
    """V2's status as a Payment status (see the module's table)."""
    return STATUSES.get(status, status)


def pay_method(payment: V2Payment) -> str | None:
    """V1's pay_method for the payment's method object; an issued virtual account is vbank
    whatever its method object says (or lacks)."""
    if payment.status == "VIRTUAL_ACCOUNT_ISSUED":
        return "vbank"
    if payment.method is None or payment.method.type is None:
        return None
    return METHODS.get(payment.method.type)


def history_entry(cancellation: Cancellation) -> dict[str, Any]:
    """A SUCCEEDED cancellation as a cancel_history entry."""
    return {
        "pg_tid": cancellation.pgCancellationId,
        "amount": cancellation.totalAmount,
        # A success without its own time is dated by its request: never later than the
        # truth, which is what telling our cancellation from someone else's needs.
        "cancelled_at": cancellation.cancelledAt or cancellation.requestedAt,
        "reason": cancellation.reason,
        "receipt_url": cancellation.receiptUrl,
        "cancellation_id": cancellation.id,
    }


def cancel_amount(payment: V2Payment) -> float:
    """What has been cancelled: PortOne's total, else the sum of the succeeded cancellations."""
    if payment.amount.cancelled is not None:
        return payment.amount.cancelled
    return sum(c.totalAmount for c in payment.cancellations if c.status == SUCCEEDED)


def newest_failed(payment: V2Payment) -> bool:
    """Whether the payment's newest cancellation (by its request time, last in the list on
    ties or without one) failed."""
    if not payment.cancellations:
        return False
    ordered = sorted(
        enumerate(payment.cancellations), key=lambda p: (unix_seconds(p[1].requestedAt), p[0])
    )
    return ordered[-1][1].status == FAILED


def to_payment(payment: V2Payment) -> Payment:
    """The V2 payment as the Payment the decisions read; `imp_uid` carries the paymentId."""
    succeeded = [c for c in payment.cancellations if c.status == SUCCEEDED]
    return Payment.model_validate(
        {
            "imp_uid": payment.id,
            "amount": payment.amount.total,
            "cancel_amount": cancel_amount(payment),
            "currency": payment.currency,
            "status": payment_status(payment.status),
            "name": payment.orderName,
            "pay_method": pay_method(payment),
            "pg_provider": payment.channel.pgProvider if payment.channel else None,
            "pg_tid": payment.pgTxId,
            "receipt_url": payment.receiptUrl,
            "fail_reason": payment.failure.reason if payment.failure else None,
            "cancel_reason": succeeded[-1].reason if succeeded else None,
            "started_at": payment.requestedAt,
            "paid_at": payment.paidAt,
            "failed_at": payment.failedAt,
            "cancelled_at": payment.cancelledAt,
            "cancel_history": [history_entry(c) for c in succeeded],
            "cancel_pending": any(c.status == REQUESTED for c in payment.cancellations),
            "cancel_failed": newest_failed(payment),
        }
    )
