"""Per-request observability: a request id in every log line, one access line, HTTP metrics.

A pure ASGI middleware (no BaseHTTPMiddleware: it would buffer bodies and break contextvars).
It logs the path alone, never the query string (the iamport hooks carry their token there)
nor any header; the route label is the template (`/v1/jobs/{job_id}`), so metrics stay small.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit import metrics

log = structlog.get_logger("api")
REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,64}$")
UNMATCHED = "<unmatched>"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER and _SAFE_REQUEST_ID.match(value):
            return str(value.decode())
    return uuid.uuid4().hex


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestObservability:
    """Binds request_id, method and path for the request's logs; logs and counts the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        method = str(scope.get("method", ""))
        path = str(scope.get("path", ""))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, method=method, path=path)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = _route(scope)
            metrics.observe_request(method, route, status, elapsed)
            log.info("request", route=route, status=status, duration_ms=round(elapsed * 1000, 2))
            structlog.contextvars.clear_contextvars()


_TOKEN_IN_QUERY = re.compile(r"(?i)(token=)[^&\s\"]*")


class RedactQueryTokens(logging.Filter):
    """Blank `token=` values in uvicorn's access log lines (iamport's hooks carry one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = _TOKEN_IN_QUERY.sub(r"\1[redacted]", record.msg)
        return True


def install(app: Any) -> None:
    """Add the middleware (outermost, so 413s are seen too) and guard uvicorn's access log."""
    app.add_middleware(RequestObservability)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQueryTokens) for f in access.filters):
        access.addFilter(RedactQueryTokens())
