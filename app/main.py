"""The FastAPI application: `uvicorn app.main:app`."""

from __future__ import annotations

from fastapi import FastAPI

from app import console
from app.api import (
    events,
    health,
    iamport_hooks,
    jobs,
    me,
    middleware,
    openapi,
    scrape,
    stats,
    webhooks,
)
from app.api.limits import BodyLimit
from app.config import get_settings
from app.errors import install_handlers
from app.logs import configure


def create_app() -> FastAPI:
    """Wire routers, error handlers and the body limit."""
    settings = get_settings()
    configure(settings.log_level, settings.log_json)
    app = FastAPI(
        title="stockout-cancel",
        version="0.1.0",
        description="Cancels convenience-store payment barcodes at iamport for orders that cannot be shipped.",
        lifespan=iamport_hooks.confirm_pool,
    )
    install_handlers(app)
    operations = (stats.router, scrape.router, iamport_hooks.router, me.router, console.router)
    for router in (events.router, jobs.router, webhooks.router, health.router, *operations):
        # FastAPI 0.16x's include_router nests a router object, which hides the paths from
        # anything reading app.routes; our routers carry their full paths and no router-level
        # options, so their routes go on the app as they are.
        app.router.routes.extend(router.routes)
    app.add_middleware(BodyLimit)
    middleware.install(app)
    openapi.install(app)
    return app


app = create_app()
