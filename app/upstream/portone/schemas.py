"""PortOne V2's answers, parsed leniently: unknown fields ignored, optional ones optional.

Field names are PortOne's own (camelCase), so a model reads like the API's reference. Times
stay as sent (RFC 3339 strings); the mapping to a Payment turns them into UNIX seconds.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from app.upstream.payment import Lenient


class Amount(Lenient):
    total: float = 0
    cancelled: float | None = None

    @field_validator("total", mode="before")
    @classmethod
    def _zero_if_null(cls, value: Any) -> Any:
        return 0 if value is None else value


class Method(Lenient):
    type: str | None = None


class Channel(Lenient):
    pgProvider: str | None = None


class Failure(Lenient):
    reason: str | None = None
    pgCode: str | None = None
    pgMessage: str | None = None


class Cancellation(Lenient):
    """One entry of a payment's `cancellations`, or the `cancellation` a cancel answers."""

    status: str  # REQUESTED, SUCCEEDED or FAILED
    id: str | None = None
    pgCancellationId: str | None = None
    totalAmount: float = 0
    reason: str | None = None
    requestedAt: str | None = None
    cancelledAt: str | None = None
    receiptUrl: str | None = None

    @field_validator("totalAmount", mode="before")
    @classmethod
    def _zero_if_null(cls, value: Any) -> Any:
        return 0 if value is None else value


class V2Payment(Lenient):
    """GET /payments/{paymentId}: every status's fields in one lenient model."""

    status: str
    id: str
    transactionId: str | None = None
    storeId: str | None = None
    method: Method | None = None
    channel: Channel | None = None
    orderName: str | None = None
    amount: Amount = Amount()
    currency: str | None = None
    requestedAt: str | None = None
    paidAt: str | None = None
    failedAt: str | None = None
    cancelledAt: str | None = None
    pgTxId: str | None = None
    receiptUrl: str | None = None
    failure: Failure | None = None
    cancellations: list[Cancellation] = []

    @field_validator("amount", mode="before")
    @classmethod
    def _empty_if_null(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("cancellations", mode="before")
    @classmethod
    def _no_null_list(cls, value: Any) -> Any:
        return [] if value is None else value


class CancelAnswer(Lenient):
    """POST /payments/{paymentId}/cancel: the cancellation it made, which may not be done."""

    cancellation: Cancellation


class CloseAnswer(Lenient):
    """POST /payments/{paymentId}/virtual-account/close."""

    closedAt: str | None = None
