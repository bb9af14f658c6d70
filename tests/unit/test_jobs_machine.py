"""A Hypothesis state machine: the real run loop (`drive`) against a simulated iamport.

Customers pay, the console cancels, and every call can fail in each way the documentation
allows, in any order. Whatever happens, the job's outcome must match the payment's truth,
no cancel may follow an uncertain one without a lookup, and ours is the only cancel applied.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from app.jobs import TERMINAL, JobState, Kind, Policy, Result, Step, drive

POLICY = Policy(max_attempts=4, base_seconds=1, cap_seconds=8, unknown_floor_seconds=2)
CANCEL_FAULTS = [
    "ok",
    "ok",
    "timeout_before",
    "timeout_after",
    "5xx",
    "429",
    "401",
    "local_limit",
    "token_down",
]
LOOKUP_FAULTS = ["ok", "ok", "5xx", "429", "401"]
ERR = {"http_status": 500, "code": None, "message": "x"}


@dataclass
class Iamport:
    status: str = "ready"  # ready | paid | cancelled | failed | missing
    applied_by_us: int = 0
    cancelled_by_console: bool = False
    calls: list[str] = field(default_factory=list)

    def call(self, step: Step, fault: str) -> Result:
        self.calls.append(step.value)
        if step is Step.LOOKUP:
            if fault == "5xx":
                return Result(Kind.UNKNOWN, error=ERR)
            if fault == "429":
                return Result(Kind.RATE_LIMITED, retry_after=1)
            if fault == "401":
                return Result(Kind.UNAUTHORIZED, error=ERR)
            if self.status == "missing":
                return Result(Kind.NOT_FOUND, error=ERR)
            return Result(
                Kind.OK,
                payment_status=self.status,
                cancellation={"pg_tid": "t"} if self.status == "cancelled" else None,
            )
        if fault == "local_limit":
            self.calls.pop()  # nothing left our side
            return Result(Kind.RATE_LIMITED, retry_after=1, sent=False)
        if fault == "token_down":
            self.calls.pop()  # getToken failed: the cancel was never sent
            return Result(Kind.UNKNOWN, error=ERR, sent=False)
        if fault == "429":
            return Result(Kind.RATE_LIMITED, retry_after=1)
        if fault == "401":
            return Result(Kind.UNAUTHORIZED, error=ERR)
        if fault in ("timeout_before", "5xx"):
            return Result(Kind.UNKNOWN, error=ERR)
        if self.status != "ready":
            return Result(Kind.NOT_FOUND if self.status == "missing" else Kind.REFUSED, error=ERR)
        self.status = "cancelled"
        self.applied_by_us += 1
        if fault == "timeout_after":
            return Result(Kind.UNKNOWN, error=ERR)
        return Result(Kind.OK, payment_status="cancelled", cancellation={"pg_tid": "t"})


class JobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.iamport = Iamport()
        self.status = "queued"
        self.attempts = 0
        self.uncertain = False
        self.cancelled_by: str | None = None
        self.rng = random.Random(0)

    @rule(initial=st.sampled_from(["ready", "ready", "ready", "paid", "failed", "missing"]))
    @precondition(lambda self: not self.iamport.calls and self.status == "queued")
    def payment_starts_as(self, initial: str) -> None:
        self.iamport.status = initial

    @rule()
    def customer_pays(self) -> None:
        if self.iamport.status == "ready":
            self.iamport.status = "paid"

    @rule()
    def console_cancels(self) -> None:
        if self.iamport.status == "ready":
            self.iamport.status = "cancelled"
            self.iamport.cancelled_by_console = True

    @rule(
        cancel_faults=st.lists(st.sampled_from(CANCEL_FAULTS), min_size=4, max_size=4),
        lookup_faults=st.lists(st.sampled_from(LOOKUP_FAULTS), min_size=4, max_size=4),
    )
    @precondition(lambda self: self.status not in TERMINAL)
    def worker_runs(self, cancel_faults: list[str], lookup_faults: list[str]) -> None:
        self._run(iter(cancel_faults), iter(lookup_faults))

    def _run(self, cancel_faults: object, lookup_faults: object) -> None:
        started_uncertain = self.uncertain
        first_call = len(self.iamport.calls)

        def call(step: Step) -> Result:
            faults = cancel_faults if step is Step.CANCEL else lookup_faults
            return self.iamport.call(step, next(faults, "ok"))  # type: ignore[call-overload]

        run = drive(JobState(self.attempts, self.uncertain), call, POLICY, self.rng)
        calls = self.iamport.calls[first_call:]
        if started_uncertain and calls:
            assert calls[0] == "lookup", "a cancel followed an uncertain one without a lookup"
        d = run.decision
        self.status, self.attempts, self.uncertain = (
            d.status or self.status,
            run.attempts,
            d.uncertain,
        )
        if d.cancellation:
            self.cancelled_by = d.cancellation["cancelled_by"]

    @invariant()
    def only_one_cancel_is_ours_and_attempts_are_bounded(self) -> None:
        assert self.iamport.applied_by_us <= 1
        assert self.attempts <= POLICY.max_attempts

    @invariant()
    def terminal_status_matches_the_truth(self) -> None:
        truth = self.iamport.status
        if self.status == "cancelled":
            assert truth == "cancelled"
            if self.cancelled_by == "upstream":
                assert self.iamport.applied_by_us == 0
            else:
                assert self.iamport.applied_by_us == 1 or self.iamport.cancelled_by_console
        elif self.status == "needs_refund":
            assert truth == "paid"
        elif self.status == "failed":
            assert truth in ("failed", "missing") or (
                truth == "ready" and self.attempts >= POLICY.max_attempts
            )

    def teardown(self) -> None:
        # Once iamport behaves, every job ends, within a few runs.
        for _ in range(3):
            if self.status in TERMINAL:
                break
            self._run(iter([]), iter([]))
        assert self.status in TERMINAL
        self.terminal_status_matches_the_truth()


TestJobMachine = JobMachine.TestCase
TestJobMachine.settings = settings(max_examples=300, stateful_step_count=12, deadline=None)
