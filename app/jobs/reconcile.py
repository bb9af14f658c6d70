"""Reconciliation: look the payments of open and recently finished jobs up, in batches, and
act only as the rules of app/jobs/drift.py say.

It never sends a cancel, close or refund: a job that needs one is handed to its normal run
(queued, looking first), so every rule of the run still holds. What it may change without a
call (a refund or cancellation someone else made, a drift record) goes through the store, one
transaction per job, with the webhook messages the caller's `on_terminal` / `on_drift` write
in it. Calls are paced to `rate` per second, a share of the account's rate limit, and the
account's shared limiter still applies on top.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import redis
import structlog
from psycopg import Connection
from redis.exceptions import LockError
from redis.lock import Lock

from app.config import Settings
from app.jobs import store
from app.jobs.drift import Move, Seen, Verdict, verdict
from app.jobs.records import Drift, cancellation_of, refund_of
from app.jobs.status import JobStatus
from app.kit import metrics
from app.kit.db import UnitOfWork, pool, unit_of_work
from app.upstream.accounts import Account, accounts_of
from app.upstream.contract import CallObserver, CallRecord
from app.upstream.errors import GatewayError, RateLimited
from app.upstream.iamport.client import IamportClient
from app.upstream.payment import Payment
from app.upstream.portone.client import PortOneClient
from app.upstream.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

BATCH = 100  # imp_uids per lookup: iamport V1's most
MAX_RATE_LIMITED_WAITS = 3  # per batch, before its jobs count as errors
MAX_FAILED_BATCHES = 3  # in a row: the gateway is down for this account, stop here
MAX_WAIT_SECONDS = 30.0

NOTES = {
    Move.REFUNDED_UPSTREAM: "reconciliation: refunded outside the service",
    Move.CANCELLED_UPSTREAM: "reconciliation: cancelled outside the service",
    Move.NEEDS_REFUND: "reconciliation: paid since it failed; back to its run",
    Move.RUN_AGAIN: "reconciliation: cancelled since it failed; back to its run",
}

OnWrite = Callable[[UnitOfWork, uuid.UUID], None]


class BatchLookup(Protocol):
    """What a reconciliation needs of a gateway: many payments in one call (iamport V1: up to
    100), or one a call where that is all the gateway has (PortOne V2)."""

    lookup_batch: int  # payments one look_up_many may ask for: each such call is paced

    def look_up_many(
        self, imp_uids: Sequence[str], observer: CallObserver | None = None
    ) -> dict[str, Payment]: ...


@dataclass(frozen=True)
class Plan:
    """One account's round: which jobs, how fast, and whether to change anything."""

    account: str
    since: datetime  # failed, cancelled and refunded jobs finished since then
    stale_seconds: float  # waiting jobs untouched this long
    rate: float  # lookups per second
    grace_seconds: float  # a requeued job's dispatch grace
    dry_run: bool = False


@dataclass
class Summary:
    """What a round did, for the CLI's table, the task's log and the tests."""

    account: str
    looked_up: int = 0
    unchanged: int = 0
    moved: Counter[str] = field(default_factory=Counter)
    drift: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    calls: int = 0
    skipped: str | None = None
    messages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "looked_up": self.looked_up,
            "unchanged": self.unchanged,
            "moved": dict(sorted(self.moved.items())),
            "drift": dict(sorted(self.drift.items())),
            "errors": self.errors,
            "calls": self.calls,
            "skipped": self.skipped,
            "messages": self.messages,
        }


class _Calls:
    """Counts the round's exchanges (token ones too) as the gateway reports them."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def before_send(self, call: str) -> None:
        pass

    def after_call(self, record: CallRecord) -> None:
        self.records.append(record)


class Pacer:
    """At most `rate` calls a second, by this process's clock."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self.next_at = 0.0

    def wait(self) -> None:
        now = self.clock()
        if now < self.next_at:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


def count(conn: Connection[Any], plan: Plan) -> int:
    """How many jobs the round will look up (for a progress bar)."""
    return store.reconcile_count(
        conn, plan.account, since=plan.since, stale_seconds=plan.stale_seconds
    )


