"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.kit.db import pool
from app.kit.redis_conn import get_redis

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """200 while the process lives."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Postgres or Redis is unreachable"}})
def readyz() -> JSONResponse:
    """200 only when both Postgres and Redis answer."""
    checks: dict[str, str] = {}
    try:
        with pool().connection() as conn:
            conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["postgres"] = type(exc).__name__
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["redis"] = type(exc).__name__
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
