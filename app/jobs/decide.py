"""The decision table: what an iamport answer means for a job, and what comes next. Pure.

A run on a job is a short sequence of steps, each one upstream call. After each call `decide`
says what comes next: another step in the same run, or the status to record. It never reads
iamport's message text: refusals are settled by a lookup of the payment.

Two rules carry the money guarantees:
- A call whose answer we did not get (timeout, lost connection, a gateway's 5xx) may still be
  worked on at iamport. The job stays `uncertain` about it until a lookup settles it, and no
  further call that could change the payment is planned before the call's start plus the
  settle time (`settle_left` counts down to it). A lookup may settle it sooner: cancelled or
  paid are definite; `ready` proves nothing until the settle time has passed.
- A refund is only ever planned from a lookup made in the same run, with that lookup's
  refundable balance as its checksum, so iamport itself refuses a second refund.
A gateway with idempotency keys (PortOne V2, `keyed`) settles an unanswered call sooner: the
same call repeated with its key is the same request to it, answered with the first answer or
"still running" (IN_FLIGHT, never a failure), so it is repeated rather than waited out while
the gateway keeps the key; a cancellation it accepted but has not finished (REQUESTED) is
waited for, looked up until it succeeds or fails.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from app.jobs.records import (
    Cancellation,
    CancelledBy,
    Refund,
    UpstreamError,
    cancellation_of,
    exhausted,
    refund_of,
)
from app.jobs.status import JobStatus
from app.upstream.payment import Payment


class Step(StrEnum):
    CANCEL = "cancel"  # DELETE /cvs/{imp_uid} or DELETE /vbanks/{imp_uid}, by the method
    REFUND = "refund"  # POST /payments/cancel with a checksum
    LOOKUP = "lookup"  # GET /payments/{imp_uid}: changes nothing


MUTATING = frozenset({Step.CANCEL, Step.REFUND})


class Method(StrEnum):
    """Which call cancels the payment: iamport's record of it decides, the event only hints."""

    CVS = "cvs"
    VBANK = "vbank"


class OnPaid(StrEnum):
    HOLD = "hold"
    REFUND = "refund"


class Kind(StrEnum):
    """What an upstream call told us, in the terms the decision needs."""

    OK = "ok"  # applied (code 0), or a lookup answered with a payment
    REFUSED = "refused"  # iamport answered no: 200 with code != 0, or a 4xx
    ENDED = "ended"  # a 5xx from iamport's application (its JSON envelope): the call has
    #                  ended, but may have applied before it failed
    NOT_FOUND = "not_found"  # iamport does not know the imp_uid
    UNKNOWN = "unknown"  # timeout, connection lost, a gateway's 5xx, an unreadable body
    NOT_SENT = "not_sent"  # nothing left our side (no connection, fenced, no token)
    RATE_LIMITED = "rate_limited"  # 429 or our own limiter: nothing applied, wait
    UNAUTHORIZED = "unauthorized"  # 401 even with a fresh token: nothing applied
    IN_FLIGHT = "in_flight"  # a keyed repeat answered "still running": the first call goes on
    REQUESTED = "requested"  # a cancellation accepted but not finished: it may succeed or fail
    UNSUPPORTED = "unsupported"  # the gateway has no such call (V2 cannot void a barcode)


# Answers after which the call may still be at work upstream.
UNANSWERED = frozenset({Kind.UNKNOWN, Kind.IN_FLIGHT, Kind.REQUESTED})


@dataclass(frozen=True)
class Policy:
    """Retry rules from the settings."""

    max_attempts: int = 8
    base_seconds: float = 2.0
    cap_seconds: float = 300.0
    # Before the first lookup after an unknown answer: give iamport at least one call's time.
    unknown_floor_seconds: float = 10.0
    settle_seconds: float = 120.0
    # Runs in a row that learn nothing (lookups that fail, statuses nobody documents, crashes)
    # before the job fails with a plain error instead of retrying forever.
    max_idle_runs: int = 30
    # How much earlier than our first call a cancellation's own time must be to be upstream's:
    # iamport's times are whole seconds (truncated), and so is the `now` the skew comes from.
    credit_margin_seconds: float = 5.0
    # How long a keyed gateway keeps an idempotency key (PortOne V2: 3 hours): within it an
    # unanswered call is settled by its repeat, after it by the settle time.
    key_lifetime_seconds: float = 3 * 3600.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return rng.uniform(0, ceiling)


