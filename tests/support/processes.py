"""Start the service's processes the way an operator does: `celery -A worker worker`, uvicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devtools.launch import ROOT, worker_command


def service_env(**overrides: str) -> dict[str, str]:
    """The environment for service processes: fast retries, quick sweeps, plain logs."""
    env = dict(os.environ)
    env.update(
        IAMPORT_TIMEOUT_SECONDS="1",
        IAMPORT_MAX_RPS="1000",
        CANCEL_RETRY_BASE_SECONDS="0.2",
        CANCEL_RETRY_MAX_SECONDS="1",
        # Longer than any call the sandbox keeps working on after its caller hung up.
        CANCEL_SETTLE_SECONDS="5",
        SWEEP_INTERVAL_SECONDS="0.5",
        DISPATCH_GRACE_SECONDS="2",
        IAMPORT_IMP_KEY="sandbox_key",
        IAMPORT_IMP_SECRET="sandbox_secret",
        LOG_JSON="true",
        LOG_LEVEL="WARNING",
    )
    env.update(overrides)
    return env


def start_worker(
    env: dict[str, str],
    log: Path,
    *,
    concurrency: int = 8,
    beat: bool = True,
    name: str = "w1",
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    schedule = log.with_suffix(".beat") if beat else None
    args = [
        *worker_command(
            concurrency=concurrency, name=name, loglevel="WARNING", beat_schedule=schedule
        ),
        "--without-mingle",
        "--without-gossip",
        *extra,
    ]
    out = log.open("ab")
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll a condition; fail with `what` if it does not hold in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
