"""The job state machine and the upstream decision table. Pure.

A worker run on a job is a short sequence of steps, each one upstream call. After each call
`decide` says what comes next: another step in the same run, or the status to record. It
never reads iamport's message text: refusals are settled by a lookup of the payment.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from app.iamport.schemas import Payment


class Step(StrEnum):
    CANCEL = "cancel"
    LOOKUP = "lookup"


class Kind(StrEnum):
    """What an upstream call told us, in the terms the decision needs."""

    OK = "ok"  # cancel applied (code 0), or a lookup answered with a payment
    REFUSED = "refused"  # a definite no: 200 with code != 0, or 400/404/409 to a cancel
    NOT_FOUND = "not_found"  # the lookup does not know the imp_uid
    UNKNOWN = "unknown"  # timeout, connection lost, 5xx, garbled body: may or may not have applied
    RATE_LIMITED = "rate_limited"  # 429 or our own limiter: nothing applied, wait and retry
    UNAUTHORIZED = "unauthorized"  # 401 even with a fresh token: nothing applied


TERMINAL = frozenset({"cancelled", "needs_refund", "failed"})
# What a looked-up payment status means for a job nobody is working on (decide() agrees; a
# test holds them together). "ready" means nothing has happened yet.
TERMINAL_FOR_PAYMENT = {"paid": "needs_refund", "cancelled": "cancelled", "failed": "failed"}
CancelledBy = Literal["service", "upstream"]


@dataclass(frozen=True)
class Policy:
    """Retry rules from the settings."""

    max_attempts: int = 8
    base_seconds: float = 2.0
    cap_seconds: float = 300.0
    # After an unknown outcome, give a call that may still be running at iamport this long to
    # finish before we look (and perhaps cancel) again: never two cancels in flight.
    unknown_floor_seconds: float = 10.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return rng.uniform(0, ceiling)


@dataclass(frozen=True)
class Result:
    """One upstream answer, reduced to what matters."""

    kind: Kind
    payment_status: str | None = None  # from the Payment in the answer
    cancellation: dict[str, Any] | None = None  # the payment's last cancel_history entry
    retry_after: float | None = None
    error: dict[str, Any] | None = None  # {"http_status", "code", "message"} of a failure
    sent: bool = True  # False when nothing left our side (our own rate limiter, Redis down)


@dataclass(frozen=True)
class JobState:
    """The facts about a job the decision needs."""

    attempts: int  # cancel calls sent so far, including one in flight
    uncertain: bool  # a cancel was sent whose outcome we do not know


@dataclass(frozen=True)
class Decision:
    """Either `next_step` (go on in this run) or `status` (record and stop)."""

    next_step: Step | None = None
    status: str | None = None
    delay: float | None = None  # for retry_wait
    uncertain: bool = False
    payment_status: str | None = None
    cancellation: dict[str, Any] | None = None
    error: dict[str, Any] | None = field(default=None)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _iso(unix: int | float | None) -> str | None:
    return datetime.fromtimestamp(unix, UTC).isoformat() if unix else None


def cancellation_of(payment: Payment) -> dict[str, Any]:
    """The cancellation record from the payment's last cancel_history entry."""
    last = payment.last_cancel()
    if last is None:
        return {
            "pg_tid": None,
            "amount": payment.cancel_amount or payment.amount,
            "cancelled_at": _iso(payment.cancelled_at),
            "reason": None,
            "receipt_url": None,
        }
    return {
        "pg_tid": last.pg_tid,
        "amount": last.amount,
        "cancelled_at": _iso(last.cancelled_at),
        "reason": last.reason,
        "receipt_url": last.receipt_url,
    }


def first_step(state: JobState) -> Step:
    """A job whose last cancel may have applied is looked up before anything else."""
    return Step.LOOKUP if state.uncertain else Step.CANCEL


def _cancelled(result: Result, by: CancelledBy) -> Decision:
    record = dict(result.cancellation or {})
    record["cancelled_by"] = by
    return Decision(status="cancelled", payment_status="cancelled", cancellation=record)


def _retry(
    delay: float,
    *,
    uncertain: bool,
    error: dict[str, Any] | None,
    payment_status: str | None = None,
) -> Decision:
    return Decision(
        status="retry_wait",
        delay=delay,
        uncertain=uncertain,
        error=error,
        payment_status=payment_status,
    )


def exhausted_error(error: dict[str, Any] | None, max_attempts: int) -> dict[str, Any]:
    """The error of a job that ran out of attempts: the last upstream error, said plainly."""
    base = dict(error or {"http_status": None, "code": None})
    last = f"; last upstream answer: {base['message']}" if base.get("message") else ""
    base["message"] = f"gave up after {max_attempts} cancel attempts{last}"
    return base


