"""Structured JSON logs for API and worker; secrets are redacted before anything is written."""

from __future__ import annotations

import atexit
import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

from app import tracing

SECRET_KEYS = re.compile(r"(secret|token|password|imp_key|authorization|api_key)", re.I)
REDACTED = "[redacted]"


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank every field whose name says it holds a secret."""
    for key in list(event):
        if SECRET_KEYS.search(key):
            event[key] = REDACTED
    return event


def add_trace_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The current trace's id, null outside a trace, so a record is found beside its spans."""
    event.setdefault("trace_id", tracing.trace_id())
    return event


QUIET_TASK = "stockout.sweep"  # app.kit.dispatch.SWEEP_TASK (not imported: it pulls in Celery)


class QuietSweeps(logging.Filter):
    """Drop Celery's INFO lines about the periodic sweep, which runs every few seconds.

    Beat's "Sending due task", the worker's "received", and "succeeded" when the sweep
    dispatched nothing. A sweep that dispatches jobs still says so (`sweep_dispatched`), and
    a failing one still logs its error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.name.startswith("celery"):
            return True
        args = record.args
        if isinstance(args, dict):
            if args.get("name") != QUIET_TASK:
                return True
            if "return_value" in args:  # "Task ... succeeded in ...: N"
                return str(args["return_value"]) not in ("0", "None")
            return "runtime" in args or "exc" in args  # keep anything but "received"
        if isinstance(args, tuple) and record.name == "celery.beat":
            return QUIET_TASK not in args
        return True


def real_stream(stream: TextIO | StreamToLog) -> TextIO:
    """The stream beneath a StreamToLog: our handlers write there, never back into the log."""
    return stream.target if isinstance(stream, StreamToLog) else stream


def configure(level: str = "INFO", json: bool = True) -> None:
    """Set up structlog (and route stdlib logging through the same renderer)."""
    out = real_stream(sys.stderr)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if tracing.wanted():
        # Only when traces are asked for: without them a record has no trace_id at all.
        shared.append(add_trace_id)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                *shared,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # A stdlib record's exc_info (Celery's, uvicorn's) becomes the traceback's
                # text in the same record; the renderer alone would print the tuple's repr.
                structlog.processors.format_exc_info,
                renderer,
            ]
        )
    )
    if logging.getLevelName(level.upper()) >= logging.INFO:
        handler.addFilter(QuietSweeps())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # billiard's (multiprocessing's) logger does not propagate: Celery's embedded beat process
    # reports its end through it.
    logging.getLogger("multiprocessing").handlers[:] = [handler]
    # uvicorn gives its loggers their own plain-text handlers, which print a traceback as many
    # lines; through the root they get the same JSON renderer as everything else.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every request URL at INFO; we record calls ourselves.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class StreamToLog(io.TextIOBase):
    """A text stream whose writes reach the log as one record per burst of writes.

    Writers do not write whole messages: print() writes the text and its newline apart,
    traceback.print_exc() one write per frame, and the interpreter's own traceback printer
    (uncaught exceptions, threads' excepthook) writes the `^^^^` markers one character at a
    time. Celery's LoggingProxy made each write a record, so one traceback became hundreds.
    Here writes are gathered and become a single record on flush() (the interpreter flushes
    once at the end of a traceback), once no write has come for `quiet` seconds, when the
    text outgrows `max_chars`, or at exit.
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        target: TextIO,
        *,
        quiet: float = 0.1,
        max_age: float = 2.0,
        max_chars: int = 64 * 1024,
    ) -> None:
        super().__init__()
        self.logger = logger
        self.level = level
        self.target = target  # the stream replaced; kept for real_stream() and fileno()
        self.quiet = quiet
        self.max_age = max_age
        self.max_chars = max_chars
        self._reset()
        # A forked child (Celery's embedded beat) inherits this object but not its thread,
        # and perhaps a lock held by another thread at the fork.
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.flush)

    def _reset(self) -> None:
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._parts: list[str] = []
        self._chars = 0
        self._first = 0.0
        self._last = 0.0
        self._timer: threading.Thread | None = None
        self._local = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # faulthandler and subprocesses want a descriptor: the real one, beside the log.
        return self.target.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text or getattr(self._local, "emitting", False):
            # Text written while a record is emitted (a failing handler's report) would loop.
            return len(text)
        full = False
        with self._lock:
            now = time.monotonic()
            if not self._parts:
                self._first = now
            self._parts.append(text)
            self._chars += len(text)
            self._last = now
            full = self._chars >= self.max_chars
            if not full:
                self._ensure_timer()
                self._wake.notify()
        if full:
            self.flush()
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:  # type: ignore[override]
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Emit what was written so far as one record."""
        with self._lock:
            text = "".join(self._parts)
            self._parts, self._chars = [], 0
        self._emit(text)

    def _emit(self, text: str) -> None:
        text = text.rstrip("\n")
        if not text.strip():
            return
        self._local.emitting = True
        try:
            self.logger.log(self.level, text)
        finally:
            self._local.emitting = False

    def _ensure_timer(self) -> None:
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Thread(target=self._idle_flush, name=f"{self.logger.name}-log")
            self._timer.daemon = True
            self._timer.start()

    def _idle_flush(self) -> None:
        while True:
            with self._lock:
                while not self._parts:
                    self._wake.wait()
                now = time.monotonic()
                due = min(self._last + self.quiet, self._first + self.max_age)
                if now < due:
                    self._wake.wait(due - now)
                    continue
                text = "".join(self._parts)
                self._parts, self._chars = [], 0
            self._emit(text)


_uncaught = logging.getLogger("uncaught")


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    _uncaught.critical("uncaught_exception", exc_info=(kind, value, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # as threading's own hook: a thread that exits says nothing
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    _uncaught.error("uncaught_exception_in_thread %s", name, exc_info=exc_info)


def capture_output() -> None:
    """Make this process's stdout, stderr and uncaught exceptions log records, one each.

    For the worker, its children and beat (Celery's own redirection is off: it logs every
    write apart), and the API when it owns its streams. Idempotent. Call after configure():
    the handlers keep writing to the real stderr.
    """
    if not isinstance(sys.stderr, StreamToLog):
        sys.stderr = StreamToLog(logging.getLogger("stderr"), logging.WARNING, sys.stderr)
    if not isinstance(sys.stdout, StreamToLog):
        # At WARNING, as Celery's redirection had it: a print must not vanish under LOG_LEVEL.
        sys.stdout = StreamToLog(logging.getLogger("stdout"), logging.WARNING, sys.stdout)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
