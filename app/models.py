"""The tables. Postgres is the source of truth; every guarantee is a constraint or a lease here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlmodel import Field, SQLModel

from app.jobs.status import ALL, WAITING_SQL, JobStatus, sql_list

# Stable constraint names, so migrations can name what they alter.
SQLModel.metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _ts(nullable: bool = False, **kw: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), nullable=nullable, **kw))


class Event(SQLModel, table=True):
    """One stockout event as the producer sent it; `event_id` is its idempotency key."""

    __tablename__ = "events"
    # The console lists events newest first.
    __table_args__ = (Index("ix_events_received", text("received_at DESC"), text("event_id DESC")),)

    # event_id is unique per account: two merchants' producers may both say "evt-1".
    account: str = Field(default="default", primary_key=True, max_length=40)
    event_id: str = Field(primary_key=True, max_length=128)
    sku: str = Field(max_length=128, index=True)
    reason: str = Field(max_length=256)
    occurred_at: datetime | None = _ts(nullable=True)
    received_at: datetime = _ts(server_default=text("now()"))
    # sha256 of the normalised content: a replay must match it, else 409 event_conflict.
    content_hash: str = Field(max_length=64)
    # When all its jobs were first seen terminal and event.completed was written: never twice.
    completed_at: datetime | None = _ts(nullable=True)


class Job(SQLModel, table=True):
    """The cancellation of one payment's barcode: one per (account, imp_uid), ever."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("account", "imp_uid", name="uq_jobs_account"),
        Index("ix_jobs_status_created", "status", text("created_at DESC"), text("id DESC")),
        Index("ix_jobs_created", text("created_at DESC"), text("id DESC")),
        # The sweeps read only non-terminal jobs whose time has come.
        Index("ix_jobs_due", "due_at", postgresql_where=text(WAITING_SQL)),
        Index("ix_jobs_waiting_created", "created_at", postgresql_where=text(WAITING_SQL)),
        Index("ix_jobs_finished", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
        # The console's Drift queue: the drift records nobody has cleared yet (migration 0009).
        Index(
            "ix_jobs_drift_open",
            "finished_at",
            postgresql_where=text("drift IS NOT NULL AND drift->>'cleared_at' IS NULL"),
        ),
        CheckConstraint(f"status IN {sql_list(ALL)}", name="status"),
        CheckConstraint("uncertain_call IN ('cancel', 'refund')", name="uncertain_call"),
        CheckConstraint("pay_method IN ('cvs', 'vbank')", name="pay_method"),
        CheckConstraint("on_paid IN ('hold', 'refund')", name="on_paid"),
        CheckConstraint("api IN ('v1', 'v2')", name="api"),
        # Room on each page for a row's next versions (migration 0005).
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
        )
    )
    account: str = Field(
        default="default",
        sa_column=Column(String(40), nullable=False, server_default="default"),
    )
    # The payment's id at its gateway: iamport's imp_uid, or PortOne V2's paymentId.
    imp_uid: str = Field(max_length=200)
    # The account's kind when the job was made ("v1" iamport, "v2" PortOne V2): it names the
    # payment id in the job's shape.
    api: str = Field(default="v1", sa_column=Column(String(2), nullable=False, server_default="v1"))
    merchant_uid: str | None = Field(default=None, max_length=128, index=True)
    status: str = Field(
        default=JobStatus.QUEUED.value,
        sa_column=Column(String(16), nullable=False, server_default=JobStatus.QUEUED.value),
    )
    # Cancel and refund calls sent (app/jobs/store.py ATTEMPTS_SQL is its definition).
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime | None = _ts(nullable=True)
    # When a sweep should (re)publish this job if nothing else has: the dispatch grace for
    # queued jobs, next_attempt_at for retry_wait, the lease's end for running.
    due_at: datetime | None = _ts(nullable=True)
    lease_token: uuid.UUID | None = Field(
        default=None, sa_column=Column(UUID(as_uuid=True), nullable=True)
    )
    lease_until: datetime | None = _ts(nullable=True)
    # The cancel or refund call whose answer we never got: looked up before anything else, and
    # no further such call before last_call_at + CANCEL_SETTLE_SECONDS.
    uncertain_call: str | None = Field(default=None, sa_column=Column(String(8), nullable=True))
    last_call_at: datetime | None = _ts(nullable=True)
    pay_method: str = Field(
        default="cvs", sa_column=Column(String(8), nullable=False, server_default="cvs")
    )
    on_paid: str = Field(
        default="hold", sa_column=Column(String(8), nullable=False, server_default="hold")
    )
    reason: str | None = Field(default=None, max_length=256)
    refund_requested_at: datetime | None = _ts(nullable=True)
    # A notification came: the next run looks the payment up before anything else.
    look_first: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )
    # Runs in a row that learnt nothing; bounded, so no job retries forever.
    idle_runs: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # When a person last put the job back (retry, refund): attempts count from here.
    retried_at: datetime | None = _ts(nullable=True)
    payment_status: str | None = Field(default=None, max_length=16)
    cancellation: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSONB, nullable=True)
    )
    refund: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    # A reconciliation saw the payment contradict this finished job (app/jobs/records.py Drift).
    drift: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    created_at: datetime = _ts(server_default=text("now()"))
    updated_at: datetime = _ts(server_default=text("now()"))
    finished_at: datetime | None = _ts(nullable=True)


class EventJob(SQLModel, table=True):
    """Which jobs an event names, in the event's order; a job may belong to several events."""

    __tablename__ = "event_jobs"
    __table_args__ = (
        ForeignKeyConstraint(
            ["account", "event_id"],
            ["events.account", "events.event_id"],
            name="fk_event_jobs_account_events",
        ),
    )

    account: str = Field(default="default", primary_key=True, max_length=40)
    event_id: str = Field(primary_key=True, max_length=128)
    job_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("jobs.id"), primary_key=True, index=True)
    )
    position: int


