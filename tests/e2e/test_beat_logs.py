"""`celery -A worker beat` logs through the service's JSON handler, and stops without a traceback.

(Celery prints its startup banner straight to the process's original stdout, before any
logging is set up: those lines are the only ones that are not records.)"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from devtools.launch import ROOT, beat_command
from tests.support.processes import service_env, stop

pytestmark = pytest.mark.slow


def test_beat_writes_only_whole_json_records(clean_redis: str, tmp_path: Path) -> None:
    env = service_env(REDIS_URL=clean_redis, LOG_JSON="true", LOG_LEVEL="INFO")
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            beat_command(tmp_path / "schedule", loglevel="INFO"),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(4)  # a few sweep intervals: beat sends its tasks
        finally:
            stop(proc)
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(r["event"] == "beat: Starting..." for r in records)
    assert "Traceback" not in text
    assert all(len(str(r.get("event", "")).strip()) > 1 for r in records)
