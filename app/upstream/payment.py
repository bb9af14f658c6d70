"""A payment as the gateway reports it: the typed answer of every upstream call.

Lenient pydantic models (unknown fields ignored, optional ones optional) in iamport's V1 shape,
which is what the decisions read; another gateway's client maps its answers into it.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

# "pending": created at the gateway but neither issued nor paid yet (PortOne V2's READY and
# PENDING), so there is nothing to stop yet; iamport V1 never reports it.
PaymentStatus = Literal["ready", "paid", "cancelled", "failed", "pending"]

# As seconds that is the year 5138; as milliseconds, 1973: a larger value is in a finer unit
# (milliseconds, microseconds, nanoseconds), each a thousand times the last.
MILLISECONDS_ABOVE = 10**11
KST = timezone(timedelta(hours=9))  # iamport's clock and console speak Korean time


def _zero_if_none(value: Any) -> Any:
    return 0 if value is None else value


def unix_seconds(value: Any) -> float:
    """A timestamp as float UNIX seconds, from whatever iamport or a PG put there; 0 if none.

    Accepts int or float seconds, milliseconds, microseconds or nanoseconds (told apart by
    magnitude: above 10**11 a value is a thousand times finer), numeric strings and ISO-8601
    strings (without an offset: Korean time). What cannot be read becomes 0 ("not known")
    rather than failing the answer; a decision that reads a time treats 0 as unknown.
    """
    if value is None or isinstance(value, bool):
        return 0.0
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0.0
        try:
            value = float(text)
        except ValueError:
            return _iso_seconds(text)
    if not isinstance(value, int | float):
        return 0.0
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        return 0.0
    for _ in ("ms", "us", "ns"):
        if seconds <= MILLISECONDS_ABOVE:
            return seconds
        seconds /= 1000
    # Finer than nanoseconds is no unit anyone uses: unknown, not a guess of long ago.
    return seconds if seconds <= MILLISECONDS_ABOVE else 0.0


def _iso_seconds(text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=KST)
    return max(when.timestamp(), 0.0)


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CancelHistoryEntry(Lenient):
    """One cancellation of a payment; the newest entry describes the latest one."""

    pg_tid: str | None = None
    amount: float = 0
    cancelled_at: float = 0
    reason: str | None = None
    receipt_url: str | None = None
    cancellation_id: str | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _zero_if_null(cls, value: Any) -> Any:
        return _zero_if_none(value)

    @field_validator("cancelled_at", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> float:
        return unix_seconds(value)


class Payment(Lenient):
    """A payment as iamport reports it. `status` stays a str; compare with PaymentStatus values.

    Timestamps are float UNIX seconds (0 when absent); `pay_method` is kept as sent ("cvs",
    "vbank", "card", ...), and `status` too, even a value outside PaymentStatus.
    """

    imp_uid: str
    merchant_uid: str | None = None
    amount: float = 0
    cancel_amount: float = 0
    currency: str | None = None
    status: str
    name: str | None = None
    pay_method: str | None = None
    pg_provider: str | None = None
    pg_tid: str | None = None
    receipt_url: str | None = None
    fail_reason: str | None = None
    cancel_reason: str | None = None
    started_at: float = 0
    paid_at: float = 0
    failed_at: float = 0
    cancelled_at: float = 0
    cancel_history: list[CancelHistoryEntry] = []
    # A cancellation the gateway accepted but has not finished (PortOne V2's REQUESTED): it is
    # in neither cancel_history nor cancel_amount yet, and may still succeed or fail.
    cancel_pending: bool = False
    # The newest cancellation the gateway knows of failed (PortOne V2's FAILED): it did not
    # apply, and the payment stands as it was.
    cancel_failed: bool = False

    @field_validator("amount", "cancel_amount", mode="before")
    @classmethod
    def _zero_if_null(cls, value: Any) -> Any:
        return _zero_if_none(value)

    @field_validator("started_at", "paid_at", "failed_at", "cancelled_at", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> float:
        return unix_seconds(value)

    @field_validator("cancel_history", mode="before")
    @classmethod
    def _no_null_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @property
    def balance(self) -> float:
        """The refundable balance, `amount - cancel_amount`: a refund's `checksum`."""
        return self.amount - self.cancel_amount

    def last_cancel(self) -> CancelHistoryEntry | None:
        """The newest cancel_history entry (by cancelled_at, last in list on ties), if any."""
        if not self.cancel_history:
            return None
        return max(reversed(self.cancel_history), key=lambda e: e.cancelled_at)

    def cancelled_time(self) -> float:
        """When the payment's latest cancellation happened (iamport's clock, UNIX seconds);
        0 when it does not say. The payment's `cancelled_at` and its newest cancel_history
        entry may disagree: the later one is taken, the one a late call of ours could be."""
        last = self.last_cancel()
        return max(self.cancelled_at, last.cancelled_at if last is not None else 0.0)
