"""A tiny REST client for the `stockout` commands that talk to a running API.

Where: STOCKOUT_API_URL and STOCKOUT_API_KEY, else API_URL and API_KEY lines (KEY=VALUE) in
the file .stockout/env. Every failure is an ApiError with a one-line message (never the key).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

ENV_FILE = Path(".stockout/env")
TIMEOUT_SECONDS = 30.0


class ApiError(Exception):
    """A request that did not succeed, said in one line."""


def _from_file() -> dict[str, str]:
    try:
        lines = ENV_FILE.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def api_location() -> tuple[str, str]:
    """(base URL, API key) from the environment or .stockout/env."""
    url = os.environ.get("STOCKOUT_API_URL")
    key = os.environ.get("STOCKOUT_API_KEY")
    if not url or not key:
        saved = _from_file()
        url = url or saved.get("API_URL")
        key = key or saved.get("API_KEY")
    if not url or not key:
        raise ApiError(
            "set STOCKOUT_API_URL and STOCKOUT_API_KEY (or API_URL and API_KEY in .stockout/env)"
        )
    return url.rstrip("/"), key


def api_request(
    method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
) -> Any:
    """Call the API; the decoded JSON answer (None when empty), or ApiError."""
    base, key = api_location()
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        response = httpx.request(
            method,
            base + path,
            json=json,
            params=query,
            headers={"Authorization": f"Bearer {key}"},
            timeout=TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the API at {base}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = f"{problem.get('code', 'error')}: {problem.get('detail', '')}"
        except (ValueError, AttributeError):
            detail = response.reason_phrase
        raise ApiError(f"HTTP {response.status_code} {detail}".strip())
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise ApiError("the API answered something that is not JSON") from None
