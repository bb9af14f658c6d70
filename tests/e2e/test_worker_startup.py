"""The worker refuses to start without iamport credentials rather than fail every job, and
the worker and beat refuse a bad accounts file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.launch import ROOT
from tests.support.processes import service_env


def test_worker_without_credentials_exits_with_a_clear_message(
    redis_url: str, database_url: str
) -> None:
    env = service_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    env.pop("IAMPORT_IMP_KEY")
    env.pop("IAMPORT_IMP_SECRET")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "threads"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "IAMPORT_IMP_KEY and IAMPORT_IMP_SECRET must be set" in result.stdout + result.stderr


BAD_FILE = '[accounts.main]\napi = "v1"\nimp_key = "k"\nimp_secret_file = "/nonexistent/secret"\n'
EXPECTED = "account main: imp_secret: file /nonexistent/secret cannot be read"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["worker", "-P", "threads"], id="worker"),
        pytest.param(["worker", "-P", "threads", "-B", "-s", "{schedule}"], id="worker-with-beat"),
        pytest.param(["beat", "-s", "{schedule}"], id="beat"),
    ],
)
def test_a_bad_accounts_file_stops_the_worker_and_beat_with_one_line(
    redis_url: str, database_url: str, tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(BAD_FILE)
    env = service_env(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        ACCOUNTS_FILE=str(path),
        # Celery warns a root user on stderr; that line is not ours.
        PYTHONWARNINGS="ignore:You're running the worker with superuser",
    )
    schedule = str(tmp_path / "beat-schedule")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            *(a.format(schedule=schedule) for a in command),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    # beat sends what a process prints to its log: the line may come with a log prefix.
    assert f"cannot start: ACCOUNTS_FILE {path}: {EXPECTED}" in lines[0]