class Attempt(SQLModel, table=True):
    """One upstream call made for a job, written before the call and completed after it."""

    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_job_id_id", "job_id", "id"),
        # Upstream health over the last minutes reads attempts by time.
        Index("ix_attempts_started_at", "started_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    job_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("jobs.id"), nullable=False)
    )
    call: str = Field(max_length=16)  # cancel | refund | lookup | token
    started_at: datetime = _ts(server_default=text("now()"))
    duration_ms: int | None = None
    http_status: int | None = None
    code: int | None = None
    message: str | None = Field(default=None, max_length=1024)
    outcome: str | None = Field(default=None, max_length=32)  # null while the call is in flight
    # The OpenTelemetry trace of the run that made the call (32 hex digits); null untraced.
    trace_id: str | None = Field(default=None, max_length=32)


class ApiKey(SQLModel, table=True):
    """An API key: only a hash of its secret is kept."""

    __tablename__ = "api_keys"

    id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
        )
    )
    name: str = Field(max_length=128)
    prefix: str = Field(max_length=16, unique=True)
    secret_hash: str = Field(max_length=64)
    scopes: list[str] = Field(sa_column=Column(ARRAY(String(32)), nullable=False))
    # NULL: an operator key, for every account; else the accounts it sees and changes.
    accounts: list[str] | None = Field(
        default=None, sa_column=Column(ARRAY(String(40)), nullable=True)
    )
    created_at: datetime = _ts(server_default=text("now()"))
    revoked_at: datetime | None = _ts(nullable=True)


class OperatorAction(SQLModel, table=True):
    """A person's action through the API (retry, refund, replay, clear_drift), written with the
    action itself."""

    __tablename__ = "operator_actions"
    __table_args__ = (
        Index("ix_operator_actions_job_id", "job_id", "id"),
        CheckConstraint("action IN ('retry', 'refund', 'replay', 'clear_drift')", name="action"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    at: datetime = _ts(server_default=text("now()"))
    # The key's id and its name at the time: a key may be renamed or revoked later.
    key_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("api_keys.id"), nullable=False)
    )
    key_name: str = Field(max_length=128)
    action: str = Field(max_length=16)
    job_id: uuid.UUID | None = Field(
        default=None, sa_column=Column(UUID(as_uuid=True), ForeignKey("jobs.id"), nullable=True)
    )
    endpoint_id: str | None = Field(default=None, max_length=64)
    detail: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))


WEBHOOK_PENDING_SQL = "status = 'pending'"


class WebhookEndpoint(SQLModel, table=True):
    """A receiver of signed webhooks. The secrets are kept as given: they must sign."""

    __tablename__ = "webhook_endpoints"

    id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
        )
    )
    url: str = Field(max_length=2048)
    # NULL: every type.
    event_types: list[str] | None = Field(
        default=None, sa_column=Column(ARRAY(String(32)), nullable=True)
    )
    description: str | None = Field(default=None, max_length=256)
    # NULL: messages of every account (an operator's endpoint); else that account's only.
    account: str | None = Field(default=None, max_length=40)
    enabled: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default=text("true"))
    )
    secret: str = Field(max_length=128)
    # The secret before the last rotation, still signing until previous_secret_until.
    previous_secret: str | None = Field(default=None, max_length=128)
    previous_secret_until: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(server_default=text("now()"))
    deleted_at: datetime | None = _ts(nullable=True)


class WebhookMessage(SQLModel, table=True):
    """The outbox: one message for one endpoint, written in the transaction of its transition."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        Index(
            "ix_webhook_messages_endpoint_created",
            "endpoint_id",
            text("created_at DESC"),
            text("id DESC"),
        ),
        # The sweep and the claims read only pending messages.
        Index(
            "ix_webhook_messages_pending",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text(WEBHOOK_PENDING_SQL),
        ),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
    )

    id: str = Field(primary_key=True, max_length=64)  # msg_…, the webhook-id
    endpoint_id: uuid.UUID = Field(
        sa_column=Column(UUID(as_uuid=True), ForeignKey("webhook_endpoints.id"), nullable=False)
    )
    event_type: str = Field(max_length=32)
    job_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    event_id: str | None = Field(default=None, max_length=128)
    # The body, as it was at the transition: a retry or replay sends the very same bytes' data.
    payload: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    status: str = Field(
        default="pending", sa_column=Column(String(16), nullable=False, server_default="pending")
    )
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime | None = _ts(nullable=True, server_default=text("now()"))
    last_http_status: int | None = None
    last_error: str | None = Field(default=None, max_length=256)
    created_at: datetime = _ts(server_default=text("now()"))
    delivered_at: datetime | None = _ts(nullable=True)
    # The deliverer's lease: one attempt in flight per message, at most a few per endpoint.
    lease_token: uuid.UUID | None = Field(
        default=None, sa_column=Column(UUID(as_uuid=True), nullable=True)
    )
    lease_until: datetime | None = _ts(nullable=True)


class WebhookAttempt(SQLModel, table=True):
    """One delivery attempt, written when the message is claimed and completed after the call."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_message_id", "message_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    message_id: str = Field(
        sa_column=Column(String(64), ForeignKey("webhook_messages.id"), nullable=False)
    )
    started_at: datetime = _ts(server_default=text("now()"))
    duration_ms: int | None = None
    http_status: int | None = None
    # delivered | http_error | timeout | connection_error | blocked_address; NULL while in flight
    outcome: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, max_length=256)