def reconcile_account(
    conn: Connection[Any],
    gateway: BatchLookup,
    plan: Plan,
    *,
    on_terminal: OnWrite,
    on_drift: OnWrite,
    progress: Callable[[int], None] | None = None,
    pacer: Pacer | None = None,
    stop: threading.Event | None = None,
) -> Summary:
    """One round over the account's jobs (store.reconcile_page), BATCH at a time. `stop` set
    (the process is stopping) ends it between two batches, and cuts any wait short."""
    summary = Summary(plan.account)
    stop = stop or threading.Event()
    pacer = pacer or Pacer(plan.rate, sleep=stop.wait)
    calls = _Calls()
    after: uuid.UUID | None = None
    failed_in_row = 0
    while True:
        if stop.is_set():
            summary.messages.append("stopped: the process is stopping")
            break
        page = store.reconcile_page(
            conn,
            plan.account,
            after=after,
            since=plan.since,
            stale_seconds=plan.stale_seconds,
            limit=BATCH,
        )
        if not page:
            break
        after = page[-1].id
        payments = _look_up(gateway, page, pacer, calls, summary, stop)
        if payments is None and stop.is_set():
            summary.messages.append("stopped: the process is stopping")
            break
        if payments is None:
            summary.errors += len(page)
            failed_in_row += 1
            if progress is not None:
                progress(len(page))
            if failed_in_row >= MAX_FAILED_BATCHES:
                summary.messages.append(f"stopped after {failed_in_row} failed lookups in a row")
                break
            continue
        failed_in_row = 0
        status = calls.records[-1].http_status if calls.records else None
        looked = store.Looked(datetime.now(UTC), status, "")
        for job in page:
            summary.looked_up += 1
            payment = payments.get(job.imp_uid)
            found = verdict(_seen(job), payment)
            if found.move is Move.UNCHANGED:
                summary.unchanged += 1
                continue
            if plan.dry_run or _apply(
                conn, plan, job, payment, found, looked, on_terminal, on_drift
            ):
                if found.kind is not None:
                    summary.drift[found.kind] += 1
                else:
                    summary.moved[found.move.value] += 1
            else:
                summary.unchanged += 1  # it moved on by itself meanwhile
        if progress is not None:
            progress(len(page))
    summary.calls = sum(1 for r in calls.records if r.call == "lookup")
    return summary


def _look_up(
    gateway: BatchLookup,
    page: list[store.ToReconcile],
    pacer: Pacer,
    calls: _Calls,
    summary: Summary,
    stop: threading.Event,
) -> dict[str, Payment] | None:
    """The page's payments, or None when a lookup failed (recorded in `summary`): one paced
    call per `gateway.lookup_batch` of them."""
    imp_uids = [job.imp_uid for job in page]
    found: dict[str, Payment] = {}
    for start in range(0, len(imp_uids), gateway.lookup_batch):
        chunk = imp_uids[start : start + gateway.lookup_batch]
        part = _look_up_part(gateway, chunk, pacer, calls, stop)
        if isinstance(part, str):
            if part:
                summary.messages.append(part)
            return None
        found.update(part)
    return found


def _look_up_part(
    gateway: BatchLookup,
    imp_uids: list[str],
    pacer: Pacer,
    calls: _Calls,
    stop: threading.Event,
) -> dict[str, Payment] | str:
    """The payments of one paced call, or why there are none ("" when stopped)."""
    for _ in range(MAX_RATE_LIMITED_WAITS + 1):
        pacer.wait()
        if stop.is_set():
            return ""  # woken by the stop: nothing more is sent
        try:
            return gateway.look_up_many(imp_uids, calls)
        except RateLimited as limited:
            if stop.wait(min(limited.retry_after, MAX_WAIT_SECONDS)):
                return ""
        except GatewayError as error:
            return str(error)
    return "rate limited"


def _seen(job: store.ToReconcile) -> Seen:
    return Seen(
        status=JobStatus(job.status),
        payment_status=job.payment_status,
        uncertain_call=job.uncertain_call,
        in_window=job.in_window,
        drift=Drift.model_validate(job.drift) if job.drift else None,
    )


def _apply(
    conn: Connection[Any],
    plan: Plan,
    job: store.ToReconcile,
    payment: Payment | None,
    found: Verdict,
    looked: store.Looked,
    on_terminal: OnWrite,
    on_drift: OnWrite,
) -> bool:
    """Make the verdict's change in one transaction; whether it was made (a job that moved on
    meanwhile is left alone by the store's guards)."""
    move = found.move
    note = store.Looked(looked.at, looked.http_status, NOTES.get(move, ""))
    with unit_of_work(conn) as uow:
        if move is Move.LOOK_FIRST:
            done = store.note_news(uow.conn, plan.account, job.imp_uid) is not None
            if done:
                uow.publish([job.id])
        elif move is Move.REFUNDED_UPSTREAM and payment is not None:
            refund = refund_of(payment)
            done = store.settle_refunded_upstream(uow.conn, job.id, refund, payment.status, note)
            if done:
                on_terminal(uow, job.id)
        elif move is Move.CANCELLED_UPSTREAM and payment is not None:
            cancel = cancellation_of(payment, "upstream")
            done = store.settle_cancelled_upstream(uow.conn, job.id, cancel, payment.status, note)
            if done:
                on_terminal(uow, job.id)
        elif move in (Move.NEEDS_REFUND, Move.RUN_AGAIN):
            done = store.requeue_failed(uow.conn, job.id, plan.grace_seconds, note)
            if done:
                uow.publish([job.id])
        elif move is Move.DRIFT and found.kind is not None:
            seen_status = None if payment is None else payment.status
            drift = Drift(kind=found.kind, seen_status=seen_status, seen_at=looked.at)
            done = store.record_drift(uow.conn, job.id, JobStatus(job.status), drift)
            if done:
                on_drift(uow, job.id)
        else:
            done = False
    if not done:
        return False
    if move in (Move.REFUNDED_UPSTREAM, Move.CANCELLED_UPSTREAM):
        status = "refunded" if move is Move.REFUNDED_UPSTREAM else "cancelled"
        metrics.job_finished(status, plan.account)
    elif move is Move.DRIFT and found.kind is not None:
        metrics.drift_recorded(found.kind, plan.account)
    log.info(
        "reconciled",
        account=plan.account,
        job_id=str(job.id),
        imp_uid=job.imp_uid,
        move=found.label,
    )
    return True


