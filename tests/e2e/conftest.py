"""A real sandbox, a real Celery worker process, real Postgres and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import service_env as process_env
from tests.support.processes import start_worker, stop


@pytest.fixture
def stack_env(
    service_env: dict[str, str], sandbox_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment shared by the in-process API and the worker processes."""
    from tests.support.settings import reset_caches

    env = service_env | {"IAMPORT_BASE_URL": sandbox_url}
    monkeypatch.setenv("IAMPORT_BASE_URL", sandbox_url)
    reset_caches()
    return process_env(**env)


@pytest.fixture
def worker(stack_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    proc = start_worker(stack_env, tmp_path / "worker.log")
    yield proc
    stop(proc)
