"""The FastAPI application: `uvicorn app.main:app`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app import console, tracing
from app.api import (
    events,
    health,
    iamport_hooks,
    jobs,
    me,
    middleware,
    openapi,
    portone_hooks,
    scrape,
    stats,
    webhooks,
)
from app.api.limits import BodyLimit
from app.api.problems import install_handlers, problem
from app.config import get_settings
from app.heap import freeze_startup_heap
from app.kit.db import POOL_WAIT_SECONDS, loop_pool
from app.logs import capture_output, configure
from app.upstream.accounts import AccountsError, load_accounts

log = structlog.get_logger(__name__)
# The key check of every request and the common intake: short, no thread each.
LOOP_POOL_SIZE = 32


@asynccontextmanager
async def startup_checks(_: FastAPI) -> AsyncIterator[None]:
    """Refuse to start without the backing stores; warn loudly when the till guard is off."""
    settings = get_settings()
    try:
        settings.require_urls()
    except RuntimeError as exc:
        log.error("cannot start", reason=str(exc))
        raise
    token = settings.iamport_webhook_token
    if token is None or not token.get_secret_value():
        log.warning(
            "IAMPORT_WEBHOOK_TOKEN is empty: the till guard is OFF. iamport's confirm_url and "
            "notifications answer 404, so customers can still pay barcodes we are cancelling"
        )
    yield


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Checks first, then the connections used on the event loop: the confirm hook's own, and
    those of the key check and the intake."""
    if sys.stderr is sys.__stderr__:
        # A served API owns its streams: what is written to them, and uncaught exceptions,
        # become records too. (Under a test runner the streams are the runner's.)
        capture_output()
    async with (
        startup_checks(app),
        iamport_hooks.confirm_pool(app),
        loop_pool("stockout-loop", LOOP_POOL_SIZE, POOL_WAIT_SECONDS) as conns,
    ):
        app.state.loop_conns = conns
        freeze_startup_heap()
        yield


async def internal_error(_: Request, exc: Exception) -> JSONResponse:
    """Whatever slipped through: problem details, never a bare 500 page (logged with trace)."""
    log.error("unhandled error", exc_info=exc)
    return problem(500, "internal_error", "an unexpected error; it has been logged")


def create_app() -> FastAPI:
    """Wire routers, error handlers and the body limit."""
    settings = get_settings()
    configure(settings.log_level, settings.log_json)
    tracing.setup("stockout-api")
    try:
        load_accounts(settings)
    except AccountsError as exc:
        # Before uvicorn's start-up: one line and status 1, not a lifespan traceback.
        raise SystemExit(f"cannot start: {exc}") from None
    app = FastAPI(
        title="stockout-cancel",
        version="0.1.0",
        description=(
            "Cancels convenience-store payment barcodes at iamport for orders that cannot be "
            "shipped. Authorize with an API key (`stockout keys create NAME --scope ...`)."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_handlers(app)
    app.add_exception_handler(Exception, internal_error)
    operations = (
        stats.router,
        scrape.router,
        iamport_hooks.router,
        portone_hooks.router,
        me.router,
        console.router,
    )
    for router in (events.router, jobs.router, webhooks.router, health.router, *operations):
        # FastAPI 0.16x's include_router nests a router object, which hides the paths from
        # anything reading app.routes; our routers carry their full paths and no router-level
        # options, so their routes go on the app as they are.
        app.router.routes.extend(router.routes)
    app.add_middleware(BodyLimit)
    middleware.install(app)
    openapi.install(app)
    openapi.install_docs(app)
    tracing.instrument_app(app)
    return app


app = create_app()
