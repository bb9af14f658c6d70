"""One run of one job: claim, call, decide, record. The decisions live in decide.py.

The run is the only code that sends a cancel or a refund, and it sends one only after its
write-ahead (store.write_ahead) has recorded the call under a live lease and the worker's own
monotonic clock says enough of that lease is left for the call to end inside it.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from psycopg import Connection

from app.config import Settings
from app.jobs import store
from app.jobs.decide import (
    Decision,
    JobState,
    Kind,
    Method,
    Policy,
    Result,
    Step,
    after_crash,
    drive,
)
from app.jobs.records import UpstreamError
from app.jobs.status import JobStatus
from app.kit import metrics
from app.kit.db import UnitOfWork, unit_of_work
from app.upstream.contract import CallRecord, Gateway
from app.upstream.errors import (
    CancelRequested,
    InFlight,
    NotFound,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Refused,
    ServerError,
    Unauthorized,
    Unavailable,
    Unsupported,
)

log = structlog.get_logger("worker")
REDIS_DOWN_DELAY = 5.0
HOOKED_MEMORY_SECONDS = 10.0
_hooked_at = -HOOKED_MEMORY_SECONDS  # when this process last found a webhook endpoint enabled
DEFAULT_REASON = "out of stock"
# Not attempts: nothing applied (429, never sent), or a keyed repeat answered "still running",
# which is the first call's (store.ATTEMPTS_SQL says the same).
COUNTED_OUTCOMES_EXCLUDED = frozenset({"rate_limited", "not_sent", "in_flight"})
# Outcomes that end a call at iamport (an answer of its own): nothing of it is still in flight.
ANSWERED_OUTCOMES = frozenset(
    {"ok", "refused", "not_found", "unauthorized", "rate_limited", "server_error"}
)
# Answers after which a keyed gateway keeps its answer under the call's key: the next call is
# a new one, with a new key (store.ANSWERED_CALLS_SQL counts the same outcomes). A 429 comes
# before the gateway's application, and an unanswered call's repeat must keep its key; a
# REQUESTED cancellation is waited for, never repeated, and a refund a person asks for after
# it failed is a new call.
KEY_SPENT_OUTCOMES = (ANSWERED_OUTCOMES - {"rate_limited"}) | {"requested"}


# What else a terminal transition writes in its own transaction (the webhook outbox's
# messages): handed in by the worker, so the job core knows nothing of webhooks.
OnTerminal = Callable[[UnitOfWork, uuid.UUID], None]


def policy_from(settings: Settings) -> Policy:
    return Policy(
        max_attempts=settings.cancel_max_attempts,
        base_seconds=settings.cancel_retry_base_seconds,
        cap_seconds=settings.cancel_retry_max_seconds,
        unknown_floor_seconds=min(
            settings.iamport_timeout_seconds, settings.cancel_retry_max_seconds
        ),
        settle_seconds=settings.cancel_settle_seconds,
        max_idle_runs=settings.job_max_idle_runs,
    )


class Held(Exception):
    """The write-ahead was refused (lease gone, or an earlier call unsettled), or too little
    of the lease is left to finish a call in it: nothing is sent."""


def _error(exc: Exception) -> UpstreamError:
    return UpstreamError(
        http_status=getattr(exc, "http_status", None),
        code=getattr(exc, "code", None),
        message=getattr(exc, "message", None) or type(exc).__name__,
    )


@dataclass
class JobRun:
    """Observes one run's upstream calls: writes each mutating call ahead, collects the records."""

    conn: Connection[Any]
    job: store.Claimed
    settings: Settings
    # Each call's total deadline at this job's gateway (None: IAMPORT_TIMEOUT_SECONDS): the
    # lease each write-ahead renews, and what must be left of it to send, follow from it.
    timeout: float | None = None
    written: dict[int, CallRecord] = field(default_factory=dict)
    others: list[CallRecord] = field(default_factory=list)
    pending: tuple[int, Step] | None = None  # written ahead, answer not yet recorded
    counted: int = 0  # attempts this run made, as the attempt rows will show them
    sent: bool = False  # the current step's mutating call left our side
    answered: bool = False  # this run's last mutating call had a definite answer
    last_sent: Step | None = None  # the last cancel or refund this run sent
    sent_at: float | None = None  # when the current step's mutating call left (our clock)
    answered_calls: int = 0  # this run's cancels and refunds with KEY_SPENT_OUTCOMES

    def intent(self) -> str:
        """Whose call the next cancel or refund is, the same on every repeat of an unanswered
        call and new after an answered one: a keyed gateway makes the call's key from it."""
        return f"{self.job.id}:{self.job.answered_calls + self.answered_calls}"

    def before_send(self, call: str) -> None:
        if call not in (Step.CANCEL, Step.REFUND):
            return
        started = time.monotonic()
        lease, margin = self.lease()
        attempt_id = store.write_ahead(
            self.conn,
            self.job.id,
            self.job.lease_token,
            Step(call),
            lease_seconds=lease,
            settle=self.settings.cancel_settle_seconds,
            answered=self.answered,
            # A keyed gateway (PortOne V2) gets the unanswered call again under its key: the
            # same request to it, which settles the first rather than adding a second.
            repeat=self.job.api == "v2" and call == self.job.uncertain_call,
        )
        if attempt_id is None:
            raise Held("the write-ahead was refused")
        self.pending = (attempt_id, Step(call))
        left = lease - (time.monotonic() - started)
        if left < margin:
            # A stall (GC, a frozen container) ate the lease: another worker may take the
            # job before this call could end. The row is kept, marked as never sent.
            raise Held("too little of the lease is left to send")
        self.sent = True
        self.sent_at = time.time()
        self.last_sent = Step(call)

    def lease(self) -> tuple[float, float]:
        """The lease a write-ahead takes, and how much of it must be left to send."""
        if self.timeout is None:
            return self.settings.lease_seconds, self.settings.send_margin_seconds
        return self.settings.lease_for(self.timeout), self.settings.send_margin_for(self.timeout)

    def after_call(self, record: CallRecord) -> None:
        metrics.observe_upstream(record, self.job.account)
        if self.pending is not None and record.call in (Step.CANCEL, Step.REFUND):
            attempt_id, _ = self.pending
            self.written[attempt_id] = record
            self.pending = None
            if record.outcome not in COUNTED_OUTCOMES_EXCLUDED:
                self.counted += 1
            # Known at the moment the answer comes: a 401's repeat, or the next step of this
            # run, may then be sent without waiting for the settle time.
            self.answered = record.outcome in ANSWERED_OUTCOMES
            if record.outcome in KEY_SPENT_OUTCOMES:
                self.answered_calls += 1
        else:
            self.others.append(record)

    def held(self, reason: str) -> None:
        """Close a written-ahead row whose call was never sent."""
        if self.pending is None:
            return
        attempt_id, step = self.pending
        now = datetime.now(UTC)
        self.written[attempt_id] = CallRecord(step.value, now, 0, None, None, reason, "not_sent")
        self.pending = None


