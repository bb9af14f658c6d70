"""The job runner of a worker process: where a message's jobs run, and with what.

One object holds what a worker process keeps for its jobs: the gateway client (one HTTP pool
and token cache a process), the job threads (in child processes, one per usable core, or in
this process on one core) and the count of groups in flight that sizes the next groups.
"""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import structlog

from app import tracing
from app.config import Settings, get_settings
from app.jobs import store
from app.jobs.run import run_job
from app.kit.db import pool
from app.kit.dispatch import chunks
from app.kit.errors import UnknownAccount
from app.kit.redis_conn import get_redis
from app.upstream.accounts import Account, accounts_of, leases
from app.upstream.contract import Gateway
from app.upstream.guard import Guard, GuardPolicy
from app.upstream.iamport.client import IamportClient
from app.upstream.portone.client import PortOneClient
from app.upstream.ratelimit import RateLimiter
from app.webhooks import outbox
from worker.process_pool import ChildLost, ThreadedProcessPool, child_threads, usable_cores

log = structlog.get_logger("worker")
# A message's jobs go to the job threads in groups, each group's jobs run one after the
# other on one thread: one job a group while threads are idle (the least latency), up to
# this many once every thread is busy (the least hand-over cost per job).
MAX_JOBS_PER_GROUP = 10


def group_size(jobs: int, idle_threads: int) -> int:
    """How many of a message's `jobs` one thread runs: enough to spread them over the idle
    threads, at most MAX_JOBS_PER_GROUP."""
    return max(1, min(MAX_JOBS_PER_GROUP, math.ceil(jobs / max(1, idle_threads))))


def _parse(ids: list[str]) -> list[uuid.UUID]:
    out = []
    for i in ids:
        try:
            out.append(uuid.UUID(str(i)))
        except ValueError:
            log.warning("bad_job_id_in_message")
    return out


