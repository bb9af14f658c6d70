"""The upstream decision table, row by row, without I/O."""

from __future__ import annotations

import random

import pytest

from app.jobs import Decision, JobState, Kind, Policy, Result, Step, decide, first_step

POLICY = Policy(max_attempts=3, base_seconds=2, cap_seconds=300, unknown_floor_seconds=10)
ERR = {"http_status": 500, "code": None, "message": "boom"}


def run(
    step: Step, result: Result, attempts: int = 1, uncertain: bool = False, **kw: object
) -> Decision:
    return decide(step, result, JobState(attempts, uncertain), POLICY, random.Random(0), **kw)  # type: ignore[arg-type]


def test_first_step_looks_up_when_a_cancel_may_have_applied() -> None:
    assert first_step(JobState(0, False)) is Step.CANCEL
    assert first_step(JobState(2, True)) is Step.LOOKUP


def test_cancel_applied_is_cancelled_by_service() -> None:
    d = run(
        Step.CANCEL,
        Result(Kind.OK, payment_status="cancelled", cancellation={"pg_tid": "t"}),
        uncertain=True,
    )
    assert d.status == "cancelled" and d.terminal and not d.uncertain
    assert d.cancellation == {"pg_tid": "t", "cancelled_by": "service"}


@pytest.mark.parametrize("kind", [Kind.REFUSED, Kind.NOT_FOUND])
def test_refusal_is_explained_by_a_lookup(kind: Kind) -> None:
    d = run(Step.CANCEL, Result(kind, error=ERR), uncertain=True)
    assert d.next_step is Step.LOOKUP and d.status is None and not d.uncertain


@pytest.mark.parametrize(
    ("payment_status", "after_refusal", "uncertain", "status", "by"),
    [
        ("cancelled", True, False, "cancelled", "upstream"),
        ("cancelled", False, True, "cancelled", "service"),
        ("cancelled", False, False, "cancelled", "upstream"),
        ("paid", True, False, "needs_refund", None),
        ("paid", False, True, "needs_refund", None),
        ("failed", True, False, "failed", None),
        ("failed", False, True, "failed", None),
        ("ready", True, False, "retry_wait", None),
    ],
)
def test_lookup_decides_by_payment_status(
    payment_status: str, after_refusal: bool, uncertain: bool, status: str, by: str | None
) -> None:
    d = run(
        Step.LOOKUP,
        Result(Kind.OK, payment_status=payment_status),
        uncertain=uncertain,
        after_refusal=after_refusal,
    )
    assert d.status == status
    assert d.payment_status == payment_status or status == "retry_wait"
    if by:
        assert d.cancellation is not None and d.cancellation["cancelled_by"] == by


def test_lookup_not_found_fails() -> None:
    d = run(
        Step.LOOKUP, Result(Kind.NOT_FOUND, error={"http_status": 404, "code": -1, "message": "x"})
    )
    assert d.status == "failed" and d.error is not None and d.error["http_status"] == 404


def test_ready_after_uncertain_cancel_cancels_again_in_the_same_run() -> None:
    d = run(Step.LOOKUP, Result(Kind.OK, payment_status="ready"), uncertain=True)
    assert d.next_step is Step.CANCEL


def test_ready_when_attempts_are_spent_fails_with_the_reason() -> None:
    d = run(
        Step.LOOKUP,
        Result(Kind.OK, payment_status="ready"),
        attempts=3,
        uncertain=True,
        last_error=ERR,
    )
    assert d.status == "failed" and d.error is not None
    assert "gave up after 3" in d.error["message"] and "boom" in d.error["message"]


def test_unknown_cancel_outcome_waits_at_least_the_floor_and_stays_uncertain() -> None:
    for seed in range(50):
        d = decide(
            Step.CANCEL,
            Result(Kind.UNKNOWN, error=ERR),
            JobState(1, True),
            POLICY,
            random.Random(seed),
        )
        assert d.status == "retry_wait" and d.uncertain and d.delay is not None and d.delay >= 10


def test_unknown_cancel_never_fails_even_when_attempts_are_spent() -> None:
    # The truth is unknown: only a lookup may end the job.
    d = run(Step.CANCEL, Result(Kind.UNKNOWN, error=ERR), attempts=3, uncertain=True)
    assert d.status == "retry_wait" and d.uncertain


@pytest.mark.parametrize("step", [Step.CANCEL, Step.LOOKUP])
def test_rate_limited_waits_as_told(step: Step) -> None:
    d = run(step, Result(Kind.RATE_LIMITED, retry_after=7.5), uncertain=step is Step.LOOKUP)
    assert d.status == "retry_wait" and d.delay == 7.5
    assert d.uncertain is (step is Step.LOOKUP)


def test_unauthorized_cancel_retries_then_ends_by_a_lookup() -> None:
    assert run(Step.CANCEL, Result(Kind.UNAUTHORIZED, error=ERR), attempts=1).status == "retry_wait"
    assert (
        run(Step.CANCEL, Result(Kind.UNAUTHORIZED, error=ERR), attempts=3).next_step is Step.LOOKUP
    )


@pytest.mark.parametrize("kind", [Kind.UNKNOWN, Kind.UNAUTHORIZED, Kind.REFUSED])
def test_failed_lookup_retries_and_keeps_uncertainty(kind: Kind) -> None:
    d = run(Step.LOOKUP, Result(kind, error=ERR), attempts=3, uncertain=True)
    assert d.status == "retry_wait" and d.uncertain


def test_undocumented_payment_status_is_not_guessed() -> None:
    d = run(Step.LOOKUP, Result(Kind.OK, payment_status="partial_cancelled"), uncertain=True)
    assert d.status == "retry_wait" and d.uncertain


def test_backoff_is_full_jitter_doubling_and_capped() -> None:
    p = Policy(base_seconds=2, cap_seconds=300)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (30, 300)]:
        samples = [p.backoff(attempt, rng) for _ in range(300)]
        assert 0 <= min(samples) and max(samples) <= ceiling
        assert max(samples) > ceiling * 0.8  # it really spreads over the whole range


def test_a_cancel_that_never_left_is_a_plain_retry() -> None:
    d = run(Step.CANCEL, Result(Kind.UNKNOWN, error=ERR, sent=False), attempts=2)
    assert d.status == "retry_wait" and not d.uncertain and d.delay is not None and d.delay <= 4


@pytest.mark.parametrize("payment_status", ["paid", "cancelled", "failed", "ready"])
def test_notifications_and_worker_agree_on_what_a_payment_status_means(payment_status: str) -> None:
    from app.jobs import TERMINAL_FOR_PAYMENT

    d = run(Step.LOOKUP, Result(Kind.OK, payment_status=payment_status), attempts=0)
    assert (d.status if d.terminal else None) == TERMINAL_FOR_PAYMENT.get(payment_status)
