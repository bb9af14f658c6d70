"""The two URLs iamport calls: the barcode's confirm_url and the payment notification URL.

No API key: iamport authenticates with the shared token in the query string,
compared in constant time. Without IAMPORT_WEBHOOK_TOKEN both answer 404. The query string
carries that token, so it is never logged (app/api/middleware.py logs the path alone).
"""

from __future__ import annotations

import hashlib
import hmac

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.errors import DB_RETRY_AFTER_SECONDS, NotFound, ProblemError, Unauthenticated, problem
from app.notifications import (
    BadPayload,
    LookupFailed,
    handle_notification,
    has_job,
    imp_uid_of,
    parse_fields,
)

router = APIRouter(prefix="/v1/iamport", tags=["iamport"])
log = structlog.get_logger(__name__)


class BadHookPayload(ProblemError):
    status, code = 400, "bad_payload"


def _check_token(request: Request) -> None:
    configured = get_settings().iamport_webhook_token
    expected = configured.get_secret_value() if configured is not None else ""
    if not expected:
        raise NotFound("not found")
    given = request.query_params.get("token", "")
    # Hash both sides first: the comparison then takes the same time whatever the lengths.
    same = hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )
    if not same:
        raise Unauthenticated("the token is missing or wrong")


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
    _check_token(request)
    imp_uid = await _imp_uid(request)
    try:
        blocked = await run_in_threadpool(has_job, imp_uid)
    except SQLAlchemyError as exc:
        log.warning("confirm_database_unavailable", imp_uid=imp_uid, error=type(exc).__name__)
        return problem(
            503,
            "database_unavailable",
            "cannot check the payment now; blocked",
            {"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
        )
    log.info("cvs_confirm", imp_uid=imp_uid, allowed=not blocked)
    if blocked:
        return problem(409, "payment_blocked", "this order cannot be fulfilled; payment blocked")
    return JSONResponse({"status": "allowed"})


@router.post(
    "/notifications",
    responses={
        200: {"description": "handled (or not ours)"},
        503: {"description": "the database cannot answer now: send again"},
    },
)
async def notification(request: Request) -> JSONResponse:
    """iamport says a payment changed: look it up (never trust the body) and update its job."""
    _check_token(request)
    imp_uid = await _imp_uid(request)
    try:
        handled = await run_in_threadpool(handle_notification, imp_uid)
    except LookupFailed as exc:
        # Still 200, as the contract asks: the failed lookup is in the job's attempt history,
        # and a waiting job's own run looks the payment up before it acts, so nothing is lost.
        log.warning("notification_lookup_failed", imp_uid=imp_uid, error=str(exc))
        return JSONResponse({"status": "lookup_failed"})
    log.info(
        "notification_handled",
        imp_uid=imp_uid,
        job_id=str(handled.job_id or ""),
        payment_status=handled.payment_status,
        job_status=handled.job_status,
    )
    return JSONResponse({"status": "ok"})
