"""The worker's process pool: calls run in children on threads; a dead child fails its calls."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import wait

import pytest

from worker.process_pool import ChildLost, ThreadedProcessPool


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail() -> None:
    raise ValueError("from the child")


@pytest.fixture
def pool() -> Iterator[ThreadedProcessPool]:
    p = ThreadedProcessPool(2, 4)
    yield p
    p.shutdown(timeout=5)


def test_calls_run_side_by_side_in_every_child(pool: ThreadedProcessPool) -> None:
    for f in [pool.submit(pid_after, 0.2) for _ in range(2)]:
        f.result(timeout=30)  # both children up
    start = time.monotonic()
    futures = [pool.submit(pid_after, 0.5) for _ in range(8)]
    pids = [f.result(timeout=30) for f in futures]
    # 8 calls of 0.5 s on 2 children x 4 threads: one round, both children, none in here.
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert time.monotonic() - start < 0.5 * 8 / 2


def test_an_exception_reaches_the_caller(pool: ThreadedProcessPool) -> None:
    with pytest.raises(ValueError, match="from the child"):
        pool.submit(fail).result(timeout=30)


def test_a_killed_child_fails_its_calls_and_is_replaced(pool: ThreadedProcessPool) -> None:
    first = pool.submit(pid_after, 0).result(timeout=30)
    running = [pool.submit(pid_after, 20) for _ in range(4)]
    time.sleep(0.3)
    os.kill(first, signal.SIGKILL)
    done, _ = wait(running, timeout=10)
    # The killed child's two calls are answered at once, not after 20 s.
    assert len(done) == 2 and all(isinstance(f.exception(), ChildLost) for f in done)
    # Its replacement, now the least busy child, takes the next call.
    assert pool.submit(pid_after, 0).result(timeout=30) not in (first, os.getpid())


def test_children_ignore_a_group_sigterm_and_finish_on_shutdown() -> None:
    pool = ThreadedProcessPool(2, 2)
    future = pool.submit(pid_after, 1.0)
    child = pool.submit(pid_after, 0).result(timeout=30)
    os.kill(child, signal.SIGTERM)
    pool.shutdown(timeout=10)
    assert future.result(timeout=0) != os.getpid()


@pytest.mark.parametrize(
    ("jobs", "idle", "size"),
    [
        (20, 32, 1),  # an idle worker: every job on a thread of its own
        (50, 32, 2),
        (50, 10, 5),
        (50, 0, 10),  # every thread busy: the biggest groups
        (50, -40, 10),  # a backlog counts as no idle thread
        (3, 0, 3),
        (0, 5, 1),
    ],
)
def test_a_message_spreads_over_the_idle_threads(jobs: int, idle: int, size: int) -> None:
    from worker.runner import MAX_JOBS_PER_GROUP, group_size

    assert group_size(jobs, idle) == size <= MAX_JOBS_PER_GROUP
