"""The calls iamport makes to us: the barcode's confirm_url and the payment notification.

Plain functions: the router (app/api/iamport_hooks.py) authenticates; these parse and answer
from Postgres alone, so neither waits on iamport or Redis while iamport waits on us.
Notifications are not signed, so the body's status is never believed: a waiting job is made to
look its payment up at once, and only that lookup moves it.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import structlog
from psycopg import AsyncConnection

from app.jobs import store
from app.kit.db import UnitOfWork

log = structlog.get_logger(__name__)

IMP_UID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
# The confirm hook makes iamport wait while a customer stands at the till: one indexed lookup,
# and a database that cannot answer in this time is treated as down (the payment is blocked).
CONFIRM_STATEMENT_TIMEOUT_MS = 500
MAX_FIELDS = 64


class BadPayload(ValueError):
    """The body is not a JSON object or a form, or names no valid imp_uid."""


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


async def has_job(conn: AsyncConnection[Any], imp_uid: str) -> bool:
    """Whether a job exists for the payment, whatever its status: one unique-index probe."""
    cur = await conn.execute("SELECT 1 FROM jobs WHERE imp_uid = %s", (imp_uid,))
    return await cur.fetchone() is not None


# -- notifications ---------------------------------------------------------------------------


def note_notification(uow: UnitOfWork, imp_uid: str) -> str | None:
    """Make the payment's waiting job look it up now; the job's status, or None if none waits.

    Duplicates are harmless: they only make a lookup due again. A finished job is left alone,
    so an old notification never overwrites what a later lookup saw.
    """
    noted = store.note_news(uow.conn, imp_uid)
    if noted is None:
        return None
    job_id, status = noted
    uow.publish([job_id])
    log.info("notification_noted", job_id=str(job_id), imp_uid=imp_uid, status=status.value)
    return status.value
