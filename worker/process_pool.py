"""Child processes, one per core, each running calls on its own threads.

Celery's threads pool keeps many upstream calls in flight, but in one process under one GIL;
its prefork pool uses every core, but runs one task per process at a time. The worker's tasks
hand their jobs to this pool: every core is used, and each child keeps many calls in flight
with one HTTP client, one connection pool and one token cache.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

T = TypeVar("T")
RESTART_DELAY = 1.0  # between a child's death and its replacement: no tight crash loop


def _forget_children_after_fork() -> None:
    # A process forked from the worker (Celery's embedded beat, from billiard) inherits the
    # list of our spawned children; at its exit multiprocessing joins them, which only their
    # parent may do: "can only join a child process", a traceback at every shutdown.
    # multiprocessing's own forked processes reset the list the same way.
    children = getattr(multiprocessing.process, "_children", None)
    if isinstance(children, set):
        children.clear()


os.register_at_fork(after_in_child=_forget_children_after_fork)


class ChildLost(Exception):
    """The child process running a call died before answering."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not those of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Child:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.pending: dict[int, Future[Any]] = {}
        self.send_lock = threading.Lock()


class ThreadedProcessPool:
    """`processes` children with `threads` threads each; a call goes to the least busy child."""

    def __init__(
        self,
        processes: int,
        threads: int,
        initializer: Callable[[], None] | None = None,
        finalizer: Callable[[], None] | None = None,
    ) -> None:
        # Spawned, not forked: the parent already runs threads (Celery's), and a fork would
        # copy their held locks; a spawned child also holds no other child's pipe, so it sees
        # the parent's death as the end of its pipe.
        self._ctx = multiprocessing.get_context("spawn")
        self._args = (threads, initializer, finalizer)
        self.threads = processes * threads  # in all
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._children = [self._start() for _ in range(processes)]

    def _start(self) -> _Child:
        conn, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child_main, args=(child_end, *self._args), name="stockout-child"
        )
        process.start()
        child_end.close()
        child = _Child(process, conn)
        threading.Thread(target=self._read, args=(child,), name="child-reader", daemon=True).start()
        return child

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` in a child; `fn` and its arguments must pickle (a module's function)."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the process pool is shut down")
            child = min(self._children, key=lambda c: len(c.pending))
            call_id = next(self._ids)
            child.pending[call_id] = future
        try:
            with child.send_lock:
                child.conn.send((call_id, fn, args))
        except (OSError, ValueError) as exc:
            self._answer(child, call_id, False, ChildLost(f"could not reach the child: {exc}"))
        return future

    def _answer(self, child: _Child, call_id: int, ok: bool, value: Any) -> None:
        with self._lock:
            future = child.pending.pop(call_id, None)
        if future is None:  # already answered (the child died and its calls were failed)
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _read(self, child: _Child) -> None:
        while True:
            try:
                call_id, ok, value = child.conn.recv()
            except (EOFError, OSError):
                break
            self._answer(child, call_id, ok, value)
        child.process.join(5)
        with self._lock:
            lost = list(child.pending.values())
            child.pending.clear()
        error = f"child process {child.process.pid} exited ({child.process.exitcode})"
        for future in lost:
            future.set_exception(ChildLost(error))
        if self._closed:
            return
        time.sleep(RESTART_DELAY)
        with self._lock:
            if self._closed:
                return
            self._children[self._children.index(child)] = self._start()

    def shutdown(self, timeout: float) -> None:
        """Let the children finish what they run (up to `timeout` s), then stop them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            children = list(self._children)
        for child in children:
            with contextlib.suppress(OSError, ValueError), child.send_lock:
                child.conn.send(None)
        deadline = time.monotonic() + timeout
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)

    def kill(self) -> None:
        """Stop the children at once (their jobs keep their leases in Postgres)."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            with contextlib.suppress(OSError, ValueError):
                child.process.kill()


_threads_here = 0  # in a child: how many job threads it runs


def child_threads() -> int:
    """The job threads of this child process; 0 outside one."""
    return _threads_here


def _child_main(
    conn: Connection,
    threads: int,
    initializer: Callable[[], None] | None,
    finalizer: Callable[[], None] | None,
) -> None:
    # The parent says when to stop, after its own soft shutdown: a signal sent to the whole
    # process group (Ctrl-C, a supervisor's SIGTERM) must not cut the runs in here short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    global _threads_here
    _threads_here = threads
    if initializer is not None:
        initializer()
    send_lock = threading.Lock()

    def run(call_id: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            answer: tuple[int, bool, Any] = (call_id, True, fn(*args))
        except Exception as exc:
            answer = (call_id, False, exc)
        with send_lock:
            try:
                conn.send(answer)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                conn.send((call_id, False, RuntimeError(f"unpicklable answer: {exc!r}")))
            except OSError:
                pass  # the parent is gone; the work itself is done

    with ThreadPoolExecutor(threads, thread_name_prefix="job") as pool:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone: finish what runs, then exit
            if message is None:
                break
            pool.submit(run, *message)
    if finalizer is not None:
        finalizer()