@dataclass(frozen=True)
class Result:
    """One upstream answer, reduced to what matters."""

    kind: Kind
    payment: Payment | None = None  # the Payment in the answer, if any
    retry_after: float | None = None
    error: UpstreamError | None = None
    # For a mutating step: the request left our side (known when it was sent, not guessed).
    sent: bool = True
    # When a mutating call left our side (UNIX seconds, our clock), if it did.
    sent_at: float | None = None
    # The clock skew as known once the call was made (its token exchange may have measured it).
    clock_skew: float | None = None


@dataclass(frozen=True)
class JobState:
    """The facts about a job the decision needs."""

    attempts: int = 0  # cancel and refund calls sent (a 429 does not count)
    uncertain: Step | None = None  # the mutating call whose answer we never got
    settle_left: float = 0.0  # seconds until that call can no longer apply
    method: Method = Method.CVS
    refund_allowed: bool = False  # on_paid is refund, or a person asked for the refund
    look_first: bool = False  # a notification came: learn the payment's status first
    idle_runs: int = 0
    error: UpstreamError | None = None  # the job's recorded error, kept when a run adds none
    # When the job's first cancel or refund left our side (UNIX seconds, our clock), ever.
    first_sent_at: float | None = None
    # iamport's clock minus ours, in seconds, as the token exchange measured it.
    clock_skew: float | None = None
    # The gateway keys every call that changes a payment (PortOne V2): a repeat of an
    # unanswered call is that same call, not a second one.
    keyed: bool = False

    @property
    def unsettled(self) -> bool:
        return self.uncertain is not None and self.settle_left > 0


@dataclass(frozen=True)
class Decision:
    """Either `next_step` (go on in this run) or `status` (record and stop)."""

    next_step: Step | None = None
    checksum: float | None = None  # with next_step REFUND: the balance the lookup showed
    status: JobStatus | None = None
    delay: float = 0.0  # for retry_wait
    uncertain: Step | None = None
    payment_status: str | None = None
    method: Method | None = None
    cancellation: Cancellation | None = None
    refund: Refund | None = None
    error: UpstreamError | None = None
    idle: bool = False  # this run learnt nothing: counts towards Policy.max_idle_runs

    @property
    def terminal(self) -> bool:
        return self.status is not None and self.status not in (
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            JobStatus.RETRY_WAIT,
        )


def method_of(payment: Payment) -> Method | None:
    """The cancel call iamport's record of the payment asks for, if it says."""
    if payment.pay_method == "vbank":
        return Method.VBANK
    if payment.pay_method == "cvs":
        return Method.CVS
    return None


def balance_of(payment: Payment) -> float:
    """What is left to refund, as the payment shows it."""
    return max(payment.amount - payment.cancel_amount, 0.0)


def cancelled_by(
    cancelled_time: float,
    first_sent_at: float | None,
    clock_skew: float | None,
    margin: float,
    *,
    ours_may_have: bool = True,
) -> CancelledBy:
    """Whose cancellation it is: `upstream` only when it happened before any call of ours
    could have reached iamport.

    `cancelled_time` is the cancellation's own time on iamport's clock (UNIX seconds, 0 when
    it does not say); `first_sent_at` our first cancel or refund's start on our clock; the
    skew (iamport's minus ours) moves one clock onto the other. Where any of them is missing
    it cannot tell, and a call of ours that may have applied takes the credit.
    `ours_may_have` is False when no call of ours can have applied (none was sent, or each
    was answered with a refusal): then it is upstream's whatever the times say.
    """
    if not ours_may_have:
        return "upstream"
    if cancelled_time <= 0 or first_sent_at is None or clock_skew is None:
        return "service"
    on_our_clock = cancelled_time - clock_skew
    return "upstream" if on_our_clock + margin < first_sent_at else "service"


