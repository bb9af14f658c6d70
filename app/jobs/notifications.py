"""What iamport's calls to us do to jobs: the confirm hook's answer and the notification.

Plain functions: the router (app/api/iamport_hooks.py) authenticates; these answer
from Postgres alone, so neither waits on iamport or Redis while iamport waits on us.
Notifications are not signed, so the body's status is never believed: a waiting job is made to
look its payment up at once, and only that lookup moves it.
"""

from __future__ import annotations

from typing import Any

import structlog
from psycopg import AsyncConnection

from app.jobs import store
from app.kit.db import UnitOfWork

log = structlog.get_logger(__name__)

# The confirm hook makes iamport wait while a customer stands at the till: one indexed lookup,
# and a database that cannot answer in this time is treated as down (the payment is blocked).
CONFIRM_STATEMENT_TIMEOUT_MS = 500


# -- confirm_url -----------------------------------------------------------------------------


async def has_job(conn: AsyncConnection[Any], account: str, imp_uid: str) -> bool:
    """Whether a job exists for the payment, whatever its status: one unique-index probe."""
    cur = await conn.execute(
        "SELECT 1 FROM jobs WHERE account = %s AND imp_uid = %s", (account, imp_uid)
    )
    return await cur.fetchone() is not None


# -- notifications ---------------------------------------------------------------------------


def note_notification(uow: UnitOfWork, account: str, imp_uid: str) -> str | None:
    """Make the payment's waiting job look it up now; the job's status, or None if none waits.

    Duplicates are harmless: they only make a lookup due again. A finished job is left alone,
    so an old notification never overwrites what a later lookup saw.
    """
    noted = store.note_news(uow.conn, account, imp_uid)
    if noted is None:
        return None
    job_id, status = noted
    uow.publish([job_id])
    log.info(
        "notification_noted",
        account=account,
        job_id=str(job_id),
        imp_uid=imp_uid,
        status=status.value,
    )
    return status.value
