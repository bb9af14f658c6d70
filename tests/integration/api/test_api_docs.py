"""The API's documents: docs/api.md is current, /docs and /redoc work offline, the OpenAPI
document has the key scheme and a valid example on every schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema_rs
from fastapi.testclient import TestClient

from devtools import apidoc

ROOT = Path(__file__).resolve().parents[3]
PUBLIC = {"/healthz", "/readyz", "/metrics"}


def test_docs_api_md_is_current() -> None:
    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == apidoc.current(), "docs/api.md is stale: run `make docs`"


def test_pages_load_their_assets_from_the_service(api: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = api.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html)
        assert urls, page
        external = [u for u in urls if u.startswith(("http:", "https:", "//"))]
        assert external == [], f"{page} loads {external}"
        for url in urls:
            if url.startswith("/docs/assets/"):
                r = api.get(url)
                assert r.status_code == 200 and len(r.content) > 500, url
    assert api.get("/docs/assets/../../config.py").status_code == 404
    assert api.get("/docs/assets/nope.js").status_code == 404


def test_every_keyed_operation_declares_the_bearer_scheme(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["apiKey"]["description"],
    }
    for path, operations in doc["paths"].items():
        for op in operations.values():
            if path in PUBLIC:
                assert "security" not in op, path
            elif path.startswith("/v1/iamport/"):
                assert op["security"] == [{"iamportToken": []}], path
            else:
                assert op["security"] == [{"apiKey": []}], path


def test_every_schema_has_an_example_that_validates(api: TestClient) -> None:
    doc: dict[str, Any] = api.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        examples = schema.get("examples")
        assert examples, f"schema {name} has no example"
        validator = jsonschema_rs.validator_for(
            {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        )
        for example in examples:
            errors = [e.message for e in validator.iter_errors(example)]
            assert errors == [], f"{name}: {errors}"
    event = schemas["EventCreate"]["examples"][0]
    assert event["event_id"] == "inv-2026-11-25-0001"
    assert event["payments"][0]["imp_uid"] == "imps_410124208172"