def window_start(hours: float, since: datetime | None = None) -> datetime:
    """Where the window of finished jobs starts: `since`, else `hours` ago."""
    return since if since is not None else datetime.now(UTC) - timedelta(hours=hours)


LOCK_KEY = "stockout:reconcile:lock:{account}"
LOCK_SECONDS = 60
Progress = Callable[[str, int], Callable[[int], None]]  # (account, total) -> advance(n)


class UnknownAccountName(ValueError):
    """`--account` names no configured account."""


def plan_for(
    settings: Settings,
    account: Account,
    *,
    since: datetime | None = None,
    dry_run: bool = False,
) -> Plan:
    """The round the settings ask for: RECONCILE_* and the account's own rate limit."""
    return Plan(
        account=account.name,
        since=window_start(settings.reconcile_window_hours, since),
        stale_seconds=settings.reconcile_stale_seconds,
        rate=account.max_rps * settings.reconcile_rps_share,
        grace_seconds=settings.dispatch_grace_seconds,
        dry_run=dry_run,
    )


def reconcile_all(
    settings: Settings,
    redis_client: redis.Redis,
    *,
    on_terminal: OnWrite,
    on_drift: OnWrite,
    account: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> list[Summary]:
    """A round over each account (or the one named), one after another: one account's
    failure is its summary's error and never stops the others. An account whose round is
    already running elsewhere (the lock in Redis) is skipped."""
    accounts = accounts_of(settings)
    if account is not None and account not in accounts:
        raise UnknownAccountName(f"no account {account!r}; configured: {', '.join(accounts)}")
    chosen = [accounts[account]] if account is not None else list(accounts.values())
    stop = stop or threading.Event()
    summaries = []
    for found in chosen:
        if stop.is_set():
            summaries.append(Summary(found.name, skipped="the process is stopping"))
            continue
        plan = plan_for(settings, found, since=since, dry_run=dry_run)
        summaries.append(
            _one_account(settings, redis_client, found, plan, on_terminal, on_drift, progress, stop)
        )
    return summaries


def _one_account(
    settings: Settings,
    redis_client: redis.Redis,
    account: Account,
    plan: Plan,
    on_terminal: OnWrite,
    on_drift: OnWrite,
    progress: Progress | None,
    stop: threading.Event,
) -> Summary:
    # redis-py's lock: a token of our own, released or extended only while it is ours. Short,
    # and renewed with each batch, so a round whose worker died blocks the next for at most
    # LOCK_SECONDS, while a long round keeps it.
    lock = redis_client.lock(LOCK_KEY.format(account=account.name), timeout=LOCK_SECONDS)
    try:
        if not lock.acquire(blocking=False):
            return Summary(account.name, skipped="a round is running already")
    except redis.RedisError as exc:
        return Summary(account.name, errors=1, messages=[f"redis: {type(exc).__name__}"])
    try:
        client = _client_for(account, settings, redis_client)
    except (RuntimeError, ValueError) as exc:  # credentials missing: said once, plainly
        log.warning("reconcile_skipped", account=account.name, why=str(exc))
        _release(lock)
        return Summary(account.name, errors=1, messages=[str(exc)])
    try:
        with pool().connection() as conn:
            advance = None
            if progress is not None:
                advance = progress(account.name, count(conn, plan))

            def on_page(n: int) -> None:
                with contextlib.suppress(redis.RedisError, LockError):
                    lock.extend(LOCK_SECONDS, replace_ttl=True)
                if advance is not None:
                    advance(n)

            summary = reconcile_account(
                conn,
                client,
                plan,
                on_terminal=on_terminal,
                on_drift=on_drift,
                progress=on_page,
                stop=stop,
            )
    except Exception as exc:  # one account's failure must not stop the others
        log.exception("reconcile_failed", account=account.name)
        # Only the kind: an unexpected error's text may carry what a summary must not show.
        return Summary(account.name, errors=1, messages=[type(exc).__name__])
    finally:
        client.close()
        _release(lock)
    log.info("reconcile_done", **summary.as_dict())
    return summary


def _client_for(
    account: Account, settings: Settings, redis_client: redis.Redis
) -> IamportClient | PortOneClient:
    """The account's gateway client, on the account's own rate limit (shared with its job
    runs, so the round's share is of one limit, not a second)."""
    if account.api == "v1":
        return IamportClient.for_account(account, settings, redis_client)
    limiter = RateLimiter(redis_client, PortOneClient.rate_key(account), account.max_rps)
    return PortOneClient.for_account(
        account, limiter=limiter, rate_limit_max_wait=settings.rate_limit_max_wait_seconds
    )


def _release(lock: Lock) -> None:
    with contextlib.suppress(redis.RedisError, LockError):  # else it expires
        lock.release()
