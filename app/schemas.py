"""The API's request and response shapes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from app.jobs.records import Cancellation, Refund, UpstreamError
from app.jobs.status import JobStatus

PayMethod = Literal["cvs", "vbank"]
OnPaidChoice = Literal["hold", "refund"]
# Postgres keeps times from 4713 BC to 294276 AD; an event's time must also survive the
# conversion to UTC, which years 1 and 9999 at extreme offsets do not.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _printable(value: str) -> str:
    # Postgres text cannot hold NUL, and control characters in an operator's view are a trap.
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise ValueError("control characters are not allowed")
    # A lone surrogate is no character: it cannot be stored or encoded as UTF-8.
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("lone surrogates are not allowed")
    return value


def _representable(value: datetime) -> datetime:
    try:
        in_utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("the time is out of range") from None
    if not EARLIEST <= in_utc <= LATEST:
        raise ValueError("the time is out of range")
    return value


Text = Annotated[str, AfterValidator(_printable)]
EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")
]
ImpUid = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
]


class PaymentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    imp_uid: ImpUid
    merchant_uid: Annotated[Text, StringConstraints(max_length=128)] | None = None
    # A hint: iamport's record of the payment decides which call cancels it.
    pay_method: PayMethod = "cvs"


class EventCreate(BaseModel):
    """An out-of-stock event: these payments' barcodes must be cancelled."""

    model_config = ConfigDict(extra="forbid")

    event_id: EventId
    sku: Annotated[Text, StringConstraints(min_length=1, max_length=128)]
    reason: Annotated[Text, StringConstraints(min_length=1, max_length=256)] = "out of stock"
    occurred_at: Annotated[AwareDatetime, AfterValidator(_representable)] | None = None
    payments: Annotated[list[PaymentRef], Field(min_length=1, max_length=1000)]
    # What to do with payments found paid already; default: the ON_PAID setting.
    on_paid: OnPaidChoice | None = None

    def unique_payments(self) -> list[PaymentRef]:
        """The payments in order, each imp_uid once (the first mention wins)."""
        seen: dict[str, PaymentRef] = {}
        for p in self.payments:
            seen.setdefault(p.imp_uid, p)
        return list(seen.values())


class JobPublic(BaseModel):
    id: uuid.UUID
    imp_uid: str
    merchant_uid: str | None
    status: JobStatus
    pay_method: PayMethod
    on_paid: OnPaidChoice
    attempts: int
    next_attempt_at: datetime | None
    payment_status: str | None
    cancellation: Cancellation | None
    refund: Refund | None
    error: UpstreamError | None
    event_ids: list[str]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class EventPublic(BaseModel):
    event_id: str
    sku: str
    reason: str
    occurred_at: datetime | None
    received_at: datetime
    jobs: list[JobPublic]


class JobPage(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None


class AttemptPublic(BaseModel):
    n: int
    call: Literal["cancel", "refund", "lookup", "token"]
    started_at: datetime
    duration_ms: int | None
    http_status: int | None
    code: int | None
    message: str | None
    outcome: str | None


class AttemptList(BaseModel):
    items: list[AttemptPublic]


class Stats(BaseModel):
    counts: dict[str, int]
    oldest_waiting_age_seconds: float | None
    finished_last_minute: dict[str, int]
    finished_last_hour: dict[str, int]


def job_public(row: Any, event_ids: list[str]) -> JobPublic:
    """A Job as the API shows it, from a jobs row."""
    status = JobStatus(row.status)
    cancellation = row.cancellation if status is JobStatus.CANCELLED else None
    refund = row.refund if status is JobStatus.REFUNDED else None
    return JobPublic(
        id=row.id,
        imp_uid=row.imp_uid,
        merchant_uid=row.merchant_uid,
        status=status,
        pay_method=row.pay_method,
        on_paid=row.on_paid,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if status is JobStatus.RETRY_WAIT else None,
        payment_status=row.payment_status,
        cancellation=Cancellation.model_validate(cancellation) if cancellation else None,
        refund=Refund.model_validate(refund) if refund else None,
        error=UpstreamError.model_validate(row.error) if row.error else None,
        event_ids=event_ids,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


class ActionPublic(BaseModel):
    at: datetime
    action: Literal["retry", "refund", "replay"]
    key_id: uuid.UUID
    key_name: str
    job_id: uuid.UUID | None
    endpoint_id: str | None
    detail: dict[str, Any] | None


class ActionList(BaseModel):
    items: list[ActionPublic]


class CallerPublic(BaseModel):
    id: uuid.UUID
    name: str
    scopes: list[str]


class EventSummary(BaseModel):
    event_id: str
    sku: str
    reason: str
    occurred_at: datetime | None
    received_at: datetime
    jobs_total: int
    jobs_terminal: int
    counts: dict[str, int]


class EventPage(BaseModel):
    items: list[EventSummary]
    next_cursor: str | None


class MinuteCounts(BaseModel):
    minute: datetime
    counts: dict[str, int]


class UpstreamCalls(BaseModel):
    call: str
    outcome: str
    count: int


class UpstreamLatency(BaseModel):
    call: str
    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class Activity(BaseModel):
    window_minutes: int
    finished_per_minute: list[MinuteCounts]
    # Calls and latency cover the newest calls of the window, at most a fixed number of them.
    upstream_calls: list[UpstreamCalls]
    upstream_latency: list[UpstreamLatency]
    upstream_sample_size: int
    upstream_sample_capped: bool
    upstream_since: datetime | None
