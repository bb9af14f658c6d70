"""Problem details (RFC 9457): how the API answers every error, domain or framework."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import DatabaseError, InterfaceError, OperationalError
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.kit.errors import DB_RETRY_AFTER_SECONDS, DomainError

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An RFC 9457 problem details response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _jsonable_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Validation errors can carry the offending input (bytes, NUL bytes, huge strings): keep
    # only what a caller needs to fix the request, and never echo the input back.
    out = []
    for err in exc.errors():
        out.append(
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
        )
    return out


def install_handlers(app: FastAPI) -> None:
    """Route every error the API can meet to one problem-details renderer."""

    @app.exception_handler(DomainError)
    async def _problem(_: Request, exc: DomainError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(
            422, "validation_error", "the request is not valid", errors=_jsonable_errors(exc)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's own 400 is a body it could not decode (bad UTF-8, nesting too deep):
            # for callers that is one more validation error.
            return problem(
                422,
                "validation_error",
                "the request body could not be parsed",
                errors=[{"loc": ["body"], "msg": "unparseable body", "type": "body_unparseable"}],
            )
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem(exc.status_code, code, detail, dict(exc.headers or {}))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        # Unreachable, restarting, a dropped connection or a pool with none free: all pass.
        return problem(
            503,
            "database_unavailable",
            "the database is unreachable; try again shortly",
            {"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
        )

    @app.exception_handler(DatabaseError)
    async def _db_error(_: Request, exc: DatabaseError) -> JSONResponse:
        # Input is validated before it reaches a statement, so this is the database's trouble
        # (a timeout, a cancelled query), never the caller's: a 503 they may retry.
        return problem(
            503,
            "database_error",
            "the database could not complete the request; try again",
            {"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
        )
