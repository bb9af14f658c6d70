"""An event's shapes: what the order services post, and how an event reads back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from app.jobs.schemas import JobPublic, OnPaidChoice, PayMethod
from app.kit.text import Text, representable

EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")
]


AccountName = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
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

    # The merchant account whose payments these are; default: the key's only account, else
    # `default`.
    account: AccountName | None = None
    event_id: EventId
    sku: Annotated[Text, StringConstraints(min_length=1, max_length=128)]
    reason: Annotated[Text, StringConstraints(min_length=1, max_length=256)] = "out of stock"
    occurred_at: Annotated[AwareDatetime, AfterValidator(representable)] | None = None
    payments: Annotated[list[PaymentRef], Field(min_length=1, max_length=1000)]
    # What to do with payments found paid already; default: the ON_PAID setting.
    on_paid: OnPaidChoice | None = None

    def unique_payments(self) -> list[PaymentRef]:
        """The payments in order, each imp_uid once (the first mention wins)."""
        seen: dict[str, PaymentRef] = {}
        for p in self.payments:
            seen.setdefault(p.imp_uid, p)
        return list(seen.values())


class EventPublic(BaseModel):
    account: str
    event_id: str
    sku: str
    reason: str
    occurred_at: datetime | None
    received_at: datetime
    jobs: list[JobPublic]


class EventSummary(BaseModel):
    account: str
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
