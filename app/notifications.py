"""The calls iamport makes to us: the barcode's confirm_url and the payment notification.

Plain functions: the router (app/api/iamport_hooks.py) authenticates and parses; these look up,
decide and write. Notifications are not signed, so the body's status is never believed: the
payment is looked up at iamport and only that answer moves a job.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import redis
import structlog
from sqlalchemy import text

from app import metrics
from app.config import Settings, get_settings
from app.db import get_engine, session_scope
from app.iamport.client import CallRecord, IamportClient
from app.iamport.errors import IamportError, NotFound
from app.iamport.schemas import Payment
from app.jobs import TERMINAL_FOR_PAYMENT, cancellation_of
from app.webhooks.outbox import connection_of, record_terminal, take_wakeups

log = structlog.get_logger(__name__)

IMP_UID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
# The confirm hook makes iamport wait while a customer stands at the till: one indexed lookup,
# and a database that cannot answer in this time is treated as down (the payment is blocked).
CONFIRM_STATEMENT_TIMEOUT_MS = 500
MAX_FIELDS = 64


class BadPayload(ValueError):
    """The body is not a JSON object or a form, or names no valid imp_uid."""


class LookupFailed(Exception):
    """iamport could not tell us the payment's status now; iamport should send again."""


def parse_fields(body: bytes, content_type: str) -> dict[str, Any]:
    """The body as a dict, from JSON or a form (whatever the Content-Type claims)."""
    if not body.strip():
        raise BadPayload("empty body")
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPayload("the body is not UTF-8") from None
    looks_json = "json" in content_type.lower() or decoded.lstrip()[:1] in ("{", "[")
    if looks_json:
        try:
            data = json.loads(decoded)
        except (ValueError, RecursionError):
            raise BadPayload("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadPayload("the body is not a JSON object")
        return data
    pairs = parse_qsl(decoded, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    if not pairs:
        raise BadPayload("the body is neither JSON nor a form")
    return dict(pairs)


def imp_uid_of(fields: dict[str, Any]) -> str:
    """The body's imp_uid, if it looks like one."""
    value = fields.get("imp_uid")
    if not isinstance(value, str) or not IMP_UID.match(value):
        raise BadPayload("imp_uid is missing or malformed")
    return value


# -- confirm_url -----------------------------------------------------------------------------


def has_job(imp_uid: str) -> bool:
    """Whether a job exists for the payment, whatever its status: one unique-index probe."""
    with get_engine().connect() as conn:
        conn.execute(text(f"SET LOCAL statement_timeout = {CONFIRM_STATEMENT_TIMEOUT_MS}"))
        row = conn.execute(text("SELECT 1 FROM jobs WHERE imp_uid = :u"), {"u": imp_uid}).first()
        conn.rollback()
    return row is not None


# -- notifications ---------------------------------------------------------------------------

_client_lock = threading.Lock()
_client: tuple[Settings, IamportClient] | None = None


def iamport_client() -> IamportClient:
    """The process's client, made on first use (again if the settings were reloaded)."""
    global _client
    settings = get_settings()
    with _client_lock:
        if _client is None or _client[0] is not settings:
            from app.redis_conn import get_redis

            if _client is not None:
                _client[1].close()
            _client = (settings, IamportClient.from_settings(settings, get_redis()))
        return _client[1]


@dataclass
class Recorder:
    """Collects the upstream calls of one lookup, for the attempt history and the metrics."""

    records: list[CallRecord] = field(default_factory=list)

    def before_send(self, call: str) -> None:
        return None

    def after_call(self, record: CallRecord) -> None:
        metrics.observe_upstream(record)
        self.records.append(record)


@dataclass(frozen=True)
class Handled:
    job_id: uuid.UUID | None
    payment_status: str | None
    job_status: str | None
    changed: bool  # the job moved to a terminal status because of this notification


# Only a job nobody is working on changes hands here: a running job belongs to its worker,
# which will see the payment's status itself. The WHERE is re-checked under the row lock, so
# a worker's claim that commits first wins and this UPDATE then matches nothing.
_FINISH = """
UPDATE jobs SET status = :to, payment_status = :ps, {extra}
    finished_at = now(), next_attempt_at = NULL, due_at = NULL,
    lease_token = NULL, lease_until = NULL, updated_at = now()
WHERE imp_uid = :u AND status IN ('queued', 'retry_wait')
RETURNING id, status
"""
_EXTRA = {
    "needs_refund": "",
    "cancelled": (
        "cancellation = CAST(:c AS jsonb) || jsonb_build_object('cancelled_by', "
        "CASE WHEN uncertain THEN 'service' ELSE 'upstream' END), "
    ),
    "failed": "error = CAST(:e AS jsonb), ",
}
_PAYMENT_STATUS = """
UPDATE jobs SET payment_status = :ps, updated_at = now()
WHERE imp_uid = :u AND payment_status IS DISTINCT FROM :ps
"""
_ATTEMPT = """
INSERT INTO attempts (job_id, call, started_at, duration_ms, http_status, code, message, outcome)
VALUES (:job_id, :call, :started_at, :duration_ms, :http_status, :code, :message, :outcome)
"""


def handle_notification(imp_uid: str, client: IamportClient | None = None) -> Handled:
    """Look the payment up and bring its job (if any) in line; LookupFailed if iamport can't say.

    The upstream call is made outside any transaction; attempts and job change are then written
    in one. Duplicates are harmless: a job that already moved no longer matches the UPDATE.
    """
    with session_scope() as session:
        job = session.execute(
            text("SELECT id, status FROM jobs WHERE imp_uid = :u"), {"u": imp_uid}
        ).first()
    if job is None:
        # Not ours: nothing to update, and no reason to spend iamport's rate on it.
        return Handled(None, None, None, False)
    log.info("notification_lookup", job_id=str(job.id), imp_uid=imp_uid)
    recorder = Recorder()
    payment: Payment | None = None
    failure: Exception | None = None
    try:
        payment = (client or iamport_client()).get_payment(imp_uid, observer=recorder)
    except NotFound:
        payment = None  # iamport does not know it: nothing to learn, nothing to change
    except (IamportError, redis.RedisError, RuntimeError) as exc:
        failure = exc
    with session_scope() as session:
        for r in recorder.records:
            session.execute(
                text(_ATTEMPT),
                {
                    "job_id": job.id,
                    "call": r.call,
                    "started_at": r.started_at,
                    "duration_ms": r.duration_ms,
                    "http_status": r.http_status,
                    "code": r.code,
                    "message": r.message,
                    "outcome": r.outcome,
                },
            )
        changed = payment is not None and _apply(session, imp_uid, payment, recorder.records)
        if changed:
            # The webhook messages commit with the transition (same transaction).
            record_terminal(connection_of(session), job.id)
        status = session.execute(
            text("SELECT status FROM jobs WHERE id = :id"), {"id": job.id}
        ).scalar_one()
    # No wake-up from a request thread: the webhook sweep sends them within its interval.
    take_wakeups()
    # Raised after the commit: the failed call stays in the attempt history.
    if failure is not None:
        raise LookupFailed(type(failure).__name__) from failure
    if payment is None:
        return Handled(job.id, None, status, False)
    if changed:
        metrics.job_finished(status)
        log.info(
            "job_finished_by_notification",
            job_id=str(job.id),
            imp_uid=imp_uid,
            status=status,
            payment_status=payment.status,
        )
    return Handled(job.id, payment.status, status, changed)


def _apply(session: Any, imp_uid: str, payment: Payment, records: list[CallRecord]) -> bool:
    to = TERMINAL_FOR_PAYMENT.get(payment.status)
    if to is not None:
        lookup = next((r for r in reversed(records) if r.call == "lookup"), None)
        params: dict[str, Any] = {
            "to": to,
            "ps": payment.status,
            "u": imp_uid,
            "c": json.dumps(cancellation_of(payment)),
            "e": json.dumps(
                {
                    "http_status": lookup.http_status if lookup else None,
                    "code": lookup.code if lookup else None,
                    "message": "the payment failed at iamport",
                }
            ),
        }
        sql = _FINISH.format(extra=_EXTRA[to])
        used = {k: v for k, v in params.items() if f":{k}" in sql}
        if session.execute(text(sql), used).first() is not None:
            return True
    session.execute(text(_PAYMENT_STATUS), {"ps": payment.status, "u": imp_uid})
    return False
