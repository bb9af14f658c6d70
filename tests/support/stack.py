"""Session-wide real servers for the tests: embedded Postgres and Redis, migrated once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devtools.embedded import EmbeddedPostgres, EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]


def migrate(database_url: str) -> None:
    """Run `alembic upgrade head` exactly as an operator would."""
    env = dict(os.environ, DATABASE_URL=database_url)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed:\n{result.stderr}")


def start_postgres(base: Path) -> EmbeddedPostgres:
    pg = EmbeddedPostgres(base / "pg", fast_unsafe=True)
    pg.start()
    return pg


def start_redis(base: Path) -> EmbeddedRedis:
    r = EmbeddedRedis(base / "redis")
    r.start()
    return r
