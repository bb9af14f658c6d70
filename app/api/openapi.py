"""The OpenAPI document, told the truth about errors: RFC 9457 problem details everywhere."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

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
                responses.setdefault("401", _problem("wrong or missing token"))
                responses.setdefault("404", _problem("IAMPORT_WEBHOOK_TOKEN is not configured"))
            else:
                responses.setdefault("401", _problem("missing or unknown API key"))
                responses.setdefault("403", _problem("the key lacks the scope"))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components.update(SCHEMAS)
    return schema


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
