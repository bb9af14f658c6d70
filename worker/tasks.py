"""The tasks: thin wrappers that claim jobs and hand each to the runner."""

from __future__ import annotations

import contextlib
import math
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis
import structlog
from celery.exceptions import Reject
from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from app.config import get_settings
from app.heap import freeze_startup_heap
from app.jobs import store
from app.jobs.run import run_job
from app.kit import metrics
from app.kit.db import close_pool, pool
from app.kit.dispatch import CANCEL_TASK, QUEUE, SWEEP_TASK, PublishFailed, chunks, send_now
from app.kit.redis_conn import get_redis
from app.logs import configure
from app.upstream.iamport.client import IamportClient
from app.webhooks import outbox, wake
from worker.celery_app import app
from worker.process_pool import ChildLost, ThreadedProcessPool, usable_cores

log = structlog.get_logger("worker")
_client: IamportClient | None = None
_client_lock = threading.Lock()
_rng = threading.local()
_children: ThreadedProcessPool | None = None
_local: ThreadPoolExecutor | None = None
_local_size = 0
SWEEP_MAX_ROUNDS = 20
# A message's jobs go to the job threads in groups, each group's jobs run one after the
# other on one thread: one job a group while threads are idle (the least latency), up to
# this many once every thread is busy (the least hand-over cost per job).
MAX_JOBS_PER_GROUP = 10
_groups_running = 0
_groups_lock = threading.Lock()


def client() -> IamportClient:
    """One iamport client (one httpx pool) per process."""
    global _client
    with _client_lock:
        if _client is None:
            _client = IamportClient.from_settings(get_settings(), get_redis())
        return _client


def rng() -> random.Random:
    r = getattr(_rng, "r", None)
    if r is None:
        r = _rng.r = random.Random()
    return r


@worker_init.connect
def _check_credentials(**_: object) -> None:
    # Without credentials every job would fail its run over and over; refuse to start instead.
    settings = get_settings()
    if settings.iamport_imp_key is None or settings.iamport_imp_secret is None:
        raise SystemExit("IAMPORT_IMP_KEY and IAMPORT_IMP_SECRET must be set for the worker")


# The threads pool runs tasks in the main process, which sends worker_init but never
# worker_process_init (that one comes from prefork children): configure logging on all three.
@worker_init.connect
@worker_process_init.connect
@beat_init.connect
def _configure_logging(**_: object) -> None:
    settings = get_settings()
    configure(settings.log_level, settings.log_json)


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    close_pool()


@worker_init.connect
def _start_job_threads(sender: object, **_: object) -> None:
    """One child process per usable core, the worker's concurrency spread over their threads.

    Celery's own pool (threads) then only receives, hands over and acknowledges messages; the
    jobs run in the children, beside each other on every core. On one core they run in here.
    """
    global _children
    processes = usable_cores()
    concurrency = int(getattr(sender, "concurrency", 0) or app.conf.worker_concurrency)
    if processes > 1:
        threads = math.ceil(concurrency / processes)
        _children = ThreadedProcessPool(processes, threads, _child_started, _child_stopping)
        log.info("job_processes_started", processes=processes, threads_each=threads)
    else:
        _local_threads(concurrency)
    freeze_startup_heap()


@worker_shutdown.connect
def _stop_children(**_: object) -> None:
    # After Celery's soft shutdown: every task it waited for has had its answer.
    if _children is not None:
        _children.shutdown(timeout=app.conf.worker_soft_shutdown_timeout)
    if _local is not None:
        _local.shutdown(wait=True)


def _child_started() -> None:
    _configure_logging()
    freeze_startup_heap()


def _child_stopping() -> None:
    close_pool()
    with contextlib.suppress(Exception):
        metrics.push()


def _parse(ids: list[str]) -> list[uuid.UUID]:
    out = []
    for i in ids:
        try:
            out.append(uuid.UUID(str(i)))
        except ValueError:
            log.warning("bad_job_id_in_message")
    return out


