"""The API's dependencies: who is calling, with which scope, and the event loop's connections."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from app.kit.errors import Forbidden
from app.operators.keys import Caller, Scope, authenticate


def require(scope: Scope | None) -> object:
    """A dependency that admits callers holding `scope` (None: any valid key)."""

    async def dependency(request: Request) -> Caller:
        async with loop_conns(request).connection() as conn:
            caller = await authenticate(conn, request.headers.get("authorization"))
        if scope is not None and scope.value not in caller.scopes:
            raise Forbidden(f"this key lacks the scope {scope.value}")
        request.state.caller = caller
        return caller

    return Depends(dependency)


# Any valid key, whatever its scopes (GET /v1/me).
KeyHolder = Annotated[Caller, require(None)]


EventsWriter = Annotated[Caller, require(Scope.EVENTS_WRITE)]


JobsReader = Annotated[Caller, require(Scope.JOBS_READ)]


JobsWriter = Annotated[Caller, require(Scope.JOBS_WRITE)]


WebhooksWriter = Annotated[Caller, require(Scope.WEBHOOKS_WRITE)]


def loop_conns(request: Any) -> AsyncConnectionPool[Any]:
    """The API's event-loop pool, opened by its lifespan (app/main.py)."""
    conns: AsyncConnectionPool[Any] = request.app.state.loop_conns
    return conns
