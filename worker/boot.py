"""A worker's life: what its processes do when they start and stop (Celery's signals)."""

from __future__ import annotations

import contextlib
import logging

from celery.signals import (
    beat_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
    worker_shutting_down,
)

from app import tracing
from app.config import get_settings
from app.heap import freeze_startup_heap
from app.kit import metrics
from app.kit.db import close_pool
from app.logs import capture_output, configure
from app.upstream.accounts import AccountsError, load_accounts
from worker.celery_app import app
from worker.runner import RUNNER
from worker.stopping import STOP_DEADLINE_SECONDS, StopWatchdog

# Time for the job processes to stop after Celery's own stop, before they are killed.
CHILDREN_STOP_MARGIN = 1.0
WATCHDOG = StopWatchdog(STOP_DEADLINE_SECONDS, RUNNER.kill)


@worker_init.connect
def _check_credentials(**_: object) -> None:
    # Without credentials every job would fail its run over and over; refuse to start instead.
    settings = get_settings()
    _check_accounts()
    # With ACCOUNTS_FILE the file's accounts carry the credentials (checked just now).
    missing = settings.iamport_imp_key is None or settings.iamport_imp_secret is None
    if missing and not settings.accounts_file:
        raise SystemExit("IAMPORT_IMP_KEY and IAMPORT_IMP_SECRET must be set for the worker")


@beat_init.connect
def _check_beat(**_: object) -> None:
    _check_accounts()


def _check_accounts() -> None:
    """A bad ACCOUNTS_FILE stops the process: one line naming the account and the field."""
    try:
        load_accounts(get_settings())
    except AccountsError as exc:
        raise SystemExit(f"cannot start: {exc}") from None


# The threads pool runs tasks in the main process, which sends worker_init but never
# worker_process_init (that one comes from prefork children): configure logging on all three.
# Answering setup_logging keeps Celery from adding its own plain-text handlers (root, task and
# multiprocessing loggers) and from redirecting stdout/stderr to its LoggingProxy.
@setup_logging.connect
@worker_init.connect
@worker_process_init.connect
@beat_init.connect
def _configure_logging(**_: object) -> None:
    settings = get_settings()
    configure(settings.log_level, settings.log_json)
    for handler in logging.getLogger().handlers:
        handler.addFilter(BrokerTrouble())
    # Celery's own redirection is off (worker_redirect_stdouts): it logs each write apart.
    capture_output()


class BrokerTrouble(logging.Filter):
    """A lost broker connection, and each ack or reject Celery cannot send while it is lost,
    as one line with the error's type: Celery adds the redis error's traceback, pages of
    frames for a state the service is built to ride out."""

    MESSAGES = ("Couldn't ack", "Couldn't reject", "consumer: Connection to broker lost")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and str(record.msg).startswith(self.MESSAGES):
            record.msg = f"{record.msg} [%s]"
            record.args = (*(record.args if isinstance(record.args, tuple) else ()), repr(exc))
            record.exc_info = None
            record.exc_text = None
        return True


# After the process exists: the exporter's thread is started here, in the process that
# exports. The threads pool runs tasks in this process (worker_init); a prefork child
# (worker_process_init) is a fork, which keeps the parent's set-up if it had one.
@worker_init.connect
@worker_process_init.connect
def _start_tracing(**_: object) -> None:
    tracing.setup("stockout-worker")


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    close_pool()


@worker_init.connect
def _start_job_threads(sender: object, **_: object) -> None:
    """The job threads, the worker's concurrency spread over one child process per core.

    Celery's own pool (threads) then only receives, hands over and acknowledges messages; the
    jobs run in the children, beside each other on every core. On one core they run in here.
    """
    RUNNER.start(concurrency(sender), _child_started, _child_stopping)
    freeze_startup_heap()


def concurrency(sender: object = None) -> int:
    """The worker's -c, or the app's default."""
    return int(getattr(sender, "concurrency", 0) or app.conf.worker_concurrency)


@worker_shutting_down.connect
def _arm_watchdog(**_: object) -> None:
    # Sent from the SIGTERM/SIGINT handler in the main process, before anything stops.
    WATCHDOG.arm()


@worker_shutdown.connect
def _stop_children(**_: object) -> None:
    # After Celery's soft shutdown: every task it waited for has had its answer. What the
    # children still run gets what is left of the deadline, then they are killed.
    budget = WATCHDOG.remaining() - CHILDREN_STOP_MARGIN
    RUNNER.stop(timeout=max(0.0, min(app.conf.worker_soft_shutdown_timeout, budget)))


def _child_started() -> None:
    _configure_logging()
    tracing.setup("stockout-worker")
    freeze_startup_heap()


def _child_stopping() -> None:
    close_pool()
    with contextlib.suppress(Exception):
        metrics.push()
