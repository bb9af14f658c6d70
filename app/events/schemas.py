"""An event's shapes: what the order services post, and how an event reads back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

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


# PortOne V2's paymentId: chosen by the merchant, 1-200 characters.
PaymentId = Annotated[Text, StringConstraints(min_length=1, max_length=200)]


class PaymentRef(BaseModel):
    """One payment of an event: `imp_uid` on a v1 (iamport) account, `payment_id` on a v2
    (PortOne V2) one; which of the two the account takes is checked once it is known."""

    model_config = ConfigDict(extra="forbid")

    imp_uid: ImpUid | None = None
    payment_id: PaymentId | None = None
    merchant_uid: Annotated[Text, StringConstraints(max_length=128)] | None = None
    # A hint: iamport's record of the payment decides which call cancels it.
    pay_method: PayMethod = "cvs"

    @model_validator(mode="after")
    def _one_id(self) -> PaymentRef:
        if (self.imp_uid is None) == (self.payment_id is None):
            raise ValueError("give the payment's id as imp_uid (v1) or payment_id (v2), once")
        return self

    @property
    def id(self) -> str:
        """The payment's id at its gateway, whichever field named it."""
        found = self.payment_id if self.payment_id is not None else self.imp_uid
        assert found is not None  # _one_id
        return found

    @property
    def field(self) -> str:
        """The field that named the payment."""
        return "imp_uid" if self.imp_uid is not None else "payment_id"


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
        """The payments in order, each payment id once (the first mention wins)."""
        seen: dict[str, PaymentRef] = {}
        for p in self.payments:
            seen.setdefault(p.id, p)
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
