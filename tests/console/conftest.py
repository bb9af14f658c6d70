"""A real uvicorn API on the test Postgres and Redis, and Debian's Chromium driven by Playwright.

Skipped, with the reason, where Chromium or Playwright is missing. No browser is downloaded:
Playwright launches the system's `chromium` (or $CHROMIUM).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from devtools.embedded import free_port
from devtools.launch import ROOT, api_command
from tests.support.processes import service_env as process_env
from tests.support.processes import stop, wait_until

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
# Set CONSOLE_SCREENSHOTS=1 to refresh the README's pictures in docs/console/.
SCREENSHOTS = ROOT / "docs" / "console"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if CHROMIUM is None:
        reason = "Chromium is not installed (apt-get install -y chromium, or set CHROMIUM=/path)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Playwright for Python is not installed (pip install playwright; no browser download needed)"
    for item in items:
        if "tests/console/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.slow)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def console_url(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`uvicorn app.main:app` on a free port, as an operator runs it."""
    port = free_port()
    # Private URLs allowed: the webhook test registers an endpoint on loopback.
    env = process_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        LOG_JSON="true",
        WEBHOOK_ALLOW_PRIVATE_URLS="true",
    )
    log = (tmp_path_factory.mktemp("console") / "api.log").open("ab")
    proc = subprocess.Popen(
        api_command(port),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("the API exited; see its log")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 30, "the API to answer /healthz")
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@dataclass
class Tab:
    """A browser page that remembers every request it made and every console error."""

    page: Any
    base: str
    requests: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def sign_in(self, key: str) -> None:
        self.page.goto(f"{self.base}/console")
        self.page.fill("#key", key)
        self.page.click("#signin button[type=submit]")
        self.page.wait_for_selector("#nav:not([hidden])")

    def go(self, hash_route: str) -> None:
        self.page.evaluate("h => { location.hash = h; }", hash_route)

    def shot(self, name: str) -> None:
        if os.environ.get("CONSOLE_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def tab(browser: Any, console_url: str) -> Iterator[Tab]:
    context = browser.new_context(
        viewport={"width": 1360, "height": 860}, locale="en-US", timezone_id="UTC"
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    t = Tab(page, console_url)
    page.on("request", lambda r: t.requests.append(r))
    page.on("console", lambda m: t.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: t.errors.append(str(e)))
    yield t
    context.close()
    # Nothing the console does may trip its own Content-Security-Policy.
    assert not [e for e in t.errors if "Content Security Policy" in e], t.errors
