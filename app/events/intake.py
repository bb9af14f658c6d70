"""Accepting a stockout event: idempotent by event_id, one job per imp_uid, by constraints alone."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation

from app.config import Settings
from app.events.queries import event_job_ids, get_event
from app.events.schemas import EventCreate, EventPublic
from app.jobs import store
from app.jobs.decide import Method, OnPaid
from app.kit.db import UnitOfWork
from app.kit.dispatch import publish_later
from app.kit.errors import EventConflict, WrongPaymentField
from app.upstream.accounts import Account


@dataclass(frozen=True)
class Accepted:
    created: bool  # False for a replay of a known event
    event: EventPublic  # the event and its jobs, as GET /v1/stockout-events/{id} shows them


def content_hash(event: EventCreate) -> str:
    """A digest of what the event says, blind to payment order and repeated imp_uids."""
    occurred = event.occurred_at.astimezone(UTC).isoformat() if event.occurred_at else None
    payments = sorted((p.id, p.merchant_uid or "", p.pay_method) for p in event.unique_payments())
    canonical = json.dumps(
        [event.sku, event.reason, occurred, payments, event.on_paid], separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# The field that names a payment on each kind of account.
PAYMENT_FIELD = {"v1": "imp_uid", "v2": "payment_id"}


def check_payment_fields(event: EventCreate, account: Account) -> None:
    """WrongPaymentField (422) when a payment is named by the other kind of account's field."""
    want = PAYMENT_FIELD[account.api]
    wrong = [i for i, p in enumerate(event.payments) if p.field != want]
    if not wrong:
        return
    kind = "a PortOne V2" if account.api == "v2" else "an iamport V1"
    detail = f"account {account.name} is {kind} account: name its payments by {want}"
    errors = [
        {"loc": ["body", "payments", str(i), event.payments[i].field], "msg": detail,
         "type": "wrong_payment_field"}
        for i in wrong
    ]  # fmt: skip
    raise WrongPaymentField(detail, errors)


def _new(event: EventCreate, account: Account, settings: Settings) -> store.NewEvent:
    jobs = [
        store.NewJob(p.id, p.merchant_uid, Method(p.pay_method)) for p in event.unique_payments()
    ]
    return store.NewEvent(
        account.name,
        event.event_id,
        event.sku,
        event.reason,
        event.occurred_at,
        content_hash(event),
        jobs,
        OnPaid(event.on_paid or account.on_paid),
        settings.dispatch_grace_seconds,
        account.api,
    )


# What else a new event naming only existing jobs writes in its transaction (the webhook
# outbox's event.completed): handed in by the caller, so the intake knows nothing of webhooks.
OnLinked = Callable[[UnitOfWork, str, str, Sequence[uuid.UUID]], None]


def accept_event(
    uow: UnitOfWork,
    event: EventCreate,
    account: Account,
    settings: Settings,
    on_linked: OnLinked,
) -> Accepted:
    """Record the event and its jobs in the unit of work; the new jobs are published after it.

    Concurrent duplicates are settled by the primary key on events (account, event_id) (the
    losers wait for the winner's commit, then see its row); concurrent events naming one
    imp_uid by the unique constraint on jobs (account, imp_uid).
    """
    new = _new(event, account, settings)
    intake = store.accept_event(uow.conn, new)
    if intake.received_at is None:
        if store.event_hash(uow.conn, account.name, event.event_id) != new.digest:
            raise EventConflict(f"event {event.event_id} is known with different content")
        return Accepted(created=False, event=_read_back(uow, account.name, event.event_id))
    uow.publish(job["id"] for job in intake.made)
    if not intake.made:
        # Every payment had a job already: the event may be complete the moment it exists.
        linked = event_job_ids(uow.conn, account.name, event.event_id)
        on_linked(uow, account.name, event.event_id, linked)
    if intake.linked_existing:
        # Jobs that another event made are shown as they stand, with all their events.
        return Accepted(created=True, event=_read_back(uow, account.name, event.event_id))
    return Accepted(created=True, event=_new_event(event, account.name, intake))


async def accept_new_event(
    conn: AsyncConnection[Any], event: EventCreate, account: Account, settings: Settings
) -> EventPublic | None:
    """The common case on the event loop: a new event whose payments no other event named.
    One statement in autocommit, and the answer built from what it returned.

    Anything else (a replay, a conflict, a payment that has a job already) writes nothing and
    is answered None: accept_event then decides it, in a worker thread.
    """
    try:
        intake = await store.accept_new_event(conn, _new(event, account, settings))
    except UniqueViolation:
        return None
    if intake.received_at is None:
        return None
    publish_later(job["id"] for job in intake.made)
    return _new_event(event, account.name, intake)


def _new_event(event: EventCreate, account: str, intake: store.Intake) -> EventPublic:
    """A new event whose jobs are all new, as a read would show it (a test compares the two
    byte for byte), validated in one pass from the rows the insert returned."""
    return EventPublic.model_validate(
        {
            "account": account,
            "event_id": event.event_id,
            "sku": event.sku,
            "reason": event.reason,
            "occurred_at": intake.occurred_at,
            "received_at": intake.received_at,
            # A new job has no record, error or retry time yet: the columns are all null.
            "jobs": [{**job, "event_ids": [event.event_id]} for job in intake.made],
        }
    )


def _read_back(uow: UnitOfWork, account: str, event_id: str) -> EventPublic:
    public = get_event(uow.conn, account, event_id)
    assert public is not None  # written or found in this transaction
    return public