def call_step(
    gateway: Gateway,
    observer: JobRun,
    step: Step,
    method: Method,
    checksum: float | None,
) -> Result:
    """Make the step's upstream call and reduce the answer to a Result."""
    observer.sent = False
    observer.sent_at = None
    result = _call_step(gateway, observer, step, method, checksum)
    sent_at = observer.sent_at if observer.sent else None
    return replace(result, sent_at=sent_at, clock_skew=gateway.clock_skew())


def _call_step(
    gateway: Gateway,
    observer: JobRun,
    step: Step,
    method: Method,
    checksum: float | None,
) -> Result:
    job = observer.job
    intent = observer.intent()
    try:
        if step is Step.LOOKUP:
            payment = gateway.look_up(job.imp_uid, observer=observer)
        elif step is Step.REFUND:
            payment = gateway.refund(
                imp_uid=job.imp_uid,
                amount=None,
                reason=job.reason or DEFAULT_REASON,
                checksum=checksum,
                observer=observer,
                intent=intent,
            )
        elif method is Method.VBANK:
            payment = gateway.close_vbank(job.imp_uid, observer=observer, intent=intent)
        else:
            payment = gateway.void_barcode(job.imp_uid, observer=observer)
    except Held as held:
        observer.held(str(held))
        return Result(Kind.NOT_SENT, sent=False)
    except RateLimited as exc:
        return Result(Kind.RATE_LIMITED, retry_after=exc.retry_after, sent=observer.sent)
    except Unsupported as exc:
        # Before Refused, its base: nothing was sent, and no repeat can succeed.
        return Result(Kind.UNSUPPORTED, error=_error(exc), sent=False)
    except CancelRequested as exc:
        # Before InFlight, its base: accepted, finishing later.
        return Result(Kind.REQUESTED, error=_error(exc), sent=observer.sent)
    except InFlight as exc:
        # Before OutcomeUnknown, its base: the first call goes on, it has not failed.
        return Result(Kind.IN_FLIGHT, error=_error(exc), sent=observer.sent)
    except NotFound as exc:
        return _answered(observer, step, Kind.NOT_FOUND, _error(exc))
    except Refused as exc:
        return _answered(observer, step, Kind.REFUSED, _error(exc))
    except ServerError as exc:
        return _answered(observer, step, Kind.ENDED, _error(exc))
    except Unauthorized as exc:
        return _answered(observer, step, Kind.UNAUTHORIZED, _error(exc))
    except NotSent as exc:
        return Result(Kind.NOT_SENT, error=_error(exc), sent=False)
    except (OutcomeUnknown, Unavailable) as exc:
        return Result(Kind.UNKNOWN, error=_error(exc), sent=observer.sent or step is Step.LOOKUP)
    except redis.RedisError:
        # The token cache or the limiter is unreachable, so nothing was sent: wait, uncounted.
        return Result(Kind.RATE_LIMITED, retry_after=REDIS_DOWN_DELAY, sent=observer.sent)
    return Result(Kind.OK, payment=payment, sent=observer.sent or step is Step.LOOKUP)