def decide(
    step: Step,
    result: Result,
    state: JobState,
    policy: Policy,
    rng: random.Random,
    *,
    after_refusal: bool = False,
    last_error: dict[str, Any] | None = None,
) -> Decision:
    """What to do after `step` answered `result`.

    `state.attempts` already counts the call just made; `state.uncertain` is as it stood
    before this step. `after_refusal` says this lookup explains a refusal in the same run;
    `last_error` is the job's recorded error, kept when a run adds none.
    """
    if result.kind is Kind.RATE_LIMITED:
        # Waiting is not a failed attempt (the caller does not count a 429'd cancel), and a
        # 429 means the cancel did not apply.
        uncertain = state.uncertain and step is Step.LOOKUP
        return _retry(result.retry_after or 1.0, uncertain=uncertain, error=last_error)

    if step is Step.CANCEL and not result.sent:
        # Nothing left our side (no token, limiter or Redis down): nothing can have applied.
        delay = result.retry_after or policy.backoff(max(1, state.attempts), rng)
        return _retry(delay, uncertain=False, error=result.error or last_error)

    if step is Step.CANCEL:
        if result.kind is Kind.OK:
            return _cancelled(result, "service")
        if result.kind in (Kind.REFUSED, Kind.NOT_FOUND):
            # Never trust the refusal's words: the payment's status decides.
            return Decision(next_step=Step.LOOKUP, error=result.error, uncertain=False)
        if result.kind is Kind.UNKNOWN:
            delay = max(policy.backoff(state.attempts, rng), policy.unknown_floor_seconds)
            return _retry(delay, uncertain=True, error=result.error)
        # UNAUTHORIZED: the call was not applied. Out of attempts, a lookup says how it ends.
        if state.attempts >= policy.max_attempts:
            return Decision(next_step=Step.LOOKUP, error=result.error, uncertain=False)
        return _retry(policy.backoff(state.attempts, rng), uncertain=False, error=result.error)

    # Step.LOOKUP
    if result.kind is Kind.NOT_FOUND:
        return Decision(status="failed", error=result.error or last_error, uncertain=False)
    if result.kind in (Kind.UNKNOWN, Kind.UNAUTHORIZED, Kind.REFUSED):
        # A lookup changes nothing upstream: retry it, without spending a cancel attempt.
        delay = policy.backoff(max(1, state.attempts), rng)
        return _retry(delay, uncertain=state.uncertain, error=result.error or last_error)

    status = result.payment_status
    error = last_error
    if status == "cancelled":
        return _cancelled(result, "service" if state.uncertain else "upstream")
    if status == "paid":
        return Decision(status="needs_refund", payment_status="paid", error=error)
    if status == "failed":
        return Decision(
            status="failed",
            payment_status="failed",
            error=error
            or {"http_status": None, "code": None, "message": "the payment failed at iamport"},
        )
    if status != "ready":
        # A status iamport does not document: do not guess, look again later.
        return _retry(
            policy.backoff(max(1, state.attempts), rng),
            uncertain=state.uncertain,
            error=error,
            payment_status=status,
        )
    # ready: our earlier cancel did not apply, or iamport refused for a reason we cannot see.
    if state.attempts >= policy.max_attempts:
        return Decision(
            status="failed",
            payment_status="ready",
            error=exhausted_error(error, policy.max_attempts),
        )
    if after_refusal:
        return _retry(
            policy.backoff(state.attempts, rng),
            uncertain=False,
            error=error,
            payment_status="ready",
        )
    return Decision(next_step=Step.CANCEL, payment_status="ready", error=error)


MAX_STEPS = 4  # cancel -> lookup, or lookup -> cancel -> lookup: a run never needs more


@dataclass(frozen=True)
class Run:
    """What one run decided, and the job's cancel-attempt count after it."""

    decision: Decision
    attempts: int


def counts_as_attempt(step: Step, result: Result) -> bool:
    """A cancel call that left our side and was not answered 429 is an attempt."""
    return step is Step.CANCEL and result.sent and result.kind is not Kind.RATE_LIMITED


def drive(
    state: JobState,
    call: Callable[[Step], Result],
    policy: Policy,
    rng: random.Random,
    last_error: dict[str, Any] | None = None,
) -> Run:
    """One run of a job: call, decide, and go on until a status is decided.

    `call` makes one upstream call; it is the only I/O, so this loop is tested with a
    simulated iamport as well as with the real one.
    """
    step = first_step(state)
    attempts, uncertain = state.attempts, state.uncertain
    after_refusal = False
    payment_status: str | None = None
    for _ in range(MAX_STEPS):
        if step is Step.CANCEL and attempts >= policy.max_attempts:
            # Out of attempts: only a lookup may say how the job ends (it may have been
            # cancelled or paid meanwhile); "ready" then fails it.
            step, after_refusal = Step.LOOKUP, True
        result = call(step)
        if counts_as_attempt(step, result):
            attempts += 1
        decision = decide(
            step,
            result,
            JobState(attempts, uncertain),
            policy,
            rng,
            after_refusal=after_refusal,
            last_error=last_error,
        )
        payment_status = decision.payment_status or payment_status
        if decision.next_step is None:
            return Run(replace(decision, payment_status=payment_status), attempts)
        after_refusal = step is Step.CANCEL
        uncertain = decision.uncertain
        last_error = decision.error or last_error
        step = decision.next_step
    raise AssertionError("a run took more steps than the decision table allows")
