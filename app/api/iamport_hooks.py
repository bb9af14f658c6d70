"""The two URLs iamport calls: the barcode's confirm_url and the payment notification URL.

No API key: iamport authenticates with the shared token in the query string, compared in
constant time, and the token says whose payment it is: each v1 account has its own
(`webhook_token_env`, or IAMPORT_WEBHOOK_TOKEN for `default`). With no token configured both
answer 404. The query string carries the token, so it is never logged (app/api/middleware.py
logs the path alone).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg import Error as PsycopgError
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool

from app.api.problems import problem
from app.config import get_settings
from app.jobs.notifications import CONFIRM_STATEMENT_TIMEOUT_MS, has_job, note_notification
from app.kit.db import loop_pool, unit_of_work
from app.kit.errors import DB_RETRY_AFTER_SECONDS, DomainError, NotFound, Unauthenticated
from app.upstream.accounts import accounts_of
from app.upstream.iamport.hooks import BadPayload, imp_uid_of, parse_fields

router = APIRouter(prefix="/v1/iamport", tags=["iamport"])
log = structlog.get_logger(__name__)
CONFIRM_POOL_SIZE = 4


@asynccontextmanager
async def confirm_pool(app: FastAPI) -> AsyncIterator[None]:
    """The confirm hook's own few connections, used on the event loop.

    A customer waits at the till while iamport asks us, so the answer must not queue behind
    slow requests for a worker thread or a pooled connection: it has its own of both.
    """
    async with loop_pool(
        "stockout-confirm",
        CONFIRM_POOL_SIZE,
        CONFIRM_STATEMENT_TIMEOUT_MS / 1000,
        connect_timeout=2,
        options=f"-c statement_timeout={CONFIRM_STATEMENT_TIMEOUT_MS}",
    ) as conns:
        app.state.confirm_pool = conns
        yield


class BadHookPayload(DomainError):
    status, code = 400, "bad_payload"


def _account_of(request: Request) -> str:
    """The v1 account whose webhook token the URL carries, or 401 (404 when none has one)."""
    tokens = [
        (a.name, token)
        for a in accounts_of(get_settings()).values()
        if a.api == "v1" and (token := a.secret("webhook_token"))
    ]
    if not tokens:
        raise NotFound("not found")
    given = hashlib.sha256(request.query_params.get("token", "").encode()).digest()
    found = None
    # Every token is compared, each in constant time (hashed first, so lengths tell nothing),
    # and the loop does not stop at a match: timing says nothing of which one matched.
    for name, token in tokens:
        if hmac.compare_digest(given, hashlib.sha256(token.encode()).digest()):
            found = name
    if found is None:
        raise Unauthenticated("the token is missing or wrong")
    return found


async def _imp_uid(request: Request) -> str:
    try:
        fields = parse_fields(await request.body(), request.headers.get("content-type", ""))
        return imp_uid_of(fields)
    except BadPayload as exc:
        raise BadHookPayload(str(exc)) from None


@router.post(
    "/cvs-confirm",
    responses={
        200: {"description": "no job for this payment: allow it"},
        409: {"description": "payment_blocked: a job exists for this imp_uid"},
        503: {"description": "the database cannot answer: blocked, as any non-200 is"},
    },
)
async def cvs_confirm(request: Request) -> JSONResponse:
    """iamport asks whether a customer may pay this barcode: 409 blocks it, 200 allows it.

    Any doubt blocks: a bad body, a database that cannot answer at once. Blocking a payment
    is safer than taking money for goods we do not have.
    """
    account = _account_of(request)
    imp_uid = await _imp_uid(request)
    pool: AsyncConnectionPool[Any] = request.app.state.confirm_pool
    try:
        async with pool.connection() as conn:
            blocked = await has_job(conn, account, imp_uid)
    except (PsycopgError, PoolTimeout) as exc:
        log.warning("confirm_database_unavailable", imp_uid=imp_uid, error=type(exc).__name__)
        return problem(
            503,
            "database_unavailable",
            "cannot check the payment now; blocked",
            {"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
        )
    log.info("cvs_confirm", account=account, imp_uid=imp_uid, allowed=not blocked)
    if blocked:
        return problem(409, "payment_blocked", "this order cannot be fulfilled; payment blocked")
    return JSONResponse({"status": "allowed"})


@router.post(
    "/notifications",
    responses={
        200: {"description": "noted (or not ours)"},
        503: {"description": "the database cannot answer now: send again"},
    },
)
async def notification(request: Request) -> JSONResponse:
    """iamport says a payment changed: the payment's waiting job looks it up at once.

    The body is never believed and iamport is not called here: the job's own run looks the
    payment up (a worker, woken after the commit) and only that lookup moves the job.
    """
    account = _account_of(request)
    imp_uid = await _imp_uid(request)
    status = await run_in_threadpool(_note, account, imp_uid)
    log.info("notification_received", account=account, imp_uid=imp_uid, job_status=status)
    return JSONResponse({"status": "ok"})


def _note(account: str, imp_uid: str) -> str | None:
    with unit_of_work() as uow:
        return note_notification(uow, account, imp_uid)