class Runner:
    """The process's job threads and gateway client (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, IamportClient | PortOneClient] = {}
        self._rng = threading.local()
        self.children: ThreadedProcessPool | None = None
        self._local: ThreadPoolExecutor | None = None
        self._local_size = 0
        self._groups_running = 0

    # -- the process's own jobs (in a child, or on one core in the worker itself) ------------

    def gateway(self, account: str) -> IamportClient | PortOneClient:
        """One gateway client (one httpx pool, rate limit and guard; a token for iamport) per
        account and process: iamport's for a v1 account, PortOne V2's for a v2 one."""
        with self._lock:
            client = self._clients.get(account)
            if client is None:
                settings = get_settings()
                found = accounts_of(settings).get(account)
                if found is None:
                    raise UnknownAccount(f"no account {account} is configured")
                guard = Guard(GuardPolicy(max_in_flight=self._account_share(settings)))
                client = _client_for(found, settings, guard)
                self._clients[account] = client
            return client

    @property
    def threads_here(self) -> int:
        """The job threads of this process: a child's, or the one-core worker's own."""
        return child_threads() or self._local_size or 1

    def _account_share(self, settings: Settings) -> int | None:
        """How many of this process's job threads an account in trouble may hold: all when it
        is the only account, else half, so a failing or stalled account leaves the rest to the
        others. A healthy account is not held back (Guard)."""
        if len(accounts_of(settings)) <= 1:
            return None
        return max(1, math.ceil(self.threads_here / 2))

    def rng(self) -> random.Random:
        r: random.Random | None = getattr(self._rng, "r", None)
        if r is None:
            r = self._rng.r = random.Random()
        return r

    def run_jobs(self, job_ids: list[str]) -> int:
        """Claim and run each job that is ready, one after the other; how many were run."""
        settings = get_settings()
        ids = _parse(job_ids)
        if not ids:
            return 0
        ran = 0
        # The claim gives each job its own account's lease (an account that left the file: the
        # default's); the job's account is known only once it is claimed.
        default_lease = settings.lease_seconds
        by_account = leases(settings)
        with pool().connection() as conn:
            for job_id in ids:
                # Each job's lease starts when its own run starts, not when the batch arrived.
                job = store.claim(
                    conn, job_id, default_lease, settings.cancel_settle_seconds, by_account
                )
                if job is None:
                    continue  # not ready, or someone else's: a duplicate message costs nothing
                structlog.contextvars.bind_contextvars(
                    job_id=str(job.id), account=job.account, imp_uid=job.imp_uid
                )
                try:
                    gateway: Gateway = self.gateway(job.account)
                    timeout = accounts_of(settings)[job.account].timeout_seconds
                except UnknownAccount:
                    # Its account left the accounts file: nothing can be sent for it. The
                    # lease lapses and the job runs again once the account is back.
                    log.error("job_account_not_configured")
                    structlog.contextvars.clear_contextvars()
                    continue
                try:
                    with tracing.span("job run", {"stockout.job_id": str(job.id)}):
                        run_job(
                            conn,
                            gateway,
                            job,
                            settings,
                            self.rng(),
                            outbox.record_terminal,
                            timeout=timeout,
                        )
                finally:
                    structlog.contextvars.clear_contextvars()
                ran += 1
        return ran

    # -- the worker's side: where a message's groups go --------------------------------------

    def start(
        self,
        concurrency: int,
        child_started: Callable[[], None],
        child_stopping: Callable[[], None],
    ) -> None:
        """One child process per usable core, `concurrency` spread over their threads; on one
        core, `concurrency` threads in this process."""
        processes = usable_cores()
        if processes > 1:
            threads = math.ceil(concurrency / processes)
            self.children = ThreadedProcessPool(processes, threads, child_started, child_stopping)
            log.info("job_processes_started", processes=processes, threads_each=threads)
        else:
            self._local_threads(concurrency)

    def stop(self, timeout: float) -> None:
        if self.children is not None:
            self.children.shutdown(timeout=timeout)
        if self._local is not None:
            self._local.shutdown(wait=True)

    def kill(self) -> None:
        """The children killed, at once: what a stop past its deadline leaves behind."""
        if self.children is not None:
            self.children.kill()

    def run_message(self, job_ids: list[str], concurrency: int) -> int:
        """Spread a message's jobs over the job threads in groups and wait for them; how many
        were run. Raises ChildLost if a child process died under one of its groups."""
        threads = self._threads(concurrency)
        futures: list[Future[int]] = []
        for group in chunks(job_ids, group_size(len(job_ids), threads - self._groups_running)):
            future = self._submit(group, concurrency)
            self._count_group(+1)
            future.add_done_callback(lambda _: self._count_group(-1))
            futures.append(future)
        ran, lost = 0, False
        for future in futures:
            try:
                ran += future.result()
            except ChildLost:
                lost = True
        if lost:
            raise ChildLost("a child process died while it ran a group of this message")
        return ran

    def _submit(self, group: list[str], concurrency: int) -> Future[int]:
        # The task's trace goes with the group: a thread or a child has no context of its own.
        trace = tracing.carrier()
        if self.children is not None:
            return self.children.submit(run_jobs, group, trace)
        return self._local_threads(concurrency).submit(run_jobs, group, trace)

    def _threads(self, concurrency: int) -> int:
        if self.children is not None:
            return self.children.threads
        # On one core: the threads made at start with the worker's concurrency (its -c).
        self._local_threads(concurrency)
        return self._local_size

    def _count_group(self, change: int) -> None:
        with self._lock:
            self._groups_running += change

    def _local_threads(self, concurrency: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._local is None:
                self._local = ThreadPoolExecutor(concurrency, thread_name_prefix="job")
                self._local_size = concurrency
            return self._local


def _client_for(
    account: Account, settings: Settings, guard: Guard
) -> IamportClient | PortOneClient:
    """The gateway client of one account, with its own guard and rate limit."""
    if account.api == "v1":
        return IamportClient.for_account(account, settings, get_redis(), guard)
    return PortOneClient.for_account(
        account,
        limiter=RateLimiter(get_redis(), PortOneClient.rate_key(account), account.max_rps),
        rate_limit_max_wait=settings.rate_limit_max_wait_seconds,
        guard=guard,
    )


RUNNER = Runner()


def run_jobs(job_ids: list[str], trace: dict[str, str] | None = None) -> int:
    """A group's work in a child process (a module function, so it pickles), on its runner,
    in the trace of the task that sent it (app.tracing.carrier)."""
    with tracing.attached(trace):
        return RUNNER.run_jobs(job_ids)
