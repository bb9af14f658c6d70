"""Every route needs an API key, except the few that must not: a new route cannot forget."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from app.main import create_app

# The gateways' callbacks carry no API key: V1's by a URL token, V2's by a signature (their own
# tests show what they refuse).
OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/iamport/cvs-confirm",
    "/v1/iamport/notifications",
    "/v1/portone/webhooks/{account}",
}
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/docs/assets/{name}"}
# The console's static page and files: public, they hold no data (the page asks for a key).
CONSOLE = {"/console", "/console/{asset:path}"}


def _concrete(path: str) -> str:
    return re.sub(
        r"\{(\w+)(:\w+)?\}", lambda m: str(uuid.uuid4()) if "id" in m.group(1) else "x", path
    )


def all_routes(routes: list[Any]) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route, including those of included routers at any depth."""
    out: list[tuple[str, set[str]]] = []
    for route in routes:
        if hasattr(route, "effective_candidates"):  # FastAPI's included router (0.16x)
            out += all_routes(route.effective_candidates())
        elif hasattr(route, "original_route"):  # one route of an included router
            out.append((route.path, set(getattr(route.original_route, "methods", None) or ())))
        elif isinstance(route, APIRoute | Route):
            out.append((route.path, set(route.methods or ())))
        else:
            raise AssertionError(f"unexpected route {route!r}: teach this walk about it")
    return out


def test_the_walk_sees_every_documented_route() -> None:
    app = create_app()
    walked = {path for path, _ in all_routes(app.routes)}
    assert set(app.openapi()["paths"]) <= walked


def test_every_route_but_the_open_ones_needs_a_key(api: TestClient) -> None:
    app = create_app()
    checked = 0
    for path, methods in all_routes(app.routes):
        if path in OPEN | DOCS | CONSOLE:
            continue
        for method in methods - {"HEAD", "OPTIONS"}:
            url = _concrete(path)
            r = api.request(method, url, json={})
            assert r.status_code == 401, f"{method} {path} answered {r.status_code}"
            assert r.json()["code"] == "unauthorized"
            r = api.request(method, url, json={}, headers={"Authorization": "Bearer sk_nope_nope"})
            assert r.status_code == 401, f"{method} {path} took an unknown key"
            checked += 1
    assert checked >= 6  # events x2, jobs x4, stats


def test_the_open_routes_are_the_ones_we_know(api: TestClient) -> None:
    paths = {path for path, _ in all_routes(create_app().routes)}
    assert OPEN <= paths
    assert api.get("/healthz").status_code == 200
    assert api.get("/metrics").status_code == 200
