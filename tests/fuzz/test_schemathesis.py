"""Schemathesis over our own OpenAPI document, in process, on the real test Postgres and Redis.

Every operation gets generated valid and invalid input with a valid key (and the iamport
hooks their token). Checks: no 5xx ever, and
every answer that the document describes matches its schema. Bounded: 30 examples per
operation and mode (FUZZ_MAX_EXAMPLES to change it), no deadline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.support.factories import auth
from tests.support.sandbox import running_sandbox

HOOK_TOKEN = "hook-secret-token"  # tests/conftest.py's IAMPORT_WEBHOOK_TOKEN
# FUZZ_MAX_EXAMPLES=500 for a longer hunt; 30 keeps `make test` well under a minute here.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "30"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def iamport_url() -> Iterator[str]:
    """A sandbox, so the notification hook's lookups reach an iamport that answers."""
    with running_sandbox(seed=3) as url:
        yield url


def _operations() -> list[Any]:
    from app.main import create_app

    paths = create_app().openapi()["paths"]
    out = []
    for path, item in paths.items():
        for method, op in item.items():
            out.append(pytest.param(method.upper(), path, GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):  # else nothing can be invalid
                out.append(pytest.param(method.upper(), path, GenerationMode.NEGATIVE))
    return out


@pytest.fixture
def api_schema(
    api: Any, iamport_url: str, monkeypatch: pytest.MonkeyPatch
) -> schemathesis.BaseSchema:
    from tests.support.settings import reset_caches

    monkeypatch.setenv("IAMPORT_BASE_URL", iamport_url)
    reset_caches()
    return schemathesis.openapi.from_asgi("/openapi.json", api.app)


def problem_details(response: Any) -> None:
    """Errors are RFC 9457 problem details with a stable code."""
    content_type = response.headers.get("content-type") or [""]
    assert content_type[0].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == response.status_code, body
    assert isinstance(body["code"], str) and body["code"], body
    assert isinstance(body["title"], str) and "detail" in body, body
    if response.status_code == 422:
        assert body["code"] in ("validation_error", "invalid_url", "unknown_account"), body
        assert isinstance(body["errors"], list), body


# One test per operation and mode (schemathesis' own pytest loader trips over pytest 9's
# internals, so the operations are parametrized here and each strategy runs under Hypothesis).
@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_no_server_errors_and_documented_shapes(
    method: str, path: str, mode: GenerationMode, api_schema: schemathesis.BaseSchema, key: str
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: schemathesis.Case[Any]) -> None:
        if case.path.startswith("/v1/iamport/"):
            case.query = {**(case.query or {}), "token": HOOK_TOKEN}
        response = case.call(headers=auth(key))
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            problem_details(response)

    fuzz()
