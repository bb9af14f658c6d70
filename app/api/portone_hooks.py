"""The URL PortOne V2 calls: `POST /v1/portone/webhooks/{account}`, signed Standard Webhooks.

No API key: the message is verified with the `standardwebhooks` library against the account's
webhook secrets (`webhook_secret_env`/`_file`, comma-separated during a rotation: either one
verifies), with its five minutes of tolerance for the timestamp. Anything unverified is `401`
and changes nothing. A verified message is still not believed: it only makes the job of
`data.paymentId` look the payment up first, as a V1 notification does, so a repeated
`webhook-id` does no harm. The answer comes at once: nothing here waits on PortOne or Redis.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.events.schemas import AccountName
from app.jobs.notifications import note_notification
from app.kit.db import unit_of_work
from app.kit.errors import NotFound, Unauthenticated
from app.upstream.accounts import accounts_of

router = APIRouter(prefix="/v1/portone", tags=["portone"])
log = structlog.get_logger(__name__)


def verifiers(account: str) -> list[Webhook]:
    """The account's webhook secrets as verifiers; NotFound for no such v2 account or none."""
    found = accounts_of(get_settings()).get(account)
    secret = found.secret("webhook_secret") if found is not None and found.api == "v2" else None
    if not secret:
        raise NotFound("not found")
    return [Webhook(s.strip()) for s in secret.split(",") if s.strip()]


def verified(account: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The message's JSON once one of the account's secrets verifies it; else 401."""
    for verifier in verifiers(account):
        try:
            verifier.verify(body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError, UnicodeDecodeError):
            continue
        try:
            parsed = json.loads(body)
        except ValueError:
            break
        if isinstance(parsed, dict):
            return parsed
        break
    raise Unauthenticated("the webhook's signature, timestamp or body does not verify")


def payment_id_of(message: dict[str, Any]) -> str | None:
    data = message.get("data")
    value = data.get("paymentId") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


@router.post(
    "/webhooks/{account}",
    responses={
        200: {"description": "verified: the payment's waiting job looks it up first"},
        401: {"description": "unauthorized: missing, forged or stale signature"},
        404: {"description": "not_found: no v2 account of that name with a webhook secret"},
    },
)
async def portone_webhook(
    account: Annotated[AccountName, Path()], request: Request
) -> JSONResponse:
    """PortOne says a payment changed: verified, its waiting job looks the payment up first."""
    body = await request.body()
    headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
    message = verified(account, body, headers)
    payment_id = payment_id_of(message)
    status = None
    if payment_id is not None:
        status = await run_in_threadpool(_note, account, payment_id)
    log.info(
        "portone_webhook_received",
        account=account,
        payment_id=payment_id,
        webhook_id=headers.get("webhook-id"),
        job_status=status,
    )
    return JSONResponse({"status": "ok"})


def _note(account: str, payment_id: str) -> str | None:
    with unit_of_work() as uow:
        return note_notification(uow, account, payment_id)
