"""A job's shapes as the API shows them: the job, its attempts, the counts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from app.jobs.records import Cancellation, Drift, Refund, UpstreamError
from app.jobs.status import JobStatus
from app.kit.text import printable


class JobPublic(BaseModel):
    id: uuid.UUID
    account: str
    payment_id: str = Field(
        description="The payment's id at its gateway: iamport's imp_uid, or PortOne V2's paymentId."
    )
    imp_uid: str | None = Field(
        description="The payment's imp_uid on an iamport V1 account (the same as payment_id); "
        "null on a PortOne V2 account."
    )
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
    drift: Drift | None = Field(
        default=None,
        description="Set when a reconciliation saw the payment at the gateway contradict this "
        "finished job; kept, with who cleared it and their note, once a person has.",
    )
    event_ids: list[str]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        # A jobs row (PUBLIC_COLUMNS) keeps the payment id in imp_uid, and the account's kind
        # in api, which says whether the job shows it as an imp_uid too.
        if isinstance(data, dict) and "api" in data and "payment_id" not in data:
            api = data["api"]
            data = {k: v for k, v in data.items() if k != "api"}
            data["payment_id"], data["imp_uid"] = payment_ids(api, data.get("imp_uid"))
        return data


class DriftClear(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Annotated[
        str, StringConstraints(min_length=1, max_length=1000), AfterValidator(printable)
    ]


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
    trace_id: str | None = Field(
        default=None,
        description="The OpenTelemetry trace of the run that made the call; null when the "
        "service does not trace.",
    )


class AttemptList(BaseModel):
    items: list[AttemptPublic]


class Stats(BaseModel):
    counts: dict[str, int]
    oldest_waiting_age_seconds: float | None
    finished_last_minute: dict[str, int]
    finished_last_hour: dict[str, int]


def payment_ids(api: str, stored: Any) -> tuple[Any, Any]:
    """A job's (payment_id, imp_uid) from its stored payment id: imp_uid only on v1."""
    return stored, (stored if api == "v1" else None)


def job_public(row: Any, event_ids: list[str]) -> JobPublic:
    """A Job as the API shows it, from a jobs row."""
    status = JobStatus(row.status)
    cancellation = row.cancellation if status is JobStatus.CANCELLED else None
    refund = row.refund if status is JobStatus.REFUNDED else None
    payment_id, imp_uid = payment_ids(row.api, row.imp_uid)
    return JobPublic(
        id=row.id,
        account=row.account,
        payment_id=payment_id,
        imp_uid=imp_uid,
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
        drift=Drift.model_validate(drift) if (drift := getattr(row, "drift", None)) else None,
        event_ids=event_ids,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


PayMethod = Literal["cvs", "vbank"]


OnPaidChoice = Literal["hold", "refund"]
