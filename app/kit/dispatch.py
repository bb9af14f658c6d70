"""Wake-up calls to the workers, after a commit: a message that may be lost, never waited for.

The one after-commit channel: a unit of work (app/kit/db.py) hands what it committed, the ids
of jobs to run and of webhook endpoints with messages to send, to `publish_later`, which only
puts them on a bounded in-process queue. One daemon thread per process drains it to Redis with short
timeouts; after a failure a circuit breaker drops what comes for a while instead of waiting
on a dead or frozen Redis again. Whatever is dropped is already in Postgres, where the sweeps
find it once its dispatch grace has passed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import structlog
from celery import Celery

from app import tracing
from app.config import get_settings

QUEUE = "stockout"
CANCEL_TASK = "stockout.cancel_jobs"
SWEEP_TASK = "stockout.sweep"
DELIVER_TASK = "stockout.webhooks.deliver"
WEBHOOK_SWEEP_TASK = "stockout.webhooks.sweep"
RECONCILE_TASK = "stockout.reconcile"
# Ids waiting for the publisher thread; past this, new ids are left to the sweeps.
BACKLOG_MAX = 10_000
BREAKER_OPEN_SECONDS = 5.0
# Under load, the publisher sends at most this often (when idle, at once): a wake-up this much
# later costs nothing beside an iamport call, and it saves most of the messages.
SEND_INTERVAL_SECONDS = 0.05

log = structlog.get_logger(__name__)


def broker_options(socket_timeout: float = 5.0) -> dict[str, object]:
    """Redis transport options shared by the publisher and the worker."""
    return {
        # Fail fast when Redis is down: the job is already safe in Postgres.
        "socket_connect_timeout": min(2.0, socket_timeout),
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
        "health_check_interval": 10,
        # Unacked messages come back after this; the lease in Postgres makes that harmless.
        "visibility_timeout": 3600,
    }


@lru_cache
def publisher() -> Celery:
    """A Celery app used only to send tasks by name (the API never imports the worker)."""
    settings = get_settings()
    celery = Celery("stockout-publisher", broker=settings.redis_url, set_as_current=False)
    celery.conf.update(
        broker_transport_options=broker_options(socket_timeout=1.0),
        broker_connection_retry=False,
        broker_connection_timeout=1,
        task_default_queue=QUEUE,
    )
    return celery


def chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def send_now(job_ids: Sequence[uuid.UUID | str], celery: Celery | None = None) -> int:
    """Send the ids in small batches, in this thread; returns how many batches were sent.

    A failure is logged, never raised: the sweeps publish the rest later.
    """
    settings = get_settings()
    app = celery or publisher()
    sent = 0
    ids = [str(i) for i in job_ids]
    try:
        # One producer, and its messages written in one pipelined round trip (kombu's batch).
        with app.producer_or_acquire() as producer, producer.batch():
            for batch in chunks(ids, settings.dispatch_batch_size):
                app.send_task(
                    CANCEL_TASK,
                    args=[batch],
                    queue=QUEUE,
                    retry=False,
                    ignore_result=True,
                    producer=producer,
                    # Celery would build a repr of the ids for monitors, at a quarter of the
                    # send's cost; our own log lines name each job.
                    argsrepr=f"[{len(batch)} job ids]",
                    kwargsrepr="{}",
                )
                sent += 1
    except Exception as exc:  # any broker failure: the sweep is the safety net
        log.warning(
            "publish_failed",
            jobs=len(ids) - sent * settings.dispatch_batch_size,
            error=type(exc).__name__,
        )
        raise PublishFailed from exc
    return sent


class PublishFailed(Exception):
    """The broker did not take a batch."""


def send_deliveries(endpoint_ids: Sequence[uuid.UUID | str], celery: Celery | None = None) -> int:
    """One delivery task per endpoint id; returns how many reached the broker (never raises).

    Losing one costs only latency: the messages are in Postgres, and the webhook sweep finds
    whatever is due."""
    app = celery or publisher()
    sent = 0
    for endpoint_id in endpoint_ids:
        try:
            app.send_task(
                DELIVER_TASK, args=[str(endpoint_id)], queue=QUEUE, retry=False, ignore_result=True
            )
        except Exception as exc:  # any broker failure: the sweep is the safety net
            log.warning("webhook_wakeup_failed", error=type(exc).__name__)
            return sent
        sent += 1
    return sent


@dataclass(frozen=True)
class Wakeups:
    """What one commit asks the workers to look at."""

    jobs: list[uuid.UUID] = field(default_factory=list)
    endpoints: list[uuid.UUID] = field(default_factory=list)
    # The committing request's trace context (app.tracing.carrier), None when not traced. The
    # messages of merged commits continue the first one's trace.
    trace: dict[str, str] | None = None

    def __add__(self, other: Wakeups) -> Wakeups:
        endpoints = self.endpoints + [e for e in other.endpoints if e not in self.endpoints]
        return Wakeups(self.jobs + other.jobs, endpoints, self.trace or other.trace)


class _Publisher:
    """The process's publisher thread and its bounded queue."""

    def __init__(self) -> None:
        self.backlog: queue.Queue[Wakeups] = queue.Queue(maxsize=BACKLOG_MAX)
        self.open_until = 0.0
        self.last_send = 0.0
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def submit(self, wakeups: Wakeups) -> bool:
        self._ensure_thread()
        try:
            self.backlog.put_nowait(wakeups)
        except queue.Full:
            log.warning(
                "publish_backlog_full", jobs=len(wakeups.jobs), endpoints=len(wakeups.endpoints)
            )
            return False
        return True

    def _ensure_thread(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._drain, name="stockout-publisher", daemon=True
                )
                self.thread.start()

    def _drain(self) -> None:
        while True:
            wakeups, taken = self._gather()
            try:
                if time.monotonic() >= self.open_until:  # while open, left to the sweeps
                    self._send(wakeups)
            except PublishFailed:
                self.open_until = time.monotonic() + BREAKER_OPEN_SECONDS
            finally:
                for _ in range(taken):
                    self.backlog.task_done()

    @staticmethod
    def _send(wakeups: Wakeups) -> None:
        # In the commit's trace: the Celery instrumentation puts it in the messages it sends.
        with tracing.attached(wakeups.trace):
            if wakeups.jobs:
                send_now(wakeups.jobs)
            if send_deliveries(wakeups.endpoints) < len(wakeups.endpoints):
                raise PublishFailed

    def _gather(self) -> tuple[Wakeups, int]:
        """The wake-ups of the next commit and of every commit until its send is due, and how many
        commits that was. When idle a commit goes out at once; under load, at most one send per
        SEND_INTERVAL_SECONDS, carrying all that came meanwhile (a Celery message costs the
        API far more than the ids in it). The thread sleeps rather than waits on the queue:
        no wake-up, and no GIL hand-over, per commit."""
        wakeups = self.backlog.get()
        taken = 1
        due = self.last_send + SEND_INTERVAL_SECONDS - time.monotonic()
        if due > 0:
            time.sleep(due)
        while True:
            try:
                wakeups = wakeups + self.backlog.get_nowait()
            except queue.Empty:
                self.last_send = time.monotonic()
                return wakeups, taken
            taken += 1


_publisher = _Publisher()


def _after_fork_in_child() -> None:
    global _publisher
    _publisher = _Publisher()


os.register_at_fork(after_in_child=_after_fork_in_child)


def reset() -> None:
    """A fresh publisher: no backlog, the breaker closed (tests, a reloaded configuration)."""
    global _publisher
    drain(1.0)
    _publisher = _Publisher()
    publisher.cache_clear()


def publish_later(job_ids: Iterable[uuid.UUID], endpoint_ids: Iterable[uuid.UUID] = ()) -> bool:
    """Hand committed jobs and woken webhook endpoints to the publisher thread; never blocks.
    False if the backlog is full."""
    wakeups = Wakeups(list(job_ids), list(endpoint_ids), tracing.carrier())
    return _publisher.submit(wakeups) if wakeups.jobs or wakeups.endpoints else True


def drain(timeout: float = 5.0) -> bool:
    """Wait until the publisher has taken everything queued so far (tests, shutdown)."""
    deadline = time.monotonic() + timeout
    while _publisher.backlog.unfinished_tasks:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
