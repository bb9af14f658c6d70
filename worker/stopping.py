"""The worker's last resort on SIGTERM: out within the deadline, whatever still hangs.

The graceful stop is bounded everywhere we know of (Celery's soft shutdown, the job
processes, kombu's restore in worker/broker.py); this guard covers what we do not know of.
Exiting without the rest of the stop is safe: a job the worker held keeps its lease in
Postgres and is taken up again when the lease ends; a message it held returns from Redis.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("worker")
# From SIGTERM to os._exit: under the 15 s a supervisor allows, with room for the exit itself.
STOP_DEADLINE_SECONDS = 13.0


class StopWatchdog:
    """Armed once at the first stop signal; at the deadline, `last_words` and exit 0."""

    def __init__(self, deadline: float, last_words: Callable[[], None]) -> None:
        self.deadline = deadline
        self._last_words = last_words
        self._armed_at: float | None = None
        self._lock = threading.Lock()

    def arm(self) -> None:
        with self._lock:
            if self._armed_at is not None:
                return
            self._armed_at = time.monotonic()
        threading.Thread(target=self._watch, name="stop-watchdog", daemon=True).start()

    def remaining(self) -> float:
        """Seconds left before the deadline (the whole of it while not armed)."""
        if self._armed_at is None:
            return self.deadline
        return max(0.0, self._armed_at + self.deadline - time.monotonic())

    def _watch(self) -> None:
        time.sleep(self.remaining())
        log.warning("stop_deadline_passed", seconds=self.deadline, threads=_busy_threads())
        try:
            self._last_words()
        finally:
            _flush()
            os._exit(0)


def _busy_threads() -> list[str]:
    """The names of the threads still alive, for the record: what held the stop up."""
    mine = threading.current_thread()
    return sorted(t.name for t in threading.enumerate() if t is not mine and not t.daemon)


def _flush() -> None:
    # The captured streams hand their text to logging, whose handlers write the real streams.
    for stream in (sys.stdout, sys.stderr):
        _flush_stream(stream)
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.__stdout__, sys.__stderr__):
        _flush_stream(stream)


def _flush_stream(stream: object) -> None:
    flush = getattr(stream, "flush", None)
    if flush is not None:
        with contextlib.suppress(OSError, ValueError):
            flush()
