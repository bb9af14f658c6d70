"""Test-only tasks, loaded into a real worker with `-I tests.support.noisy_tasks`."""

from __future__ import annotations

from tests.support.noise import _boom, make_noise
from worker.celery_app import app
from worker.runner import RUNNER

NOISE_TASK = "tests.noise"
RAISE_TASK = "tests.raise"


@app.task(name=NOISE_TASK)
def noise(noise: str, marker: str, in_child: bool) -> str:
    if not in_child:
        return make_noise(noise, marker)
    if RUNNER.children is None:
        raise RuntimeError("this worker runs no job processes (one core)")
    return RUNNER.children.submit(make_noise, noise, marker).result(timeout=30)


@app.task(name=RAISE_TASK)
def fail(marker: str) -> None:
    _boom(marker)  # Celery logs the task's exception with its traceback