def _answered(observer: JobRun, step: Step, kind: Kind, error: UpstreamError) -> Result:
    return Result(kind, error=error, sent=observer.sent or step is Step.LOOKUP)


def state_of(job: store.Claimed) -> JobState:
    """The decision's view of a claimed job."""
    return JobState(
        attempts=job.attempts,
        uncertain=Step(job.uncertain_call) if job.uncertain_call else None,
        settle_left=job.settle_left,
        method=Method(job.pay_method),
        refund_allowed=job.on_paid == "refund" or job.refund_requested,
        look_first=job.look_first,
        idle_runs=job.idle_runs,
        error=UpstreamError.model_validate(job.error) if job.error else None,
        keyed=job.api == "v2",
        # The age is by the database's clock; now minus it puts the start on ours.
        first_sent_at=None if job.first_call_age is None else time.time() - job.first_call_age,
    )


def run_job(
    conn: Connection[Any],
    gateway: Gateway,
    job: store.Claimed,
    settings: Settings,
    rng: random.Random,
    on_terminal: OnTerminal,
    *,
    timeout: float | None = None,
) -> str:
    """Drive one claimed job as far as this run can; returns the status recorded.

    `timeout` is each call's deadline at the job's gateway (None: IAMPORT_TIMEOUT_SECONDS)."""
    observer = JobRun(conn, job, settings, timeout)
    state = state_of(job)
    policy = policy_from(settings)
    started = time.monotonic()

    def call(step: Step, method: Method, checksum: float | None) -> Result:
        return call_step(gateway, observer, step, method, checksum)

    try:
        decision = drive(state, call, policy, rng, lambda: time.monotonic() - started).decision
    except Exception as exc:  # any fault of one job's run stays with that job
        metrics.run_crashed()
        log.exception("job_run_crashed", job_id=str(job.id), imp_uid=job.imp_uid)
        # Whatever this run sent may have applied, answered or not: the next run looks first.
        pending = observer.last_sent or state.uncertain
        error = UpstreamError(message=f"the run failed: {type(exc).__name__}")
        decision = after_crash(replace(state, uncertain=pending), error, policy, rng)
    return record(conn, job, observer, decision, on_terminal)


def record(
    conn: Connection[Any],
    job: store.Claimed,
    observer: JobRun,
    decision: Decision,
    on_terminal: OnTerminal,
) -> str:
    """Write the run's outcome (and, for a terminal one, its webhook messages) under the lease."""
    assert decision.status is not None
    outcome = store.Outcome(
        status=decision.status,
        delay=decision.delay,
        attempts=job.attempts + observer.counted,
        uncertain=decision.uncertain,
        idle=decision.idle,
        payment_status=decision.payment_status,
        pay_method=decision.method,
        cancellation=decision.cancellation,
        refund=decision.refund,
        error=decision.error,
    )
    args = (conn, job.id, job.lease_token, outcome, observer.written, observer.others)
    if outcome.terminal:
        finished = finish_terminal(*args, on_terminal=on_terminal)
    else:
        finished = store.finish(*args)
    if finished is not store.Finished.KEPT:
        log.warning("lease_lost_at_finish", job_id=str(job.id), imp_uid=job.imp_uid)
        return "lease_lost"
    if outcome.terminal:
        metrics.job_finished(decision.status, job.account)
        if decision.idle and decision.status is JobStatus.FAILED:
            metrics.job_given_up()
    log.info(
        "job_run",
        job_id=str(job.id),
        imp_uid=job.imp_uid,
        status=decision.status.value,
        attempts=outcome.attempts,
    )
    return decision.status.value


def finish_terminal(
    conn: Connection[Any],
    job_id: uuid.UUID,
    token: uuid.UUID,
    outcome: store.Outcome,
    written: dict[int, CallRecord],
    others: list[CallRecord],
    *,
    on_terminal: OnTerminal,
) -> store.Finished:
    """A terminal transition and what on_terminal writes with it, all or nothing.

    While no webhook endpoint is enabled there is no message to write: one statement in
    autocommit, which looks for enabled endpoints in its own snapshot. Otherwise (or when this
    process met one in the last HOOKED_MEMORY_SECONDS) one transaction writes both.
    """
    global _hooked_at
    args = (conn, job_id, token, outcome, written, others)
    if time.monotonic() - _hooked_at > HOOKED_MEMORY_SECONDS:
        finished = store.finish(*args, alone=True)
        if finished is not store.Finished.HOOKED:
            return finished
        _hooked_at = time.monotonic()
    with unit_of_work(conn) as uow:
        finished = store.finish(*args)
        if finished is store.Finished.KEPT:
            on_terminal(uow, job_id)
    return finished
