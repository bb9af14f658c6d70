"""The operator commands' REST client: the API's URL and key from the environment or
.stockout/env, and every failure as one line (ApiError) instead of a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

ENV_FILE = Path(".stockout") / "env"
TIMEOUT_SECONDS = 30.0


class ApiError(RuntimeError):
    """A configuration, connection or API problem, worded for one line on stderr."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _env_file() -> dict[str, str]:
    values: dict[str, str] = {}
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not name.startswith("#"):
                values[name.strip()] = value.strip().strip("'\"")
    return values


def api_target() -> tuple[str, str]:
    """(url, key): STOCKOUT_API_URL/STOCKOUT_API_KEY, else what `stockout dev` wrote."""
    url, key = os.environ.get("STOCKOUT_API_URL", ""), os.environ.get("STOCKOUT_API_KEY", "")
    if not (url and key):
        written = _env_file()
        url, key = url or written.get("API_URL", ""), key or written.get("API_KEY", "")
    if not (url and key):
        raise ApiError(
            "no API to talk to: set STOCKOUT_API_URL and STOCKOUT_API_KEY, "
            f"or run `stockout dev` in this folder (it writes {ENV_FILE})"
        )
    return url.rstrip("/"), key


def api_request(
    method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
) -> Any:
    """Call the API; the decoded JSON body (None for 204), or ApiError."""
    url, key = api_target()
    try:
        response = httpx.request(
            method,
            url + path,
            json=json,
            params={k: v for k, v in (params or {}).items() if v is not None},
            headers={"Authorization": f"Bearer {key}"},
            timeout=TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the API at {url}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        if not isinstance(problem, dict):
            problem = {}
        code = str(problem.get("code") or "")
        detail = problem.get("detail") or response.reason_phrase
        raise ApiError(
            f"{method} {path}: {response.status_code} {code or 'error'}: {detail}",
            status=response.status_code,
            code=code or None,
        )
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise ApiError(f"{method} {path}: the answer is not JSON") from None