def _credit(payment: Payment, state: JobState, policy: Policy, ours_may_have: bool) -> CancelledBy:
    return cancelled_by(
        payment.cancelled_time(),
        state.first_sent_at,
        state.clock_skew,
        policy.credit_margin_seconds,
        ours_may_have=ours_may_have,
    )


def first_step(state: JobState) -> Step:
    """A job whose last call may have applied, or that was told news, looks first."""
    return Step.LOOKUP if state.uncertain is not None or state.look_first else Step.CANCEL


def _retry(
    delay: float,
    state: JobState,
    *,
    uncertain: Step | None,
    error: UpstreamError | None,
    idle: bool = False,
    payment_status: str | None = None,
) -> Decision:
    return Decision(
        status=JobStatus.RETRY_WAIT,
        delay=max(delay, 0.0),
        uncertain=uncertain,
        error=error or state.error,
        idle=idle,
        payment_status=payment_status,
    )


def _still_open(state: JobState) -> Step | None:
    """The unanswered call a job ending without a cancellation must keep: a retry or a refund
    a person asks for later must still wait for it to settle."""
    return state.uncertain if state.unsettled else None


def _may_repeat(state: JobState, policy: Policy, step: Step) -> bool:
    """Whether the unanswered `step` may be sent again now: only on a keyed gateway, only the
    same call (its key), and only while the gateway still keeps the key."""
    if not state.keyed or state.uncertain is not step:
        return False
    since = policy.settle_seconds - state.settle_left  # since the unanswered call was sent
    return since < policy.key_lifetime_seconds


def _look_again(state: JobState, policy: Policy, rng: random.Random) -> float:
    return max(policy.backoff(max(1, state.attempts), rng), policy.unknown_floor_seconds)


def _until_settled(state: JobState, policy: Policy, rng: random.Random, status: str) -> Decision:
    """Wait for an unanswered call: look again after a while, at the latest when it settles."""
    look_again = max(policy.backoff(max(1, state.attempts), rng), policy.unknown_floor_seconds)
    return _retry(
        min(look_again, state.settle_left) + 0.05,
        state,
        uncertain=state.uncertain,
        error=None,
        payment_status=status,
    )


def decide(
    step: Step,
    result: Result,
    state: JobState,
    policy: Policy,
    rng: random.Random,
    *,
    refused: Step | None = None,
    unsupported: UpstreamError | None = None,
) -> Decision:
    """What to do after `step` answered `result`.

    `state.attempts` already counts the call just made; `state.uncertain` is as it stood
    before it. `refused` names the mutating step this run saw refused before this lookup;
    `unsupported` is the gateway's reason when it had no call for that step.
    """
    if result.kind is Kind.RATE_LIMITED:
        # Waiting is not a failed attempt, and a 429 means the call did not apply.
        return _retry(result.retry_after or 1.0, state, uncertain=state.uncertain, error=None)
    if step is Step.LOOKUP:
        return _after_lookup(result, state, policy, rng, refused, unsupported)
    if result.kind is Kind.UNSUPPORTED:
        # Nothing was sent. The payment says whether it needs that call at all (the event's
        # method is a hint): a lookup decides; the gateway's reason is the error only if the
        # job ends for it.
        return Decision(next_step=Step.LOOKUP, uncertain=state.uncertain, error=state.error)
    if not result.sent or result.kind is Kind.NOT_SENT:
        # Nothing left our side, so nothing can have applied: a plain retry.
        delay = result.retry_after or policy.backoff(max(1, state.attempts), rng)
        return _retry(delay, state, uncertain=state.uncertain, error=result.error)
    return _after_mutation(step, result, state, policy, rng)


