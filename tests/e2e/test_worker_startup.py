"""The worker refuses to start without iamport credentials rather than fail every job."""

from __future__ import annotations

import subprocess
import sys

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
