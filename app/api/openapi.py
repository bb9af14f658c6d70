"""The OpenAPI document (problem details for every error, the key scheme, an example on every
schema) and the pages that show it, served from the package so they work offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse

from app.jobs.status import JobStatus

PROBLEM = "#/components/schemas/Problem"
VALIDATION_PROBLEM = "#/components/schemas/ValidationProblem"
PUBLIC = ("/healthz", "/readyz", "/metrics")

_problem_properties: dict[str, Any] = {
    "type": {"type": "string"},
    "title": {"type": "string"},
    "status": {"type": "integer"},
    "detail": {"type": "string"},
    "code": {"type": "string", "description": "stable, machine-readable"},
}
SCHEMAS: dict[str, Any] = {
    "Problem": {
        "title": "Problem",
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": _problem_properties,
    },
    "ValidationProblem": {
        "title": "ValidationProblem",
        "type": "object",
        "required": ["type", "title", "status", "detail", "code", "errors"],
        "properties": {
            **_problem_properties,
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {"type": "array", "items": {"type": "string"}},
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
        },
    },
}


SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from `stockout keys create NAME --scope ...`",
    },
    "iamportToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "IAMPORT_WEBHOOK_TOKEN, in the URLs given to iamport",
    },
}

_JOB_ID = "3f1c9a52-8d4e-4b7a-9c1e-2a6f0d5b7e93"
_CANCELLATION = {
    "pg_tid": "StdpayCARDINIpayTest20261125150102123456",
    "amount": 12000,
    "cancelled_at": "2026-11-25T06:00:03Z",
    "reason": "out of stock",
    "receipt_url": "https://iniweb.inicis.com/receipt/StdpayCARDINIpayTest20261125150102123456",
    "cancelled_by": "service",
}
_ERROR = {"http_status": 200, "code": -1, "message": "already paid"}
_JOB = {
    "id": _JOB_ID,
    "account": "main",
    "payment_id": "imps_410124208172",
    "imp_uid": "imps_410124208172",
    "merchant_uid": "order-1001",
    "status": "cancelled",
    "pay_method": "cvs",
    "on_paid": "hold",
    "attempts": 1,
    "next_attempt_at": None,
    "payment_status": "cancelled",
    "cancellation": _CANCELLATION,
    "refund": None,
    "error": None,
    "drift": None,
    "event_ids": ["inv-2026-11-25-0001"],
    "created_at": "2026-11-25T06:00:01Z",
    "updated_at": "2026-11-25T06:00:03Z",
    "finished_at": "2026-11-25T06:00:03Z",
}
_ATTEMPT = {
    "n": 1,
    "call": "cancel",
    "started_at": "2026-11-25T06:00:02Z",
    "duration_ms": 182,
    "http_status": 200,
    "code": 0,
    "message": None,
    "outcome": "cancelled",
}
_REFUND = {
    "pg_tid": "StdpayCARDINIpayTest20261125160512654321",
    "amount": 12000,
    "cancelled_at": "2026-11-25T07:05:12Z",
    "reason": "out of stock",
    "receipt_url": "https://iniweb.inicis.com/receipt/StdpayCARDINIpayTest20261125160512654321",
    "refunded_by": "service",
}
# A cancelled job whose payment a later reconciliation saw paid: kept, for a person to clear.
_DRIFT = {
    "kind": "cancelled_but_paid",
    "seen_status": "paid",
    "seen_at": "2026-11-25T06:15:00Z",
    "cleared_by": None,
    "cleared_at": None,
    "note": None,
}
# A payment that was paid before we got to it: held for a person, who asked for the refund.
_REFUNDED_JOB = {
    **_JOB,
    "id": "8b2e4d17-5c3a-4f6e-b1d9-7a0c2e9f4b68",
    "payment_id": "imps_410124208173",
    "imp_uid": "imps_410124208173",
    "merchant_uid": "order-1002",
    "status": JobStatus.REFUNDED.value,
    "attempts": 3,
    "payment_status": "cancelled",
    "cancellation": None,
    "refund": _REFUND,
    "updated_at": "2026-11-25T07:05:12Z",
    "finished_at": "2026-11-25T07:05:12Z",
}
_KEY_ID = "d9d7c115-1449-4a8d-af1e-8ff00d1e03ce"
_ACTION = {
    "at": "2026-11-25T07:05:11Z",
    "action": "refund",
    "key_id": _KEY_ID,
    "key_name": "ops-console",
    "job_id": "8b2e4d17-5c3a-4f6e-b1d9-7a0c2e9f4b68",
    "endpoint_id": None,
    "detail": {"from": JobStatus.NEEDS_REFUND.value},
}
_EVENT_SUMMARY = {
    "account": "main",
    "event_id": "inv-2026-11-25-0001",
    "sku": "SKU-123",
    "reason": "out of stock",
    "occurred_at": "2026-11-25T06:00:00Z",
    "received_at": "2026-11-25T06:00:01Z",
    "jobs_total": 2,
    "jobs_terminal": 1,
    "counts": {JobStatus.CANCELLED.value: 1, JobStatus.NEEDS_REFUND.value: 1},
}
_MINUTE = {
    "minute": "2026-11-25T06:00:00Z",
    "counts": {JobStatus.CANCELLED.value: 12, JobStatus.NEEDS_REFUND.value: 1},
}
_CALLS = {"call": "cancel", "outcome": "ok", "count": 12}
_LATENCY = {
    "call": "cancel",
    "count": 13,
    "p50_ms": 178.0,
    "p95_ms": 412.5,
    "p99_ms": 688.1,
    "max_ms": 702.0,
}
_ENDPOINT_ID = "61822c39-60ed-4c13-acc2-371b98073593"
_ENDPOINT = {
    "id": _ENDPOINT_ID,
    "account": "main",
    "url": "https://orders.example.com/hooks/stockout",
    "event_types": ["job.cancelled", "job.needs_refund", "job.refunded", "job.failed"],
    "description": "order service: release or refund the order",
    "enabled": True,
    "created_at": "2026-11-20T09:30:00Z",
}
_DELIVERY = {
    "message_id": "msg_06611389bd405fa339f7c64effd6533f",
    "event_type": "job.cancelled",
    "job_id": _JOB_ID,
    "event_id": None,
    "status": "delivered",
    "attempts": 1,
    "last_http_status": 204,
    "last_error": None,
    "next_attempt_at": None,
    "created_at": "2026-11-25T06:00:03Z",
    "delivered_at": "2026-11-25T06:00:03Z",
}
# One realistic example per schema: Swagger UI and ReDoc show them, docs/api.md prints them.
EXAMPLES: dict[str, Any] = {
    "PaymentRef": {"imp_uid": "imps_410124208172", "merchant_uid": "order-1001"},
    "EventCreate": {
        "account": "main",
        "event_id": "inv-2026-11-25-0001",
        "sku": "SKU-123",
        "reason": "out of stock",
        "occurred_at": "2026-11-25T06:00:00Z",
        "payments": [{"imp_uid": "imps_410124208172", "merchant_uid": "order-1001"}],
        "on_paid": "hold",
    },
    "Cancellation": _CANCELLATION,
    "Refund": _REFUND,
    "Drift": _DRIFT,
    "DriftClear": {"note": "customer paid at the till after the cancel; refunded by phone"},
    "JobStatus": JobStatus.NEEDS_REFUND.value,
    "UpstreamError": _ERROR,
    "JobPublic": _JOB,
    "EventPublic": {
        "account": "main",
        "event_id": "inv-2026-11-25-0001",
        "sku": "SKU-123",
        "reason": "out of stock",
        "occurred_at": "2026-11-25T06:00:00Z",
        "received_at": "2026-11-25T06:00:01Z",
        "jobs": [_JOB],
    },
    "JobPage": {"items": [_REFUNDED_JOB, _JOB], "next_cursor": None},
    "AttemptPublic": _ATTEMPT,
    "AttemptList": {
        "items": [
            {**_ATTEMPT, "call": "token", "duration_ms": 41, "outcome": "ok"},
            _ATTEMPT,
        ]
    },
    "Stats": {
        "counts": {
            JobStatus.QUEUED.value: 3,
            JobStatus.RETRY_WAIT.value: 1,
            JobStatus.CANCELLED.value: 1520,
            JobStatus.NEEDS_REFUND.value: 2,
        },
        "oldest_waiting_age_seconds": 4.2,
        "finished_last_minute": {"cancelled": 12},
        "finished_last_hour": {JobStatus.CANCELLED.value: 640, JobStatus.NEEDS_REFUND.value: 1},
    },
    "ActionPublic": _ACTION,
    "ActionList": {
        "items": [
            {
                **_ACTION,
                "at": "2026-11-25T06:40:27Z",
                "action": "retry",
                "detail": {"from": JobStatus.FAILED.value},
            },
            _ACTION,
        ]
    },
    "CallerPublic": {
        "id": _KEY_ID,
        "name": "ops-console",
        "scopes": ["jobs:read", "jobs:write", "webhooks:write"],
        "accounts": ["main"],
    },
    "EventSummary": _EVENT_SUMMARY,
    "EventPage": {
        "items": [_EVENT_SUMMARY],
        "next_cursor": "ZXZlbnRzfDIwMjYtMTEtMjVUMDY6MDA6MDEuMjA0NTE4KzAwOjAwfGludi0yMDI2LTExLTI1LTAwMDE",
    },
    "MinuteCounts": _MINUTE,
    "UpstreamCalls": _CALLS,
    "UpstreamLatency": _LATENCY,
    "Activity": {
        "window_minutes": 3,
        "finished_per_minute": [
            {"minute": "2026-11-25T05:58:00Z", "counts": {}},
            {"minute": "2026-11-25T05:59:00Z", "counts": {JobStatus.CANCELLED.value: 4}},
            _MINUTE,
        ],
        "upstream_calls": [
            {"call": "cancel", "outcome": "ok", "count": 16},
            {"call": "cancel", "outcome": "timeout", "count": 1},
            {"call": "lookup", "outcome": "ok", "count": 17},
            {"call": "token", "outcome": "ok", "count": 1},
        ],
        "upstream_latency": [
            {**_LATENCY, "count": 17},
            {
                "call": "lookup",
                "count": 17,
                "p50_ms": 64.0,
                "p95_ms": 131.2,
                "p99_ms": 158.4,
                "max_ms": 163.0,
            },
            {
                "call": "token",
                "count": 1,
                "p50_ms": 41.0,
                "p95_ms": 41.0,
                "p99_ms": 41.0,
                "max_ms": 41.0,
            },
        ],
        "upstream_sample_size": 35,
        "upstream_sample_capped": False,
        "upstream_since": "2026-11-25T05:58:02Z",
    },
    "EndpointCreate": {
        "account": "main",
        "url": "https://orders.example.com/hooks/stockout",
        "event_types": ["job.cancelled", "job.needs_refund", "job.refunded", "job.failed"],
        "description": "order service: release or refund the order",
    },
    "EndpointPublic": _ENDPOINT,
    "EndpointWithSecret": {
        **_ENDPOINT,
        "secret": "whsec_3hTCQEFYDDvFTpZp81IPT54km2+WaeNjphUApRLMTbw=",
    },
    "EndpointList": {"items": [_ENDPOINT]},
    "Delivery": _DELIVERY,
    "DeliveryPage": {
        "items": [
            {
                **_DELIVERY,
                "message_id": "msg_06611472bad97218289bc0a7c536067d",
                "event_type": "job.refunded",
                "job_id": _REFUNDED_JOB["id"],
                "status": "pending",
                "attempts": 2,
                "last_http_status": 503,
                "last_error": "HTTP 503",
                "next_attempt_at": "2026-11-25T07:05:20Z",
                "created_at": "2026-11-25T07:05:12Z",
                "delivered_at": None,
            },
            _DELIVERY,
        ],
        "next_cursor": None,
    },
    "ReplayRequest": {"since": "2026-11-25T06:00:00Z"},
    "Replayed": {"messages": 2},
    "Problem": {
        "type": "about:blank",
        "title": "Conflict",
        "status": 409,
        "detail": "event inv-2026-11-25-0001 is known with different content",
        "code": "event_conflict",
    },
    "ValidationProblem": {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "the request is not valid",
        "code": "validation_error",
        "errors": [
            {
                "loc": ["body", "payments", "0", "imp_uid"],
                "msg": "String should match pattern '^[A-Za-z0-9_\\-]+$'",
                "type": "string_pattern_mismatch",
            }
        ],
    },
}


def _problem(description: str, ref: str = PROBLEM) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": ref}}},
    }


def rewrite(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error answer as problem details; 401/403/413/503 where they can happen."""
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in list(responses.items()):
                if status.isdigit() and int(status) >= 400:
                    ref = VALIDATION_PROBLEM if status == "422" else PROBLEM
                    responses[status] = _problem(response.get("description", "error"), ref)
            if path in PUBLIC:
                continue
            responses.setdefault("413", _problem("request body over 1 MiB"))
            responses.setdefault("503", _problem("the database is unreachable (Retry-After)"))
            if path.startswith("/v1/iamport/"):
                operation.setdefault("security", [{"iamportToken": []}])
                responses.setdefault("401", _problem("wrong or missing token"))
                responses.setdefault("404", _problem("IAMPORT_WEBHOOK_TOKEN is not configured"))
            else:
                operation.setdefault("security", [{"apiKey": []}])
                responses.setdefault("401", _problem("missing or unknown API key"))
                responses.setdefault("403", _problem("the key lacks the scope"))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components.update(SCHEMAS)
    for name, example in EXAMPLES.items():
        if name in components and "examples" not in components[name]:
            components[name]["examples"] = [example]
    schema["components"]["securitySchemes"] = SECURITY_SCHEMES
    return schema


def _swagger_assets() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


STATIC = Path(__file__).resolve().parents[1] / "static"
ASSETS = {
    "swagger-ui-bundle.js": lambda: _swagger_assets() / "swagger-ui-bundle.js",
    "swagger-ui.css": lambda: _swagger_assets() / "swagger-ui.css",
    "favicon-32x32.png": lambda: _swagger_assets() / "favicon-32x32.png",
    "redoc.standalone.js": lambda: STATIC / "redoc" / "redoc.standalone.js",
}


def install_docs(app: FastAPI) -> None:
    """/docs and /redoc from files in the package: no CDN, so they work offline."""
    assets = "/docs/assets"

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon-32x32.png",
            with_google_fonts=False,
        )

    @app.get(assets + "/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        where = ASSETS.get(name)
        if where is None:
            raise HTTPException(404)
        return FileResponse(where(), headers={"Cache-Control": "public, max-age=86400"})


def install(app: FastAPI) -> None:
    """Serve the rewritten document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = rewrite(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
