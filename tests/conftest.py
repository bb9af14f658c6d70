"""Real Postgres and Redis for every test that asks; nothing of the kind is mocked."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support.stack import migrate, start_postgres, start_redis

pytest_plugins: list[str] = []

TABLES = (
    "webhook_attempts, webhook_messages, webhook_endpoints, attempts, event_jobs, events, jobs, "
    "api_keys"
)


@pytest.fixture(scope="session")
def stack_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stockout-tests-") as d:
        path = Path(d)
        path.chmod(0o755)
        yield path


@pytest.fixture(scope="session")
def postgres_server(stack_dir: Path) -> Iterator[object]:
    pg = start_postgres(stack_dir)
    migrate(pg.url)
    yield pg
    pg.stop("immediate")


@pytest.fixture(scope="session")
def redis_server(stack_dir: Path) -> Iterator[object]:
    r = start_redis(stack_dir)
    yield r
    r.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server: object) -> str:
    return str(postgres_server.url)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def redis_url(redis_server: object) -> str:
    return str(redis_server.url)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    """One iamport sandbox server for the session; each test resets it through `sandbox`."""
    from tests.support.sandbox import running_sandbox

    with running_sandbox(seed=5) as url:
        yield url


@pytest.fixture
def sandbox(sandbox_url: str) -> Iterator[object]:
    """The sandbox's control API, on an empty sandbox without faults."""
    from devtools.sandbox.control import SandboxControl

    with SandboxControl(sandbox_url) as control:
        control.reset()
        yield control
        control.clear_faults()


@pytest.fixture
def clean_db(database_url: str) -> str:
    """An empty database (all tables truncated) for a test that writes."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} CASCADE")
    return database_url


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """An empty Redis for a test that writes."""
    redis.Redis.from_url(redis_url).flushall()
    return redis_url


@pytest.fixture
def service_env(
    monkeypatch: pytest.MonkeyPatch, clean_db: str, clean_redis: str
) -> Iterator[dict[str, str]]:
    """Point the in-process settings, engine and clients at the test servers."""
    from tests.support.settings import reset_caches

    env = {
        "DATABASE_URL": clean_db,
        "REDIS_URL": clean_redis,
        "IAMPORT_WEBHOOK_TOKEN": "hook-secret-token",
        "IAMPORT_IMP_KEY": "sandbox_key",
        "IAMPORT_IMP_SECRET": "sandbox_secret",
        "LOG_JSON": "false",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_caches()
    yield env
    reset_caches()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())


@pytest.fixture
def api(service_env: dict[str, str]) -> Iterator[object]:
    """The FastAPI app in process, on the test Postgres and Redis."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def key(service_env: dict[str, str]) -> str:
    from tests.support.factories import api_key

    return api_key()
