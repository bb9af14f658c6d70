"""What a real worker process writes to its streams reaches its log as one record per text.

A traceback once became 1,881 records of one character each (Celery's stdout/stderr
redirection logs every write apart, and the interpreter writes a traceback's ^^^ markers one
character at a time). Here a real `celery -A worker worker` (with beat inside) runs tasks that
write, print tracebacks and raise, in its main process and in its job processes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from app.kit.dispatch import QUEUE
from tests.support.noise import NOISES
from tests.support.noisy_tasks import NOISE_TASK, RAISE_TASK
from tests.support.processes import start_worker, stop, wait_until

pytestmark = pytest.mark.slow
_n = itertools.count()


@pytest.fixture
def noisy_worker(stack_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Path, Celery]]:
    log = tmp_path / "worker.log"
    env = stack_env | {"LOG_JSON": "true"}
    proc = start_worker(env, log, extra=("-I", "tests.support.noisy_tasks"))
    sender = Celery("noise-sender", broker=stack_env["REDIS_URL"])
    try:
        yield log, sender
    finally:
        sender.close()
        stop(proc)
    # Nor did stopping it write a record a character (or a blank) long, or a traceback.
    assert [r for r in records(log) if len(str(r.get("event", "")).strip()) <= 1] == []
    stray = [
        r for r in records(log) if "Traceback" in json.dumps(r) and "boom m" not in json.dumps(r)
    ]
    assert stray == []


def records(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def mentioning(log: Path, marker: str) -> list[dict[str, Any]]:
    return [r for r in records(log) if marker in json.dumps(r)]


def settled(log: Path, marker: str) -> list[dict[str, Any]]:
    """The records that mention `marker`, once some came and no more came for a while."""
    wait_until(lambda: bool(mentioning(log, marker)), 30, f"a record mentioning {marker}")
    seen = -1
    while (now := len(mentioning(log, marker))) != seen:
        seen = now
        time.sleep(0.5)
    return mentioning(log, marker)


def text_of(record: dict[str, Any]) -> str:
    return str(record.get("event", "")) + "\n" + str(record.get("exception", ""))


@pytest.mark.parametrize("in_child", [False, True], ids=["main", "child"])
def test_each_write_to_stderr_is_one_record_with_the_whole_text(
    noisy_worker: tuple[Path, Celery], in_child: bool
) -> None:
    log, sender = noisy_worker
    for noise in NOISES:
        marker = f"m{next(_n)}x{noise}"
        sender.send_task(NOISE_TASK, args=[noise, marker, in_child], queue=QUEUE)
        [record] = settled(log, marker)
        text = text_of(record)
        if noise == "print":
            assert record["event"] == f"{marker}\nb\nc" and record["level"] == "warning"
        elif noise == "chars":
            assert record["event"] == f"{marker}\nsecond line\n    ^^^^"
        else:
            assert "Traceback (most recent call last):" in text, record
            assert f"ValueError: boom {marker}" in text, record
            assert "_boom(marker)" in text or "in _boom" in text


def test_a_task_that_raises_is_one_record_with_its_traceback(
    noisy_worker: tuple[Path, Celery],
) -> None:
    log, sender = noisy_worker
    marker = f"m{next(_n)}xraise"
    sender.send_task(RAISE_TASK, args=[marker], queue=QUEUE)
    [record] = settled(log, marker)
    assert record["level"] == "error"
    assert record["exception"].startswith("Traceback (most recent call last):\n")
    assert record["exception"].endswith(f"ValueError: boom {marker}")
