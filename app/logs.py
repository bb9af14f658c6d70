"""Structured JSON logs for API and worker; secrets are redacted before anything is written."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEYS = re.compile(r"(secret|token|password|imp_key|authorization|api_key)", re.I)
REDACTED = "[redacted]"


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank every field whose name says it holds a secret."""
    for key in list(event):
        if SECRET_KEYS.search(key):
            event[key] = REDACTED
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


def configure(level: str = "INFO", json: bool = True) -> None:
    """Set up structlog (and route stdlib logging through the same renderer)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                *shared,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ]
        )
    )
    if logging.getLevelName(level.upper()) >= logging.INFO:
        handler.addFilter(QuietSweeps())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; we record calls ourselves.
    logging.getLogger("httpx").setLevel(logging.WARNING)