def _after_mutation(
    step: Step, result: Result, state: JobState, policy: Policy, rng: random.Random
) -> Decision:
    payment = result.payment
    if result.kind is Kind.OK and payment is not None and payment.status == "cancelled":
        method = method_of(payment)
        if step is Step.REFUND:
            return Decision(
                status=JobStatus.REFUNDED,
                payment_status=payment.status,
                refund=refund_of(payment),
                method=method,
                error=state.error,
            )
        # "Done" may also be iamport accepting a cancel of a payment already cancelled: the
        # cancellation's own time tells.
        return Decision(
            status=JobStatus.CANCELLED,
            payment_status=payment.status,
            cancellation=cancellation_of(payment, _credit(payment, state, policy, True)),
            method=method,
            error=state.error,
        )
    if result.kind is Kind.OK:
        # "Done", but the payment it shows is not cancelled: our call may still be the one
        # that does it, so a lookup decides, and ours counts as possibly applied.
        return Decision(next_step=Step.LOOKUP, uncertain=step, error=state.error)
    if result.kind in (Kind.REFUSED, Kind.NOT_FOUND):
        # The call ended without applying; never trust its words: the payment decides.
        return Decision(next_step=Step.LOOKUP, uncertain=None, error=result.error)
    if result.kind is Kind.ENDED:
        # Nothing of it is still in flight, but it may have applied: a lookup decides now,
        # and a cancellation it shows is ours.
        return Decision(next_step=Step.LOOKUP, uncertain=step, error=result.error)
    if result.kind in UNANSWERED:
        # Unknown, still running, or accepted but not finished: look again after a while.
        delay = min(_look_again(state, policy, rng), policy.settle_seconds)
        return _retry(delay, state, uncertain=step, error=result.error)
    # UNAUTHORIZED: the call was not applied. Out of attempts, a lookup says how it ends.
    if state.attempts >= policy.max_attempts:
        return Decision(next_step=Step.LOOKUP, uncertain=None, error=result.error)
    delay = policy.backoff(state.attempts, rng)
    return _retry(delay, state, uncertain=None, error=result.error)


def _after_lookup(
    result: Result,
    state: JobState,
    policy: Policy,
    rng: random.Random,
    refused: Step | None,
    unsupported: UpstreamError | None = None,
) -> Decision:
    if result.kind is Kind.NOT_FOUND:
        return Decision(
            status=JobStatus.FAILED,
            error=result.error or state.error,
            uncertain=_still_open(state),
        )
    payment = result.payment
    if result.kind is not Kind.OK or payment is None:
        # A lookup changes nothing upstream: look again later, without spending an attempt.
        delay = policy.backoff(max(1, state.idle_runs + 1), rng)
        return _retry(delay, state, uncertain=state.uncertain, error=result.error, idle=True)

    decision = _after_payment(payment, state, policy, rng, refused, unsupported)
    # The method iamport's record gives is kept, whatever comes next.
    return decision if decision.method else replace(decision, method=method_of(payment))


