"""Serve the console's files from the package, with a strict Content-Security-Policy.

The console holds no server-side session: the page keeps the API key in sessionStorage and
sends it as `Authorization: Bearer` with each fetch. A browser never attaches that header on
its own, so a cross-site form or image request reaches the API without credentials and is
refused (401): the actions are safe from CSRF by construction, with no token to manage.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(tags=["console"], include_in_schema=False)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _walk(folder: Traversable, prefix: str = "") -> dict[str, Traversable]:
    found: dict[str, Traversable] = {}
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            found |= _walk(entry, f"{name}/")
        elif any(name.endswith(ext) for ext in MEDIA_TYPES):
            found[name] = entry
    return found


# Only files shipped in the package can be named: the request path is a key into this table,
# never joined to a filesystem path.
ASSETS = _walk(files("app.console") / "static")


def _file(name: str) -> Response:
    entry = ASSETS.get(name)
    if entry is None:
        return Response("not found", status_code=404, headers=SECURITY_HEADERS)
    media_type = MEDIA_TYPES[name[name.rindex(".") :]]
    return Response(entry.read_bytes(), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/console")
def console_page() -> Response:
    """The console's single page."""
    return _file("index.html")


@router.get("/console/{asset:path}")
def console_asset(asset: str) -> Response:
    """One of the console's scripts or stylesheets (or the page itself for `/console/`)."""
    return _file(asset or "index.html")
