"""iamport's answers as lenient pydantic models: unknown fields ignored, optional ones optional."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

PaymentStatus = Literal["ready", "paid", "cancelled", "failed"]


def _zero_if_none(value: Any) -> Any:
    return 0 if value is None else value


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CancelHistoryEntry(_Lenient):
    """One cancellation of a payment; the newest entry describes the latest one."""

    pg_tid: str | None = None
    amount: float = 0
    cancelled_at: int = 0
    reason: str | None = None
    receipt_url: str | None = None
    cancellation_id: str | None = None

    @field_validator("amount", "cancelled_at", mode="before")
    @classmethod
    def _zero_if_null(cls, value: Any) -> Any:
        return _zero_if_none(value)


class Payment(_Lenient):
    """A payment as iamport reports it. `status` stays a str; compare with PaymentStatus values."""

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
    started_at: int = 0
    paid_at: int = 0
    failed_at: int = 0
    cancelled_at: int = 0
    cancel_history: list[CancelHistoryEntry] = []

    @field_validator(
        "amount",
        "cancel_amount",
        "started_at",
        "paid_at",
        "failed_at",
        "cancelled_at",
        mode="before",
    )
    @classmethod
    def _zero_if_null(cls, value: Any) -> Any:
        return _zero_if_none(value)

    @field_validator("cancel_history", mode="before")
    @classmethod
    def _no_null_list(cls, value: Any) -> Any:
        return [] if value is None else value

    def last_cancel(self) -> CancelHistoryEntry | None:
        """The newest cancel_history entry (by cancelled_at, last in list on ties), if any."""
        if not self.cancel_history:
            return None
        return max(reversed(self.cancel_history), key=lambda e: e.cancelled_at)


class TokenResponse(_Lenient):
    """The answer of POST /users/getToken; times are iamport's UNIX seconds."""

    access_token: str
    now: int
    expired_at: int

    def __repr__(self) -> str:
        return f"TokenResponse(access_token='***', now={self.now}, expired_at={self.expired_at})"

    __str__ = __repr__
