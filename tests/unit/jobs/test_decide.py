"""The upstream decision table, row by row, without I/O.

Every delay is asserted exactly: the expected value is drawn from a fresh `random.Random(SEED)`
the same way `decide` draws it from its own fresh `random.Random(SEED)`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from app.jobs.decide import (
    MAX_STEPS,
    Decision,
    JobState,
    Kind,
    Method,
    OnPaid,
    Policy,
    Result,
    Step,
    after_crash,
    balance_of,
    cancelled_by,
    counts_as_attempt,
    decide,
    drive,
    first_step,
    method_of,
)
from app.jobs.records import Cancellation, Refund, UpstreamError
from app.jobs.status import JobStatus
from app.upstream.payment import CancelHistoryEntry, Payment

SEED = 7
POLICY = Policy(
    max_attempts=3,
    base_seconds=2.0,
    cap_seconds=300.0,
    unknown_floor_seconds=10.0,
    settle_seconds=120.0,
    max_idle_runs=5,
)
ERR = UpstreamError(http_status=500, code=None, message="boom")
OLD = UpstreamError(http_status=400, code=-1, message="earlier")
REFUSAL = UpstreamError(http_status=200, code=1, message="refund refused by the PG")
PAID_AT = 1_764_000_000.0
CANCELLED_AT = 1_764_000_100.0


def pay(
    status: str,
    method: str | None = "cvs",
    *,
    amount: float = 1000.0,
    cancel_amount: float = 0.0,
) -> Payment:
    history: list[CancelHistoryEntry] = []
    if status == "cancelled":
        history = [
            CancelHistoryEntry(
                pg_tid="pg-1",
                amount=amount - cancel_amount,
                cancelled_at=CANCELLED_AT,
                reason="out of stock",
                receipt_url="https://r/1",
            )
        ]
        cancel_amount = amount
    return Payment(
        imp_uid="imp_1",
        status=status,
        pay_method=method,
        amount=amount,
        cancel_amount=cancel_amount,
        paid_at=PAID_AT if status in ("paid", "cancelled") else 0,
        cancelled_at=CANCELLED_AT if status == "cancelled" else 0,
        cancel_history=history,
    )


def backoff(attempt: int) -> float:
    return POLICY.backoff(attempt, random.Random(SEED))


def run(
    step: Step,
    result: Result,
    state: JobState | None = None,
    *,
    refused: Step | None = None,
    policy: Policy = POLICY,
) -> Decision:
    return decide(
        step, result, state or JobState(attempts=1), policy, random.Random(SEED), refused=refused
    )


CANCELLATION = Cancellation(
    pg_tid="pg-1",
    amount=1000.0,
    cancelled_at=datetime.fromtimestamp(CANCELLED_AT, UTC),
    reason="out of stock",
    receipt_url="https://r/1",
)
REFUND = Refund(**CANCELLATION.model_dump(exclude={"cancelled_by"}))


# -- small pure helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uncertain", "look_first", "step"),
    [
        (None, False, Step.CANCEL),
        (None, True, Step.LOOKUP),
        (Step.CANCEL, False, Step.LOOKUP),
        (Step.REFUND, False, Step.LOOKUP),
        (Step.CANCEL, True, Step.LOOKUP),
    ],
)
def test_first_step(uncertain: Step | None, look_first: bool, step: Step) -> None:
    assert first_step(JobState(uncertain=uncertain, look_first=look_first)) is step


@pytest.mark.parametrize(
    ("pay_method", "method"),
    [("cvs", Method.CVS), ("vbank", Method.VBANK), ("card", None), (None, None)],
)
def test_method_of(pay_method: str | None, method: Method | None) -> None:
    assert method_of(pay("ready", pay_method)) is method


@pytest.mark.parametrize(
    ("amount", "cancel_amount", "balance"),
    [(1000.0, 0.0, 1000.0), (1000.0, 300.0, 700.0), (1000.0, 1000.0, 0.0), (100.0, 250.0, 0.0)],
)
def test_balance_of_is_amount_minus_cancel_amount(
    amount: float, cancel_amount: float, balance: float
) -> None:
    payment = pay("paid", amount=amount, cancel_amount=cancel_amount)
    assert balance_of(payment) == balance


@pytest.mark.parametrize(
    ("uncertain", "settle_left", "unsettled"),
    [(None, 0.0, False), (None, 50.0, False), (Step.CANCEL, 0.0, False), (Step.CANCEL, 0.1, True)],
)
def test_unsettled(uncertain: Step | None, settle_left: float, unsettled: bool) -> None:
    assert JobState(uncertain=uncertain, settle_left=settle_left).unsettled is unsettled


@pytest.mark.parametrize(
    ("step", "kind", "sent", "counts"),
    [
        (Step.CANCEL, Kind.OK, True, True),
        (Step.REFUND, Kind.UNKNOWN, True, True),
        (Step.CANCEL, Kind.REFUSED, True, True),
        (Step.CANCEL, Kind.UNAUTHORIZED, True, True),
        (Step.CANCEL, Kind.RATE_LIMITED, True, False),
        (Step.REFUND, Kind.NOT_SENT, False, False),
        (Step.CANCEL, Kind.UNKNOWN, False, False),
        (Step.LOOKUP, Kind.OK, True, False),
        (Step.REFUND, Kind.IN_FLIGHT, True, False),
        (Step.REFUND, Kind.REQUESTED, True, True),
        (Step.CANCEL, Kind.UNSUPPORTED, False, False),
    ],
)
def test_counts_as_attempt(step: Step, kind: Kind, sent: bool, counts: bool) -> None:
    assert counts_as_attempt(step, Result(kind, sent=sent)) is counts


@pytest.mark.parametrize(
    ("status", "terminal"),
    [(s, s not in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRY_WAIT)) for s in JobStatus]
    + [(None, False)],
)
def test_decision_terminal(status: JobStatus | None, terminal: bool) -> None:
    assert Decision(status=status).terminal is terminal


def test_backoff_is_full_jitter_doubling_and_capped() -> None:
    p = Policy(base_seconds=2, cap_seconds=300)
    rng = random.Random(1)
    for attempt, ceiling in [(0, 2), (1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (30, 300)]:
        samples = [p.backoff(attempt, rng) for _ in range(300)]
        assert min(samples) >= 0
        assert max(samples) <= ceiling
        assert max(samples) > ceiling * 0.8


# -- every (step, kind) pair, from a plain state ---------------------------------------------

PLAIN = JobState(attempts=1, method=Method.CVS, error=OLD)
READY = pay("ready")


def _pair_expectations() -> list[tuple[Step, Kind, Decision]]:
    rows: list[tuple[Step, Kind, Decision]] = []
    for step in (Step.CANCEL, Step.REFUND):
        rows += [
            (step, Kind.OK, Decision(next_step=Step.LOOKUP, uncertain=step, error=OLD)),
            (step, Kind.REFUSED, Decision(next_step=Step.LOOKUP, uncertain=None, error=ERR)),
            (step, Kind.NOT_FOUND, Decision(next_step=Step.LOOKUP, uncertain=None, error=ERR)),
            (step, Kind.ENDED, Decision(next_step=Step.LOOKUP, uncertain=step, error=ERR)),
            (
                step,
                Kind.UNKNOWN,
                Decision(
                    status=JobStatus.RETRY_WAIT,
                    delay=min(max(backoff(1), 10.0), 120.0),
                    uncertain=step,
                    error=ERR,
                ),
            ),
            *(
                (
                    step,
                    kind,
                    Decision(
                        status=JobStatus.RETRY_WAIT,
                        delay=min(max(backoff(1), 10.0), 120.0),
                        uncertain=step,
                        error=ERR,
                    ),
                )
                for kind in (Kind.IN_FLIGHT, Kind.REQUESTED)
            ),
            (step, Kind.UNSUPPORTED, Decision(next_step=Step.LOOKUP, uncertain=None, error=OLD)),
            (
                step,
                Kind.NOT_SENT,
                Decision(status=JobStatus.RETRY_WAIT, delay=backoff(1), error=ERR),
            ),
            (
                step,
                Kind.RATE_LIMITED,
                Decision(status=JobStatus.RETRY_WAIT, delay=1.0, error=OLD),
            ),
            (
                step,
                Kind.UNAUTHORIZED,
                Decision(status=JobStatus.RETRY_WAIT, delay=backoff(1), error=ERR),
            ),
        ]
    rows += [
        (
            Step.LOOKUP,
            Kind.OK,
            Decision(next_step=Step.CANCEL, payment_status="ready", method=Method.CVS, error=OLD),
        ),
        (Step.LOOKUP, Kind.NOT_FOUND, Decision(status=JobStatus.FAILED, error=ERR)),
        (
            Step.LOOKUP,
            Kind.RATE_LIMITED,
            Decision(status=JobStatus.RETRY_WAIT, delay=1.0, error=OLD),
        ),
    ]
    for kind in (
        Kind.REFUSED,
        Kind.ENDED,
        Kind.UNKNOWN,
        Kind.NOT_SENT,
        Kind.UNAUTHORIZED,
        Kind.IN_FLIGHT,
        Kind.REQUESTED,
        Kind.UNSUPPORTED,
    ):
        rows.append(
            (
                Step.LOOKUP,
                kind,
                Decision(status=JobStatus.RETRY_WAIT, delay=backoff(1), error=ERR, idle=True),
            )
        )
    return rows


PAIRS = _pair_expectations()


def test_the_pair_table_is_exhaustive() -> None:
    assert {(s, k) for s, k, _ in PAIRS} == {(s, k) for s in Step for k in Kind}
    assert len(PAIRS) == len(Step) * len(Kind)


@pytest.mark.parametrize(("step", "kind", "expected"), PAIRS)
def test_every_step_and_kind(step: Step, kind: Kind, expected: Decision) -> None:
    # A mutating step answered OK shows the payment still ready; a lookup shows it ready.
    result = Result(
        kind,
        payment=READY if kind is Kind.OK else None,
        error=None if kind in (Kind.OK, Kind.RATE_LIMITED) else ERR,
        sent=kind is not Kind.NOT_SENT,
    )
    assert run(step, result, PLAIN) == expected


# -- after a mutating call ---------------------------------------------------------------------


@pytest.mark.parametrize("uncertain", [None, Step.CANCEL])
@pytest.mark.parametrize("pay_method", ["cvs", "vbank"])
def test_cancel_applied_is_cancelled_by_service(uncertain: Step | None, pay_method: str) -> None:
    d = run(
        Step.CANCEL,
        Result(Kind.OK, pay("cancelled", pay_method)),
        replace(PLAIN, uncertain=uncertain),
    )
    assert d == Decision(
        status=JobStatus.CANCELLED,
        payment_status="cancelled",
        cancellation=replace_by(CANCELLATION, "service"),
        method=Method(pay_method),
        error=OLD,
    )
    assert d.terminal


def replace_by(c: Cancellation, by: Any) -> Cancellation:
    return c.model_copy(update={"cancelled_by": by})


def test_refund_applied_is_refunded_with_iamports_record() -> None:
    d = run(Step.REFUND, Result(Kind.OK, pay("cancelled", "vbank")), PLAIN)
    assert d == Decision(
        status=JobStatus.REFUNDED,
        payment_status="cancelled",
        refund=REFUND,
        method=Method.VBANK,
        error=OLD,
    )


@pytest.mark.parametrize("step", [Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("shown", [None, "ready", "paid", "failed"])
def test_done_but_not_cancelled_is_looked_up_as_possibly_applied(
    step: Step, shown: str | None
) -> None:
    payment = pay(shown) if shown else None
    assert run(step, Result(Kind.OK, payment), PLAIN) == Decision(
        next_step=Step.LOOKUP, uncertain=step, error=OLD
    )


@pytest.mark.parametrize("step", [Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("kind", [Kind.REFUSED, Kind.NOT_FOUND])
@pytest.mark.parametrize("uncertain", [None, Step.CANCEL, Step.REFUND])
def test_refusal_is_settled_by_a_lookup(step: Step, kind: Kind, uncertain: Step | None) -> None:
    state = replace(PLAIN, uncertain=uncertain, settle_left=0.0)
    d = run(step, Result(kind, error=ERR), state)
    assert d == Decision(next_step=Step.LOOKUP, uncertain=None, error=ERR)
    # the refusal's words are never read: a refusal with no error keeps none
    assert run(step, Result(kind), state).error is None


@pytest.mark.parametrize("step", [Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("attempts", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unknown_outcome_waits_floor_capped_at_settle_and_stays_uncertain(
    step: Step, attempts: int, seed: int
) -> None:
    policy = replace(POLICY, base_seconds=40.0, cap_seconds=1000.0)
    d = decide(
        step, Result(Kind.UNKNOWN, error=ERR), replace(PLAIN, attempts=attempts), policy,
        random.Random(seed),
    )  # fmt: skip
    expected = min(max(policy.backoff(attempts, random.Random(seed)), 10.0), 120.0)
    assert d == Decision(status=JobStatus.RETRY_WAIT, delay=expected, uncertain=step, error=ERR)
    assert 10.0 <= d.delay <= 120.0


@pytest.mark.parametrize("step", [Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        (1, Decision(status=JobStatus.RETRY_WAIT, delay=backoff(1), error=ERR)),
        (2, Decision(status=JobStatus.RETRY_WAIT, delay=backoff(2), error=ERR)),
        (3, Decision(next_step=Step.LOOKUP, error=ERR)),
        (4, Decision(next_step=Step.LOOKUP, error=ERR)),
    ],
)
def test_unauthorized_retries_then_a_lookup_ends_it(
    step: Step, attempts: int, expected: Decision
) -> None:
    state = replace(PLAIN, attempts=attempts)
    assert run(step, Result(Kind.UNAUTHORIZED, error=ERR), state) == expected


@pytest.mark.parametrize("step", [Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("kind", [Kind.NOT_SENT, Kind.UNKNOWN, Kind.REFUSED, Kind.OK])
@pytest.mark.parametrize("uncertain", [None, Step.CANCEL])
@pytest.mark.parametrize(("attempts", "retry_after"), [(0, None), (2, None), (3, 4.5)])
def test_not_sent_is_a_plain_retry(
    step: Step, kind: Kind, uncertain: Step | None, attempts: int, retry_after: float | None
) -> None:
    state = replace(PLAIN, attempts=attempts, uncertain=uncertain)
    result = Result(kind, payment=pay("cancelled"), retry_after=retry_after, error=ERR, sent=False)
    if kind is Kind.NOT_SENT:
        result = replace(result, payment=None)
    expected = retry_after if retry_after is not None else backoff(max(1, attempts))
    assert run(step, result, state) == Decision(
        status=JobStatus.RETRY_WAIT, delay=expected, uncertain=uncertain, error=ERR
    )


@pytest.mark.parametrize("step", list(Step))
@pytest.mark.parametrize("uncertain", [None, Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize(("retry_after", "delay"), [(None, 1.0), (7.5, 7.5), (0.0, 1.0)])
def test_rate_limited_waits_as_told_and_keeps_uncertain(
    step: Step, uncertain: Step | None, retry_after: float | None, delay: float
) -> None:
    state = replace(PLAIN, uncertain=uncertain, settle_left=30.0, attempts=POLICY.max_attempts)
    d = run(step, Result(Kind.RATE_LIMITED, retry_after=retry_after, error=ERR), state)
    assert d == Decision(status=JobStatus.RETRY_WAIT, delay=delay, uncertain=uncertain, error=OLD)
    assert not d.idle


# -- after a lookup -------------------------------------------------------------------------


def look(
    payment: Payment | None,
    *,
    kind: Kind = Kind.OK,
    attempts: int = 1,
    uncertain: Step | None = None,
    settle_left: float = 0.0,
    method: Method = Method.CVS,
    refund_allowed: bool = False,
    refused: Step | None = None,
    idle_runs: int = 0,
    error: UpstreamError | None = OLD,
    result_error: UpstreamError | None = None,
) -> Decision:
    state = JobState(
        attempts=attempts,
        uncertain=uncertain,
        settle_left=settle_left,
        method=method,
        refund_allowed=refund_allowed,
        idle_runs=idle_runs,
        error=error,
    )
    return run(Step.LOOKUP, Result(kind, payment, error=result_error), state, refused=refused)


def until_settled(attempts: int, settle_left: float) -> float:
    return min(max(backoff(max(1, attempts)), 10.0), settle_left) + 0.05


@pytest.mark.parametrize("idle_runs", [0, 1, 3])
@pytest.mark.parametrize("uncertain", [None, Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize(
    "kind", [Kind.UNKNOWN, Kind.REFUSED, Kind.ENDED, Kind.UNAUTHORIZED, Kind.NOT_SENT]
)
def test_a_failed_lookup_is_idle_and_keeps_uncertain(
    idle_runs: int, uncertain: Step | None, kind: Kind
) -> None:
    d = look(None, kind=kind, uncertain=uncertain, idle_runs=idle_runs, result_error=ERR)
    assert d == Decision(
        status=JobStatus.RETRY_WAIT,
        delay=backoff(idle_runs + 1),
        uncertain=uncertain,
        error=ERR,
        idle=True,
    )


def test_a_lookup_answered_ok_without_a_payment_is_idle() -> None:
    d = look(None, uncertain=Step.CANCEL)
    assert d == Decision(
        status=JobStatus.RETRY_WAIT, delay=backoff(1), uncertain=Step.CANCEL, error=OLD, idle=True
    )


@pytest.mark.parametrize("uncertain", [None, Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("settle_left", [0.0, 60.0])
@pytest.mark.parametrize(("result_error", "error"), [(ERR, ERR), (None, OLD)])
def test_lookup_not_found_fails(
    uncertain: Step | None,
    settle_left: float,
    result_error: UpstreamError | None,
    error: UpstreamError,
) -> None:
    d = look(
        None,
        kind=Kind.NOT_FOUND,
        uncertain=uncertain,
        settle_left=settle_left,
        result_error=result_error,
    )
    # An unsettled call is kept: a retry a person asks for must still wait for it.
    kept = uncertain if settle_left > 0 else None
    assert d == Decision(status=JobStatus.FAILED, error=error, uncertain=kept)


@pytest.mark.parametrize(
    ("uncertain", "expected"),
    [
        (
            None,
            Decision(
                status=JobStatus.CANCELLED,
                payment_status="cancelled",
                cancellation=replace_by(CANCELLATION, "upstream"),
                method=Method.VBANK,
                error=OLD,
            ),
        ),
        (
            Step.CANCEL,
            Decision(
                status=JobStatus.CANCELLED,
                payment_status="cancelled",
                cancellation=replace_by(CANCELLATION, "service"),
                method=Method.VBANK,
                error=OLD,
            ),
        ),
        (
            Step.REFUND,
            Decision(
                status=JobStatus.REFUNDED,
                payment_status="cancelled",
                refund=REFUND,
                method=Method.VBANK,
                error=OLD,
            ),
        ),
    ],
)
@pytest.mark.parametrize("settle_left", [0.0, 60.0])
@pytest.mark.parametrize("refused", [None, Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("refund_allowed", [False, True])
def test_lookup_cancelled(
    uncertain: Step | None,
    expected: Decision,
    settle_left: float,
    refused: Step | None,
    refund_allowed: bool,
) -> None:
    # cancelled is definite, settled or not; refunded only if a refund of ours may have done it
    d = look(
        pay("cancelled", "vbank"),
        uncertain=uncertain,
        settle_left=settle_left,
        refused=refused,
        refund_allowed=refund_allowed,
    )
    assert d == expected


@pytest.mark.parametrize(
    ("uncertain", "settle_left", "kept"),
    [
        (None, 0.0, None),
        (None, 60.0, None),
        (Step.CANCEL, 0.0, None),
        (Step.REFUND, 0.0, None),
        # an unsettled call is kept, so a refund a person asks for later waits for it
        (Step.CANCEL, 60.0, Step.CANCEL),
        (Step.REFUND, 0.5, Step.REFUND),
    ],
)
@pytest.mark.parametrize("refused", [None, Step.CANCEL])
@pytest.mark.parametrize("attempts", [1, 3])
def test_lookup_paid_without_refund_allowed_needs_refund(
    uncertain: Step | None,
    settle_left: float,
    kept: Step | None,
    refused: Step | None,
    attempts: int,
) -> None:
    d = look(
        pay("paid", "vbank"),
        uncertain=uncertain,
        settle_left=settle_left,
        refused=refused,
        attempts=attempts,
    )
    assert d == Decision(
        status=JobStatus.NEEDS_REFUND,
        payment_status="paid",
        method=Method.VBANK,
        error=OLD,
        uncertain=kept,
    )


@pytest.mark.parametrize("refused", [None, Step.CANCEL])
@pytest.mark.parametrize("attempts", [1, 3])
@pytest.mark.parametrize("settle_left", [0.5, 60.0])
def test_lookup_paid_does_not_forget_an_unsettled_call(
    refused: Step | None, attempts: int, settle_left: float
) -> None:
    """No cancel or refund before the unanswered call's start plus the settle time.

    `Decision.uncertain` is what the store keeps (`uncertain_call`) and what the next run's
    `settle_left` is computed from. A held job that ends needs_refund while a cancel of ours is
    unsettled must keep it: `POST /v1/jobs/{id}/refund` puts the job back to queued, and its
    run would otherwise send the refund at once (see test_jobs_machine.py's replay).
    """
    d = look(
        pay("paid"),
        uncertain=Step.CANCEL,
        settle_left=settle_left,
        refused=refused,
        attempts=attempts,
    )
    assert d == Decision(
        status=JobStatus.NEEDS_REFUND,
        payment_status="paid",
        method=Method.CVS,
        error=OLD,
        uncertain=Step.CANCEL,
    )
    assert d.terminal


@pytest.mark.parametrize("uncertain", [None, Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("settle_left", [0.0, 60.0])
@pytest.mark.parametrize("refund_allowed", [False, True])
def test_a_refused_refund_then_paid_needs_refund_with_the_refusal_in_error(
    uncertain: Step | None, settle_left: float, refund_allowed: bool
) -> None:
    d = look(
        pay("paid"),
        uncertain=uncertain,
        settle_left=settle_left,
        refund_allowed=refund_allowed,
        refused=Step.REFUND,
        error=REFUSAL,
    )
    assert d == Decision(
        status=JobStatus.NEEDS_REFUND,
        payment_status="paid",
        method=Method.CVS,
        error=REFUSAL,
        uncertain=uncertain if settle_left > 0 else None,
    )


@pytest.mark.parametrize("uncertain", [Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("attempts", [1, 2, 3, 5])
@pytest.mark.parametrize("settle_left", [0.01, 4.0, 60.0, 120.0])
def test_lookup_paid_unsettled_waits_for_the_settle_time(
    uncertain: Step, attempts: int, settle_left: float
) -> None:
    d = look(
        pay("paid"),
        uncertain=uncertain,
        settle_left=settle_left,
        refund_allowed=True,
        attempts=attempts,
    )
    assert d == Decision(
        status=JobStatus.RETRY_WAIT,
        delay=until_settled(attempts, settle_left),
        uncertain=uncertain,
        payment_status="paid",
        method=Method.CVS,
        error=OLD,
    )
    assert d.delay <= settle_left + 0.05


@pytest.mark.parametrize("uncertain", [None, Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("refused", [None, Step.CANCEL])
@pytest.mark.parametrize(
    ("amount", "cancel_amount", "checksum"),
    [(1000.0, 0.0, 1000.0), (1000.0, 300.0, 700.0), (50.5, 0.5, 50.0)],
)
def test_lookup_paid_refunds_with_its_balance_as_checksum(
    uncertain: Step | None,
    refused: Step | None,
    amount: float,
    cancel_amount: float,
    checksum: float,
) -> None:
    payment = pay("paid", "vbank", amount=amount, cancel_amount=cancel_amount)
    d = look(payment, uncertain=uncertain, settle_left=0.0, refund_allowed=True, refused=refused)
    assert d == Decision(
        next_step=Step.REFUND,
        checksum=checksum,
        payment_status="paid",
        method=Method.VBANK,
        error=OLD,
    )
    assert d.checksum == payment.amount - payment.cancel_amount == payment.balance


@pytest.mark.parametrize("attempts", [3, 4])
@pytest.mark.parametrize("uncertain", [None, Step.REFUND])
def test_lookup_paid_with_attempts_exhausted_needs_refund(
    attempts: int, uncertain: Step | None
) -> None:
    d = look(pay("paid"), attempts=attempts, uncertain=uncertain, refund_allowed=True)
    assert d == Decision(
        status=JobStatus.NEEDS_REFUND,
        payment_status="paid",
        method=Method.CVS,
        error=UpstreamError(
            http_status=400,
            code=-1,
            message="gave up after 3 attempts; last upstream answer: earlier",
        ),
    )


@pytest.mark.parametrize("uncertain", [None, Step.CANCEL])
@pytest.mark.parametrize("settle_left", [0.0, 60.0])
@pytest.mark.parametrize(
    ("error", "expected"),
    [(OLD, OLD), (None, UpstreamError(message="the payment failed at iamport"))],
)
def test_lookup_failed_fails(
    uncertain: Step | None,
    settle_left: float,
    error: UpstreamError | None,
    expected: UpstreamError,
) -> None:
    d = look(pay("failed"), uncertain=uncertain, settle_left=settle_left, error=error)
    assert d == Decision(
        status=JobStatus.FAILED,
        payment_status="failed",
        method=Method.CVS,
        error=expected,
        uncertain=uncertain if settle_left > 0 else None,
    )


@pytest.mark.parametrize("status", ["partial_cancelled", "", "READY"])
@pytest.mark.parametrize("uncertain", [None, Step.CANCEL])
@pytest.mark.parametrize("idle_runs", [0, 2])
def test_an_undocumented_status_is_not_guessed(
    status: str, uncertain: Step | None, idle_runs: int
) -> None:
    d = look(pay(status), uncertain=uncertain, idle_runs=idle_runs, settle_left=10.0)
    assert d == Decision(
        status=JobStatus.RETRY_WAIT,
        delay=backoff(idle_runs + 1),
        uncertain=uncertain,
        error=OLD,
        idle=True,
        payment_status=status,
        method=Method.CVS,
    )


@pytest.mark.parametrize("uncertain", [Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("attempts", [1, 3, 9])
@pytest.mark.parametrize("settle_left", [0.5, 30.0, 119.0])
def test_ready_proves_nothing_until_settled(
    uncertain: Step, attempts: int, settle_left: float
) -> None:
    d = look(pay("ready"), uncertain=uncertain, settle_left=settle_left, attempts=attempts)
    assert d == Decision(
        status=JobStatus.RETRY_WAIT,
        delay=until_settled(attempts, settle_left),
        uncertain=uncertain,
        payment_status="ready",
        method=Method.CVS,
        error=OLD,
    )


@pytest.mark.parametrize("uncertain", [None, Step.CANCEL, Step.REFUND])
@pytest.mark.parametrize("refused", [None, Step.CANCEL])
@pytest.mark.parametrize("attempts", [3, 4])
def test_ready_with_attempts_exhausted_fails(
    uncertain: Step | None, refused: Step | None, attempts: int
) -> None:
    d = look(pay("ready", "vbank"), uncertain=uncertain, refused=refused, attempts=attempts)
    assert d == Decision(
        status=JobStatus.FAILED,
        payment_status="ready",
        method=Method.VBANK,
        error=UpstreamError(
            http_status=400,
            code=-1,
            message="gave up after 3 attempts; last upstream answer: earlier",
        ),
    )


@pytest.mark.parametrize(
    ("state_method", "pay_method", "refused", "expected"),
    [
        # nothing refused: cancel by iamport's method
        (Method.CVS, "cvs", None, Decision(next_step=Step.CANCEL, method=Method.CVS)),
        (Method.CVS, "vbank", None, Decision(next_step=Step.CANCEL, method=Method.VBANK)),
        (Method.VBANK, "cvs", None, Decision(next_step=Step.CANCEL, method=Method.CVS)),
        # the hint was wrong: cancel again, by the method iamport shows
        (Method.CVS, "vbank", Step.CANCEL, Decision(next_step=Step.CANCEL, method=Method.VBANK)),
        (Method.VBANK, "cvs", Step.CANCEL, Decision(next_step=Step.CANCEL, method=Method.CVS)),
        # refused by the right method: retry later instead of looping
        (Method.VBANK, "vbank", Step.CANCEL, None),
        (Method.CVS, "cvs", Step.CANCEL, None),
        # iamport names no method we know: the hint stands
        (Method.VBANK, "card", None, Decision(next_step=Step.CANCEL, method=Method.VBANK)),
        (Method.VBANK, "card", Step.CANCEL, None),
        (Method.CVS, None, Step.CANCEL, None),
    ],
)
@pytest.mark.parametrize("uncertain", [None, Step.CANCEL])
def test_ready_and_settled_cancels_by_iamports_method(
    state_method: Method,
    pay_method: str | None,
    refused: Step | None,
    expected: Decision | None,
    uncertain: Step | None,
) -> None:
    d = look(pay("ready", pay_method), method=state_method, refused=refused, uncertain=uncertain)
    if expected is None:
        # the retry still carries the method iamport's record gives, if it gives one
        assert d == Decision(
            status=JobStatus.RETRY_WAIT,
            delay=backoff(1),
            payment_status="ready",
            method=method_of(pay("ready", pay_method)),
            error=OLD,
        )
    else:
        assert d == replace(expected, payment_status="ready", error=OLD)


@pytest.mark.parametrize(
    ("status", "uncertain", "settle_left", "refund_allowed"),
    [
        ("pending", None, 0.0, False),  # undocumented: look again later
        ("pending", Step.CANCEL, 30.0, False),
        ("ready", Step.CANCEL, 30.0, False),  # ready proves nothing until settled
        ("paid", Step.CANCEL, 30.0, True),  # wait for the settle time before a refund
    ],
)
@pytest.mark.parametrize("pay_method", ["cvs", "vbank", "card", None])
@pytest.mark.parametrize("state_method", [Method.CVS, Method.VBANK])
def test_a_retry_after_a_lookup_carries_iamports_method(
    status: str,
    uncertain: Step | None,
    settle_left: float,
    refund_allowed: bool,
    pay_method: str | None,
    state_method: Method,
) -> None:
    # The method iamport's record gives is kept even when nothing is sent; a method it does
    # not name leaves the decision's method unset (the job's stored one stands).
    d = look(
        pay(status, pay_method),
        uncertain=uncertain,
        settle_left=settle_left,
        refund_allowed=refund_allowed,
        method=state_method,
    )
    assert d.status is JobStatus.RETRY_WAIT
    assert d.next_step is None
    assert d.method is method_of(pay(status, pay_method))


# -- the idle bound ---------------------------------------------------------------------------


@pytest.mark.parametrize(("idle_runs", "fails"), [(0, False), (3, False), (4, True), (9, True)])
@pytest.mark.parametrize("uncertain", [None, Step.CANCEL])
def test_after_crash_is_bounded_by_max_idle_runs(
    idle_runs: int, fails: bool, uncertain: Step | None
) -> None:
    state = JobState(attempts=2, uncertain=uncertain, idle_runs=idle_runs, error=OLD)
    crash = UpstreamError(message="the run failed: KeyError")
    d = after_crash(state, crash, POLICY, random.Random(SEED))
    if fails:
        why = "gave up after 5 runs that could not learn the payment's status"
        assert d == Decision(
            status=JobStatus.FAILED,
            delay=0.0,
            uncertain=uncertain,
            idle=True,
            error=UpstreamError(message=f"{why}; last: the run failed: KeyError"),
        )
        assert d.terminal
    else:
        assert d == Decision(
            status=JobStatus.RETRY_WAIT,
            delay=backoff(idle_runs + 1),
            uncertain=uncertain,
            idle=True,
            error=crash,
        )


def test_after_crash_without_a_message_says_why() -> None:
    state = JobState(idle_runs=4)
    d = after_crash(state, UpstreamError(http_status=502), POLICY, random.Random(SEED))
    assert d.status is JobStatus.FAILED
    assert d.error == UpstreamError(
        http_status=502,
        message="gave up after 5 runs that could not learn the payment's status",
    )


# -- drive: the run loop against a scripted iamport --------------------------------------------

Call = tuple[Step, Method, float | None]


class Script:
    """Answers calls in order and records them."""

    def __init__(self, *answers: Result) -> None:
        self.answers = list(answers)
        self.calls: list[Call] = []

    def __call__(self, step: Step, method: Method, checksum: float | None) -> Result:
        self.calls.append((step, method, checksum))
        return self.answers.pop(0)


def drive_it(state: JobState, script: Script, elapsed: Callable[[], float] | None = None) -> Any:
    if elapsed is None:
        return drive(state, script, POLICY, random.Random(SEED))
    return drive(state, script, POLICY, random.Random(SEED), elapsed)


@pytest.mark.parametrize(("idle_runs", "fails"), [(0, False), (3, False), (4, True), (7, True)])
@pytest.mark.parametrize(
    "result",
    [
        Result(Kind.UNKNOWN, error=ERR),
        Result(Kind.REFUSED, error=ERR),
        Result(Kind.OK, pay("partial_cancelled")),
    ],
)
def test_drive_bounds_idle_lookups(idle_runs: int, fails: bool, result: Result) -> None:
    state = JobState(attempts=1, uncertain=Step.CANCEL, idle_runs=idle_runs, error=OLD)
    script = Script(result)
    ran = drive_it(state, script)
    assert script.calls == [(Step.LOOKUP, Method.CVS, None)]
    d = ran.decision
    assert d.idle
    assert ran.attempts == 1
    if fails:
        assert d.status is JobStatus.FAILED
        assert d.delay == 0.0
        assert d.error is not None and d.error.message is not None
        assert d.error.message.startswith(
            "gave up after 5 runs that could not learn the payment's status; last: "
        )
    else:
        assert d.status is JobStatus.RETRY_WAIT
        assert d.delay == backoff(idle_runs + 1)


def test_drive_not_idle_runs_are_never_bounded() -> None:
    state = JobState(attempts=1, idle_runs=50)
    ran = drive_it(state, Script(Result(Kind.UNKNOWN, error=ERR)))
    assert ran.decision.status is JobStatus.RETRY_WAIT
    assert ran.decision.uncertain is Step.CANCEL
    assert ran.attempts == 2


def test_drive_wrong_method_hint_cancels_by_iamports_then_retries_instead_of_looping() -> None:
    script = Script(
        Result(Kind.REFUSED, error=ERR),
        Result(Kind.OK, pay("ready", "vbank")),
        Result(Kind.REFUSED, error=REFUSAL),
        Result(Kind.OK, pay("ready", "vbank")),
    )
    ran = drive_it(JobState(method=Method.CVS), script)
    assert script.calls == [
        (Step.CANCEL, Method.CVS, None),
        (Step.LOOKUP, Method.CVS, None),
        (Step.CANCEL, Method.VBANK, None),
        (Step.LOOKUP, Method.VBANK, None),
    ]
    assert ran.attempts == 2
    assert ran.decision == Decision(
        status=JobStatus.RETRY_WAIT,
        delay=backoff(2),
        payment_status="ready",
        method=Method.VBANK,
        error=REFUSAL,
    )


def test_drive_wrong_method_hint_then_cancelled() -> None:
    script = Script(
        Result(Kind.REFUSED, error=ERR),
        Result(Kind.OK, pay("ready", "vbank")),
        Result(Kind.OK, pay("cancelled", "vbank")),
    )
    ran = drive_it(JobState(method=Method.CVS), script)
    assert [c[1] for c in script.calls] == [Method.CVS, Method.CVS, Method.VBANK]
    assert ran.decision.status is JobStatus.CANCELLED
    assert ran.decision.cancellation == replace_by(CANCELLATION, "service")
    assert ran.decision.method is Method.VBANK


@pytest.mark.parametrize(("amount", "cancel_amount"), [(1000.0, 0.0), (1000.0, 250.0), (99.9, 0.9)])
def test_drive_refunds_with_the_lookups_balance(amount: float, cancel_amount: float) -> None:
    paid = pay("paid", amount=amount, cancel_amount=cancel_amount)
    script = Script(
        Result(Kind.REFUSED, error=ERR),
        Result(Kind.OK, paid),
        Result(Kind.OK, pay("cancelled", amount=amount, cancel_amount=cancel_amount)),
    )
    ran = drive_it(JobState(refund_allowed=True), script)
    assert script.calls == [
        (Step.CANCEL, Method.CVS, None),
        (Step.LOOKUP, Method.CVS, None),
        (Step.REFUND, Method.CVS, amount - cancel_amount),
    ]
    assert ran.decision.status is JobStatus.REFUNDED
    assert ran.attempts == 2


def test_drive_refund_refused_then_paid_needs_refund_with_the_refusal() -> None:
    script = Script(
        Result(Kind.OK, pay("paid")),
        Result(Kind.REFUSED, error=REFUSAL),
        Result(Kind.OK, pay("paid")),
    )
    ran = drive_it(JobState(refund_allowed=True, look_first=True, error=OLD), script)
    assert [c[0] for c in script.calls] == [Step.LOOKUP, Step.REFUND, Step.LOOKUP]
    assert ran.decision == Decision(
        status=JobStatus.NEEDS_REFUND, payment_status="paid", method=Method.CVS, error=REFUSAL
    )


def refund_allowed(on_paid: OnPaid, requested: bool) -> bool:
    """As the store derives it (app/jobs/run.py state_of)."""
    return on_paid is OnPaid.REFUND or requested


def test_drive_hold_never_refunds() -> None:
    script = Script(Result(Kind.REFUSED, error=ERR), Result(Kind.OK, pay("paid")))
    ran = drive_it(JobState(refund_allowed=refund_allowed(OnPaid.HOLD, False)), script)
    assert [c[0] for c in script.calls] == [Step.CANCEL, Step.LOOKUP]
    assert ran.decision.status is JobStatus.NEEDS_REFUND


def test_drive_sends_no_mutating_call_once_attempts_are_spent() -> None:
    script = Script(Result(Kind.OK, pay("ready")))
    ran = drive_it(JobState(attempts=3, error=OLD), script)
    assert script.calls == [(Step.LOOKUP, Method.CVS, None)]
    assert ran.decision.status is JobStatus.FAILED
    assert ran.attempts == 3


@pytest.mark.parametrize(
    "first",
    [Result(Kind.OK, pay("ready")), Result(Kind.ENDED, error=ERR)],
)
def test_drive_an_answered_cancel_is_settled_so_a_ready_lookup_cancels_again(first: Result) -> None:
    # An answer of any kind ends the call at iamport: nothing of it is left to wait for.
    clock = [0.0]

    def elapsed() -> float:
        clock[0] += 1.0
        return clock[0]

    script = Script(first, Result(Kind.OK, pay("ready")), Result(Kind.OK, pay("cancelled")))
    ran = drive_it(JobState(), script, elapsed)
    assert [c[0] for c in script.calls] == [Step.CANCEL, Step.LOOKUP, Step.CANCEL]
    assert ran.attempts == 2
    assert ran.decision.status is JobStatus.CANCELLED
    assert ran.decision.cancellation == replace_by(CANCELLATION, "service")


@pytest.mark.parametrize("by", [Step.CANCEL, Step.REFUND])
def test_drive_an_ended_call_is_credited_to_us(by: Step) -> None:
    # A JSON 5xx ends the call but it may have applied: the lookup's cancellation is ours.
    lookup_first = by is Step.REFUND
    answers = [Result(Kind.OK, pay("paid"))] if lookup_first else []
    script = Script(*answers, Result(Kind.ENDED, error=ERR), Result(Kind.OK, pay("cancelled")))
    state = JobState(refund_allowed=True, look_first=lookup_first)
    ran = drive_it(state, script)
    assert [c[0] for c in script.calls][-2:] == [by, Step.LOOKUP]
    d = ran.decision
    if by is Step.CANCEL:
        assert d.status is JobStatus.CANCELLED
        assert d.cancellation == replace_by(CANCELLATION, "service")
    else:
        assert d.status is JobStatus.REFUNDED
        assert d.refund == REFUND


def test_drive_counts_the_carried_settle_time_down_on_its_clock() -> None:
    # The unanswered call settles 50 s into this run; the lookup answers at 60 s: settled.
    clock = iter([0.0, 60.0, 61.0, 62.0])
    script = Script(Result(Kind.OK, pay("ready")), Result(Kind.OK, pay("cancelled")))
    ran = drive_it(
        JobState(attempts=1, uncertain=Step.CANCEL, settle_left=50.0), script, lambda: next(clock)
    )
    assert [c[0] for c in script.calls] == [Step.LOOKUP, Step.CANCEL]
    assert ran.decision.status is JobStatus.CANCELLED


def test_drive_unsettled_lookup_sends_nothing() -> None:
    clock = iter([0.0, 5.0])
    script = Script(Result(Kind.OK, pay("ready")))
    ran = drive_it(
        JobState(attempts=1, uncertain=Step.CANCEL, settle_left=50.0), script, lambda: next(clock)
    )
    assert script.calls == [(Step.LOOKUP, Method.CVS, None)]
    assert ran.decision.delay == min(max(backoff(1), 10.0), 45.0) + 0.05


def test_drive_keeps_the_method_a_lookup_learnt_while_it_waits() -> None:
    # The hint said cvs, iamport says vbank; an unsettled cancel makes the run wait.
    clock = iter([0.0, 5.0])
    script = Script(Result(Kind.OK, pay("ready", "vbank")))
    state = JobState(attempts=1, uncertain=Step.CANCEL, settle_left=50.0, method=Method.CVS)
    ran = drive_it(state, script, lambda: next(clock))
    assert script.calls == [(Step.LOOKUP, Method.CVS, None)]
    assert ran.decision == Decision(
        status=JobStatus.RETRY_WAIT,
        delay=min(max(backoff(1), 10.0), 45.0) + 0.05,
        uncertain=Step.CANCEL,
        payment_status="ready",
        method=Method.VBANK,
    )


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (Result(Kind.UNKNOWN, error=ERR), JobStatus.RETRY_WAIT),
        (Result(Kind.NOT_FOUND, error=ERR), JobStatus.FAILED),
        (Result(Kind.OK, pay("pending", "card")), JobStatus.RETRY_WAIT),
    ],
)
def test_drive_returns_the_jobs_method_when_the_run_learnt_none(
    result: Result, status: JobStatus
) -> None:
    ran = drive_it(JobState(method=Method.VBANK, look_first=True), Script(result))
    assert ran.decision.status is status
    assert ran.decision.method is Method.VBANK


def test_drive_held_and_paid_keeps_the_unsettled_cancel_so_a_refund_request_waits() -> None:
    # The cancel's answer was lost 10 s before this run; the customer has paid meanwhile.
    clock = iter([0.0, 1.0])
    script = Script(Result(Kind.OK, pay("paid")))
    held = JobState(attempts=1, uncertain=Step.CANCEL, settle_left=110.0)
    ran = drive_it(held, script, lambda: next(clock))
    assert ran.decision == Decision(
        status=JobStatus.NEEDS_REFUND,
        payment_status="paid",
        method=Method.CVS,
        uncertain=Step.CANCEL,
    )
    # A person asks for the refund at once: the next run looks, and waits instead of refunding.
    clock = iter([0.0, 1.0])
    script = Script(Result(Kind.OK, pay("paid")))
    asked = replace(held, attempts=0, refund_allowed=True, look_first=True, settle_left=100.0)
    ran = drive_it(asked, script, lambda: next(clock))
    assert script.calls == [(Step.LOOKUP, Method.CVS, None)]
    assert ran.decision == Decision(
        status=JobStatus.RETRY_WAIT,
        delay=min(max(backoff(1), 10.0), 99.0) + 0.05,
        uncertain=Step.CANCEL,
        payment_status="paid",
        method=Method.CVS,
    )


def test_drive_gives_up_a_run_after_max_steps() -> None:
    # Each call takes 100 s, so every done-but-ready cancel has settled by the next lookup.
    ticks = iter(range(0, 10_000, 100))
    script = Script(*[Result(Kind.OK, pay("ready")) for _ in range(MAX_STEPS)])
    policy = replace(POLICY, max_attempts=8)
    ran = drive(JobState(), script, policy, random.Random(SEED), lambda: float(next(ticks)))
    assert [c[0] for c in script.calls] == [Step.CANCEL, Step.LOOKUP] * (MAX_STEPS // 2)
    assert ran.attempts == 3
    assert ran.decision == Decision(
        status=JobStatus.RETRY_WAIT, delay=backoff(3), payment_status="ready", method=Method.CVS
    )


# -- whose cancellation: the cancellation's own time against our first call --------------------

FIRST = 1_796_000_000.0  # our first cancel's start, on our clock
MARGIN = POLICY.credit_margin_seconds


@pytest.mark.parametrize(
    ("cancelled_time", "first_sent_at", "skew", "ours_may_have", "by"),
    [
        # nothing of ours can have applied (none sent, or each refused): upstream, always
        (0.0, None, None, False, "upstream"),
        (FIRST + 60, FIRST, 0.0, False, "upstream"),
        (FIRST - 60, FIRST, None, False, "upstream"),
        # it cannot tell: a call of ours that may have applied takes the credit
        (0.0, FIRST, 0.0, True, "service"),  # the cancellation has no time
        (FIRST - 60, None, 0.0, True, "service"),  # our first call's start is not known
        (FIRST - 60, FIRST, None, True, "service"),  # iamport's clock is not known
        # clocks agree
        (FIRST - 60, FIRST, 0.0, True, "upstream"),  # long before our first call
        (FIRST - MARGIN - 0.01, FIRST, 0.0, True, "upstream"),
        (FIRST - MARGIN, FIRST, 0.0, True, "service"),  # inside the margin
        (FIRST - 1, FIRST, 0.0, True, "service"),  # a second's truncation could be ours
        (FIRST, FIRST, 0.0, True, "service"),
        (FIRST + 3, FIRST, 0.0, True, "service"),  # after our call: it may be ours
        # iamport's clock 30 s ahead of ours: its times are 30 s later than ours
        (FIRST + 20, FIRST, 30.0, True, "upstream"),  # our clock: 10 s before
        (FIRST + 27, FIRST, 30.0, True, "service"),  # our clock: 3 s before, inside the margin
        (FIRST - 10, FIRST, 30.0, True, "upstream"),
        # iamport's clock 30 s behind: a time 20 s before ours is 10 s after on our clock
        (FIRST - 20, FIRST, -30.0, True, "service"),
        (FIRST - 40, FIRST, -30.0, True, "upstream"),
    ],
)
def test_cancelled_by_table(
    cancelled_time: float,
    first_sent_at: float | None,
    skew: float | None,
    ours_may_have: bool,
    by: str,
) -> None:
    assert (
        cancelled_by(cancelled_time, first_sent_at, skew, MARGIN, ours_may_have=ours_may_have) == by
    )


@pytest.mark.parametrize("skew", [None, -3600.0, -1.5, 0.0, 0.4, 30.0])
@pytest.mark.parametrize("first_sent_at", [None, FIRST])
@pytest.mark.parametrize("offset", [-86400.0, -6.0, -5.0, -0.5, 0.0, 0.5, 120.0])
def test_cancelled_by_is_upstream_only_when_provably_before_our_first_call(
    skew: float | None, first_sent_at: float | None, offset: float
) -> None:
    # Every combination: upstream exactly when all is known and the cancellation, moved onto
    # our clock, is more than the margin before our first call.
    cancelled_time = FIRST + offset + (skew or 0.0)
    by = cancelled_by(cancelled_time, first_sent_at, skew, MARGIN)
    provable = skew is not None and first_sent_at is not None and offset + MARGIN < 0
    assert by == ("upstream" if provable else "service")
    assert cancelled_by(cancelled_time, first_sent_at, skew, MARGIN, ours_may_have=False) == (
        "upstream"
    )


def cancelled_long_ago(at: float = FIRST - 3600, unit: float = 1000.0) -> Payment:
    """A payment cancelled at iamport before our first call, its times in milliseconds."""
    return Payment.model_validate(
        {
            "imp_uid": "imp_1",
            "status": "cancelled",
            "pay_method": "cvs",
            "amount": 1000,
            "cancel_amount": 1000,
            "cancelled_at": at * unit,
            "cancel_history": [
                {"pg_tid": "pg-1", "amount": 1000, "cancelled_at": at * unit, "reason": "x"}
            ],
        }
    )


TIMED = replace(PLAIN, first_sent_at=FIRST, clock_skew=0.0)


@pytest.mark.parametrize("unit", [1.0, 1000.0, 1_000_000.0])
@pytest.mark.parametrize("settle_left", [0.0, 60.0])
def test_a_lookup_after_an_unanswered_cancel_credits_an_older_cancellation_upstream(
    unit: float, settle_left: float
) -> None:
    state = replace(TIMED, uncertain=Step.CANCEL, settle_left=settle_left)
    d = run(Step.LOOKUP, Result(Kind.OK, cancelled_long_ago(unit=unit)), state)
    assert d.status is JobStatus.CANCELLED and d.cancellation is not None
    assert d.cancellation.cancelled_by == "upstream"
    assert d.cancellation.cancelled_at == datetime.fromtimestamp(FIRST - 3600, UTC)


@pytest.mark.parametrize(
    "state",
    [
        replace(TIMED, uncertain=Step.CANCEL),  # after our first call: it may be ours
        replace(PLAIN, uncertain=Step.CANCEL, clock_skew=0.0),  # our start unknown
        replace(PLAIN, uncertain=Step.CANCEL, first_sent_at=FIRST),  # iamport's clock unknown
    ],
)
def test_a_lookup_after_an_unanswered_cancel_that_cannot_tell_credits_service(
    state: JobState,
) -> None:
    late = cancelled_long_ago(at=FIRST + 2) if state.first_sent_at else cancelled_long_ago()
    d = run(Step.LOOKUP, Result(Kind.OK, late), state)
    assert d.cancellation is not None and d.cancellation.cancelled_by == "service"


def test_a_done_answer_for_an_older_cancellation_is_upstreams() -> None:
    # iamport answering "done" to a cancel of a payment cancelled an hour ago did not cancel it
    d = run(Step.CANCEL, Result(Kind.OK, cancelled_long_ago()), TIMED)
    assert d.cancellation is not None and d.cancellation.cancelled_by == "upstream"
    d = run(Step.CANCEL, Result(Kind.OK, cancelled_long_ago(at=FIRST + 1)), TIMED)
    assert d.cancellation is not None and d.cancellation.cancelled_by == "service"


@pytest.mark.parametrize(
    ("cancelled_at", "by"), [(FIRST - 3600, "upstream"), (FIRST + 0.5, "service")]
)
def test_drive_takes_the_first_calls_start_from_this_run(cancelled_at: float, by: str) -> None:
    # A first cancel that ended unanswered-for (5xx) in this run: its start is the one to beat.
    script = Script(
        Result(Kind.ENDED, error=ERR, sent_at=FIRST, clock_skew=0.0),
        Result(Kind.OK, cancelled_long_ago(at=cancelled_at), clock_skew=0.0),
    )
    decision = drive_it(JobState(method=Method.CVS), script).decision
    assert decision.status is JobStatus.CANCELLED
    assert decision.cancellation.cancelled_by == by


def test_drive_keeps_the_earliest_start_and_learns_the_skew_from_the_calls() -> None:
    # A job whose first cancel was an hour ago; this run's cancel (later) does not replace it.
    # iamport's clock is 100 s ahead: its "FIRST - 3000" is on our clock FIRST - 3100.
    state = JobState(method=Method.CVS, first_sent_at=FIRST - 3000.0)
    script = Script(
        Result(Kind.ENDED, error=ERR, sent_at=FIRST, clock_skew=100.0),
        Result(Kind.OK, cancelled_long_ago(at=FIRST - 3000 + 100 - 6)),
    )
    decision = drive_it(state, script).decision
    assert decision.cancellation.cancelled_by == "upstream"
    script = Script(
        Result(Kind.ENDED, error=ERR, sent_at=FIRST, clock_skew=100.0),
        Result(Kind.OK, cancelled_long_ago(at=FIRST - 3000 + 100 - 4)),  # inside the margin
    )
    assert drive_it(state, script).decision.cancellation.cancelled_by == "service"


def test_drive_a_refused_cancel_then_cancelled_is_upstream_whatever_the_times() -> None:
    script = Script(
        Result(Kind.REFUSED, error=ERR, sent_at=FIRST, clock_skew=0.0),
        Result(Kind.OK, cancelled_long_ago(at=FIRST + 30)),
    )
    assert drive_it(JobState(method=Method.CVS), script).decision.cancellation.cancelled_by == (
        "upstream"
    )