@app.task(name=CANCEL_TASK)
def cancel_jobs(job_ids: list[str]) -> int:
    """Claim what is ready among `job_ids` and run each; returns how many were run.

    A message is a wake-up for up to DISPATCH_BATCH_SIZE jobs: they go to the job threads in
    groups (group_size), so a message keeps several calls in flight, not one, while each group
    shares one hand-over and one database connection.
    """
    runner, threads = _runner()
    futures = []
    for group in chunks(job_ids, group_size(len(job_ids), threads - _groups_running)):
        future = runner.submit(run_jobs, group)
        _count_group(+1)
        future.add_done_callback(lambda _: _count_group(-1))
        futures.append(future)
    ran, lost = 0, False
    for future in futures:
        try:
            ran += future.result()
        except ChildLost:
            lost = True
    if lost:
        # As task_reject_on_worker_lost does for a prefork child: the message goes back to
        # the queue. Jobs the child had claimed keep their lease and are swept when it ends;
        # the others are terminal or leased, so running the message again costs a claim each.
        raise Reject("child process lost", requeue=True)
    return ran


def group_size(jobs: int, idle_threads: int) -> int:
    """How many of a message's `jobs` one thread runs: enough to spread them over the idle
    threads, at most MAX_JOBS_PER_GROUP."""
    return max(1, min(MAX_JOBS_PER_GROUP, math.ceil(jobs / max(1, idle_threads))))


def _count_group(change: int) -> None:
    global _groups_running
    with _groups_lock:
        _groups_running += change


def _runner() -> tuple[ThreadedProcessPool | ThreadPoolExecutor, int]:
    """The job threads (in the child processes, or on one core in this process), and how many."""
    if _children is not None:
        return _children, _children.threads
    # On one core: the threads made at start with the worker's concurrency (its -c).
    return _local_threads(app.conf.worker_concurrency), _local_size


def _local_threads(concurrency: int) -> ThreadPoolExecutor:
    global _local, _local_size
    with _client_lock:
        if _local is None:
            _local = ThreadPoolExecutor(concurrency, thread_name_prefix="job")
            _local_size = concurrency
        return _local


def run_jobs(job_ids: list[str]) -> int:
    """The task's work, in whichever process runs it."""
    settings = get_settings()
    ids = _parse(job_ids)
    if not ids:
        return 0
    ran = 0
    with pool().connection() as conn:
        for job_id in ids:
            # Each job's lease starts when its own run starts, not when the batch arrived.
            job = store.claim(conn, job_id, settings.lease_seconds, settings.cancel_settle_seconds)
            if job is None:
                continue  # not ready, or someone else's: a duplicate message costs nothing
            structlog.contextvars.bind_contextvars(job_id=str(job.id), imp_uid=job.imp_uid)
            try:
                run_job(conn, client(), job, settings, rng())
            finally:
                structlog.contextvars.clear_contextvars()
            ran += 1
    # Webhook messages written with the jobs' outcomes are committed: wake their senders.
    woken = outbox.take_wakeups()
    if woken:
        wake.publish(woken, celery=app)
    return ran


@app.task(name=SWEEP_TASK)
def sweep() -> int:
    """Publish due retry_wait jobs, queued jobs whose message was lost, and expired leases.

    Queued jobs only while the queue is empty: during a backlog longer than the dispatch
    grace, sending their messages again would only add wake-ups (and claims) behind the
    ones already waiting, every grace period, and so slow the drain that made them late. A
    message truly lost is sent again once the queue has drained.
    """
    settings = get_settings()
    try:
        with get_redis() as broker:
            queued = broker.llen(QUEUE) == 0
    except redis.RedisError:
        log.warning("sweep_skipped_broker_unreachable")
        return 0  # nothing could be sent either; the next sweep tries again
    total = 0
    with pool().connection() as conn:
        for _ in range(SWEEP_MAX_ROUNDS):
            ids = store.take_due(
                conn, settings.sweep_batch_size, settings.dispatch_grace_seconds, queued=queued
            )
            if ids:
                try:
                    send_now(ids, celery=app)
                except PublishFailed:
                    break  # their due_at moved on: the next sweep after the grace tries again
            total += len(ids)
            if len(ids) < settings.sweep_batch_size:
                break
    if total:
        log.info("sweep_dispatched", jobs=total)
    return total
