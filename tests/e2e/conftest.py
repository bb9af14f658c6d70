"""A real sandbox, a real Celery worker process, real Postgres and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.processes import service_env, start_worker, stop


@pytest.fixture
def stack_env(
    service_env: dict[str, str], sandbox_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment shared by the in-process API and the worker processes."""
    from tests.support.settings import reset_caches

    env = service_env | {"IAMPORT_BASE_URL": sandbox_url}
    monkeypatch.setenv("IAMPORT_BASE_URL", sandbox_url)
    reset_caches()
    return service_env_for_processes(env)


def service_env_for_processes(env: dict[str, str]) -> dict[str, str]:
    return service_env(**env)


@pytest.fixture
def worker(stack_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    proc = start_worker(stack_env, tmp_path / "worker.log")
    yield proc
    stop(proc)


def job_rows(db: str) -> list[tuple[str, str, str | None, int, dict[str, object] | None]]:
    with psycopg.connect(db) as conn:
        return [
            tuple(r)
            for r in conn.execute(  # type: ignore[misc]
                "SELECT imp_uid, status, cancellation->>'cancelled_by', attempts, error FROM jobs ORDER BY imp_uid"
            )
        ]