def _after_payment(
    payment: Payment,
    state: JobState,
    policy: Policy,
    rng: random.Random,
    refused: Step | None,
    unsupported: UpstreamError | None = None,
) -> Decision:
    status = payment.status
    method = method_of(payment) or state.method
    if payment.cancel_pending and status != "cancelled":
        # A cancellation the gateway accepted is still under way: no other call until it
        # has succeeded or failed; look again.
        return _retry(
            min(_look_again(state, policy, rng), policy.cap_seconds) + 0.05,
            state,
            uncertain=state.uncertain,
            error=None,
            payment_status=status,
        )
    if unsupported is not None and method is Method.CVS and status in ("ready", "pending"):
        # The barcode is still payable and this gateway has no call that voids it: no run
        # can do more. The gateway's reason is the error. Only for a status known to be
        # unpaid: one the gateway does not document may be a paid payment (on_paid then).
        return Decision(
            status=JobStatus.FAILED, payment_status=status, method=method, error=unsupported,
            uncertain=_still_open(state),
        )  # fmt: skip
    if status == "cancelled":
        if state.uncertain is Step.REFUND:
            return Decision(
                status=JobStatus.REFUNDED,
                payment_status=status,
                refund=refund_of(payment),
                method=method,
                error=state.error,
            )
        # An unanswered (or ended, or "done") cancel of ours may be what did it, unless the
        # cancellation is older than our first call; without one, nothing of ours applied.
        by = _credit(payment, state, policy, state.uncertain is Step.CANCEL)
        return Decision(
            status=JobStatus.CANCELLED,
            payment_status=status,
            cancellation=cancellation_of(payment, by),
            method=method,
            error=state.error,
        )
    if status == "paid":
        if state.uncertain is Step.REFUND and payment.cancel_failed:
            # Our refund reached the gateway and its cancellation failed there: the payment
            # stays paid, for a person to finish.
            return Decision(
                status=JobStatus.NEEDS_REFUND, payment_status=status, method=method,
                error=UpstreamError(message="the refund's cancellation failed at the gateway"),
            )  # fmt: skip
        if not state.refund_allowed or refused is Step.REFUND:
            # Blocking is no longer possible: a person decides, or finishes a refund iamport
            # would not do for us (its refusal is in `error`). An unsettled call is kept, so
            # a refund the person asks for waits for it.
            return Decision(
                status=JobStatus.NEEDS_REFUND, payment_status=status, method=method,
                error=state.error, uncertain=_still_open(state),
            )  # fmt: skip
        if state.unsettled and not _may_repeat(state, policy, Step.REFUND):
            return _until_settled(state, policy, rng, status)
        if state.attempts >= policy.max_attempts:
            return Decision(
                status=JobStatus.NEEDS_REFUND,
                payment_status=status,
                method=method,
                error=exhausted(state.error, policy.max_attempts),
            )
        return Decision(
            next_step=Step.REFUND,
            checksum=balance_of(payment),
            payment_status=status,
            method=method,
            error=state.error,
        )
    if status == "failed":
        return Decision(
            status=JobStatus.FAILED,
            payment_status=status,
            method=method,
            error=state.error or UpstreamError(message="the payment failed at iamport"),
            uncertain=_still_open(state),
        )
    if status == "pending":
        # Created at the gateway but neither issued nor paid: nothing to stop yet. Look again
        # later; the idle bound ends the job with this plain error if it stays so.
        delay = policy.backoff(max(1, state.idle_runs + 1), rng)
        error = UpstreamError(message="nothing to stop yet: the payment is neither issued nor paid")
        return Decision(
            status=JobStatus.RETRY_WAIT, delay=delay, uncertain=state.uncertain, error=error,
            idle=True, payment_status=status,
        )  # fmt: skip
    if status != "ready":
        # A status iamport does not document: do not guess, look again later.
        delay = policy.backoff(max(1, state.idle_runs + 1), rng)
        return _retry(
            delay, state, uncertain=state.uncertain, error=None, idle=True, payment_status=status
        )
    # ready: nothing has applied yet, or an unanswered call of ours still may.
    if state.unsettled and not _may_repeat(state, policy, Step.CANCEL):
        return _until_settled(state, policy, rng, status)
    if state.attempts >= policy.max_attempts:
        return Decision(
            status=JobStatus.FAILED,
            payment_status=status,
            method=method,
            error=exhausted(state.error, policy.max_attempts),
        )
    if refused is Step.CANCEL and method is state.method:
        # iamport refused a barcode it still shows as ready, for a reason we cannot read.
        delay = policy.backoff(state.attempts, rng)
        return _retry(delay, state, uncertain=None, error=None, payment_status=status)
    return Decision(next_step=Step.CANCEL, payment_status=status, method=method, error=state.error)


def after_crash(
    state: JobState, error: UpstreamError, policy: Policy, rng: random.Random
) -> Decision:
    """A run that raised: retry with backoff, and fail plainly once runs keep failing."""
    decision = _retry(
        policy.backoff(state.idle_runs + 1, rng),
        state,
        uncertain=state.uncertain,
        error=error,
        idle=True,
    )
    return _bounded(decision, state, policy)


def _bounded(decision: Decision, state: JobState, policy: Policy) -> Decision:
    """An idle run past the bound ends the job `failed`, saying why."""
    if not decision.idle or state.idle_runs + 1 < policy.max_idle_runs:
        return decision
    last = decision.error.message if decision.error and decision.error.message else None
    why = f"gave up after {policy.max_idle_runs} runs that could not learn the payment's status"
    return replace(
        decision,
        status=JobStatus.FAILED,
        delay=0.0,
        error=(decision.error or UpstreamError()).model_copy(
            update={"message": f"{why}; last: {last}" if last else why}
        ),
    )


MAX_STEPS = 6  # lookup, cancel, lookup, cancel by the other method, lookup, refund at most


@dataclass(frozen=True)
class Run:
    """What one run decided, and the job's attempt count after it."""

    decision: Decision
    attempts: int


Call = Callable[[Step, Method, float | None], Result]


def counts_as_attempt(step: Step, result: Result) -> bool:
    """A mutating call that left our side and was not answered 429 is an attempt; a keyed
    repeat answered "still running" is the first call, not another."""
    return (
        step in MUTATING
        and result.sent
        and result.kind not in (Kind.RATE_LIMITED, Kind.IN_FLIGHT, Kind.UNSUPPORTED)
    )


def drive(
    state: JobState,
    call: Call,
    policy: Policy,
    rng: random.Random,
    elapsed: Callable[[], float] = lambda: 0.0,
) -> Run:
    """One run of a job: call, decide, and go on until a status is decided.

    `call(step, method, checksum)` makes one upstream call; it is the only I/O, so this loop is
    tested with a simulated iamport as well as with the real one. `elapsed` is the run's age
    on a monotonic clock: the settle time counts down while the run goes on.
    """
    settled_at = state.settle_left  # on the run's clock: when the last unanswered call settles
    step = first_step(state)
    refused: Step | None = None
    unsupported: UpstreamError | None = None
    checksum: float | None = None
    payment_status: str | None = None
    for _ in range(MAX_STEPS):
        if step in MUTATING and state.attempts >= policy.max_attempts:
            # Out of attempts: only a lookup may say how the job ends.
            step = Step.LOOKUP
        started = elapsed()
        result = call(step, state.method, checksum)
        if result.clock_skew is not None:
            state = replace(state, clock_skew=result.clock_skew)
        if counts_as_attempt(step, result):
            state = replace(state, attempts=state.attempts + 1)
            if state.first_sent_at is None and result.sent_at is not None:
                state = replace(state, first_sent_at=result.sent_at)
            # An answer of any kind ends the call at iamport; only an unanswered one goes on.
            settled_at = started + policy.settle_seconds if result.kind in UNANSWERED else 0.0
        elif step in MUTATING and result.kind is Kind.IN_FLIGHT:
            settled_at = started + policy.settle_seconds  # the first call is still at work
        state = replace(state, settle_left=settled_at - elapsed())
        decision = decide(
            step, result, state, policy, rng, refused=refused, unsupported=unsupported
        )
        payment_status = decision.payment_status or payment_status
        if decision.next_step is None:
            # What a lookup said of the payment's method is kept, whatever the run decided.
            method = decision.method or state.method
            decision = replace(decision, payment_status=payment_status, method=method)
            return Run(_bounded(decision, state, policy), state.attempts)
        refused = step if step in MUTATING and decision.uncertain is None else None
        unsupported = None
        if step in MUTATING and result.kind is Kind.UNSUPPORTED:
            unsupported = result.error or UpstreamError(message="the gateway has no such call")
        state = replace(
            state,
            uncertain=decision.uncertain,
            method=decision.method or state.method,
            error=decision.error or state.error,
        )
        step, checksum = decision.next_step, decision.checksum
    # Only a payment that changes under us at every step gets here: look again later.
    retry = _retry(
        policy.backoff(state.attempts, rng), state, uncertain=state.uncertain, error=None
    )
    return Run(replace(retry, payment_status=payment_status, method=state.method), state.attempts)
