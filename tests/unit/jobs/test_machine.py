"""A Hypothesis state machine: the real run loop (`drive`) against a simulated iamport.

The machine owns a simulated clock. Customers pay and the console cancels or refunds at any
moment (also between two calls of one run); every call can fail in each documented way; a
mutating call whose answer was lost may still apply at iamport up to the settle time after it
started. Between runs the job is carried as the store carries it (attempts, uncertain call,
settle time left by the clock, pay_method, idle runs, error, look_first, refund request).

Whatever happens: no mutating call while an earlier one can still apply, at most one cancel
and one refund of ours applied, a refund only right after a lookup of the same run with that
lookup's balance, no refund of a held payment without a person's request, attempts bounded,
every terminal status true, and once iamport behaves the job ends within a few runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from app.jobs.decide import (
    MUTATING,
    Decision,
    JobState,
    Kind,
    Method,
    OnPaid,
    Policy,
    Result,
    Step,
    drive,
)
from app.jobs.records import UpstreamError
from app.jobs.status import TERMINAL, WAITING, JobStatus
from app.upstream.payment import CancelHistoryEntry, Payment

SETTLE = 60.0
POLICY = Policy(
    max_attempts=4,
    base_seconds=1.0,
    cap_seconds=8.0,
    unknown_floor_seconds=5.0,
    settle_seconds=SETTLE,
    max_idle_runs=4,
)
TIMEOUT = 5.0
AMOUNT = 1000.0
PARTIAL = 300.0
EPOCH = 1_764_000_000.0

# How a mutating call ends. "*_before": iamport had not applied it when we stopped waiting,
# "*_after": it had. json5xx: iamport's application answered 5xx (Kind.ENDED): the call ended.
MUTATING_FAULTS = [
    "ok",
    "timeout_before",
    "timeout_after",
    "gw5xx_before",
    "gw5xx_after",
    "json5xx_before",
    "json5xx_after",
    "429",
    "401",
    "not_sent",
]
LOOKUP_FAULTS = ["ok", "ok", "ok", "timeout", "gw5xx", "json5xx", "429", "401", "not_sent"]
# When an unanswered call that iamport had not applied yet applies: a fraction of the settle
# time after it started, or never.
FLIGHTS = [None, 0.0, 0.2, 0.6, 0.99]
DURATION = {
    "ok": 0.3,
    "json5xx": 0.3,
    "json5xx_before": 0.3,
    "json5xx_after": 0.3,
    "429": 0.1,
    "401": 0.1,
    "not_sent": 0.0,
    "timeout": TIMEOUT,
    "timeout_before": TIMEOUT,
    "timeout_after": TIMEOUT,
    "gw5xx": 1.0,
    "gw5xx_before": 1.0,
    "gw5xx_after": 1.0,
}
MEANWHILE = [None, None, None, "pay", "console_cancel", "console_partial"]
GAPS = [0.0, 0.5, 3.0, 10.0, 40.0]
ERR_GATEWAY = UpstreamError(http_status=502, message="bad gateway")
ERR_TIMEOUT = UpstreamError(message="timed out")
ERR_REFUSED = UpstreamError(http_status=200, code=1, message="refused")
ERR_APP = UpstreamError(http_status=500, code=-1, message="iamport error")
ERR_401 = UpstreamError(http_status=401, message="unauthorized")
ERR_404 = UpstreamError(http_status=404, code=-1, message="not found")


@dataclass
class Sent:
    """One mutating call iamport received (or that we tried to send)."""

    run: int
    step: Step
    method: Method
    checksum: float | None
    start: float
    sent: bool = True
    answered: bool = False  # the call ended (nothing of it is left in flight)
    maybe: bool = False  # we were not told whether it applied (unknown, or a JSON 5xx)
    applied: bool = False
    apply_at: float | None = None  # still in flight: applies then, if it still can


@dataclass
class Looked:
    run: int
    kind: Kind
    payment: Payment | None


@dataclass
class Iamport:
    pay_method: str = "cvs"
    status: str = "ready"  # ready | paid | cancelled | failed | missing
    cancel_amount: float = 0.0
    history: list[CancelHistoryEntry] = field(default_factory=list)
    console_acted: bool = False
    calls: list[Sent | Looked] = field(default_factory=list)
    late: list[Sent] = field(default_factory=list)  # ours, applied after the job ended

    def payment(self) -> Payment:
        return Payment(
            imp_uid="imp_1",
            status=self.status,
            pay_method=self.pay_method,
            amount=AMOUNT,
            cancel_amount=self.cancel_amount,
            cancel_history=list(self.history),
        )

    @property
    def ours(self) -> list[Sent]:
        return [c for c in self.calls if isinstance(c, Sent)]

    def _cancel_all(self, at: float, reason: str) -> None:
        self.history.append(
            CancelHistoryEntry(
                pg_tid=f"pg-{len(self.history)}",
                amount=AMOUNT - self.cancel_amount,
                cancelled_at=EPOCH + at,
                reason=reason,
            )
        )
        self.cancel_amount = AMOUNT
        self.status = "cancelled"

    def apply(self, call: Sent, at: float) -> bool:
        """Apply one of our calls now, if iamport would; never more than once."""
        if call.applied:
            return False
        if call.step is Step.CANCEL:
            if self.status != "ready" or call.method.value != self.pay_method:
                return False  # DELETE /cvs on a vbank (or the reverse) never applies
        elif self.status != "paid" or call.checksum != AMOUNT - self.cancel_amount:
            return False
        self._cancel_all(at, call.step.value)
        call.applied = True
        return True

    def advance(self, now: float, job_ended: bool) -> None:
        """Calls in flight whose time has come apply, in time order."""
        due = sorted(
            (c for c in self.ours if c.apply_at is not None and c.apply_at <= now),
            key=lambda c: c.apply_at or 0.0,
        )
        for c in due:
            at, c.apply_at = c.apply_at or 0.0, None
            applied = self.apply(c, at)
            note(f"in-flight {c.step.value} {'applied' if applied else 'did not apply'}")
            if applied and job_ended:
                self.late.append(c)

    def customer_pays(self) -> None:
        if self.status == "ready":
            self.status = "paid"

    def console(self, partial: bool, at: float) -> None:
        if self.status == "ready" and not partial:
            self._cancel_all(at, "console")
            self.console_acted = True
        elif self.status == "paid":
            self.console_acted = True
            if partial and self.cancel_amount + PARTIAL < AMOUNT:
                self.cancel_amount += PARTIAL
                self.history.append(
                    CancelHistoryEntry(pg_tid="pg-part", amount=PARTIAL, cancelled_at=EPOCH + at)
                )
            else:
                self._cancel_all(at, "console refund")


def note(message: str) -> None:
    """A Hypothesis event (shown by --hypothesis-show-statistics), also outside a test."""
    if currently_in_test_context():
        event(message)


class JobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.iamport = Iamport()
        self.now = 0.0
        self.runs = 0
        self.rng = random.Random(0)
        # the job row, as the store keeps it
        self.status = JobStatus.QUEUED
        self.attempts = 0
        self.uncertain: Step | None = None
        self.last_call_at: float | None = None
        self.method = Method.CVS
        self.on_paid = OnPaid.HOLD
        self.refund_requested = False
        self.look_first = False
        self.idle_runs = 0
        self.error: UpstreamError | None = None
        self.due_at = 0.0
        self.decision: Decision | None = None

    # -- the world ------------------------------------------------------------------------

    @initialize(
        pay_method=st.sampled_from(["cvs", "vbank"]),
        hint=st.sampled_from([Method.CVS, Method.VBANK]),
        on_paid=st.sampled_from([OnPaid.HOLD, OnPaid.REFUND]),
        initial=st.sampled_from(["ready"] * 5 + ["paid", "paid", "cancelled", "failed", "missing"]),
        seed=st.integers(0, 2**16),
    )
    def start(
        self, pay_method: str, hint: Method, on_paid: OnPaid, initial: str, seed: int
    ) -> None:
        self.iamport.pay_method = pay_method
        self.iamport.status = initial
        if initial == "cancelled":
            self.iamport._cancel_all(0.0, "console")
            self.iamport.console_acted = True
        self.method = hint
        self.on_paid = on_paid
        self.rng = random.Random(seed)

    def _pass(self, gap: float) -> None:
        self.now += gap
        self.iamport.advance(self.now, self.ended)

    @rule(gap=st.sampled_from(GAPS))
    def customer_pays(self, gap: float) -> None:
        self._pass(gap)
        self.iamport.customer_pays()

    @rule(gap=st.sampled_from(GAPS), partial=st.booleans())
    def console_cancels_or_refunds(self, gap: float, partial: bool) -> None:
        self._pass(gap)
        self.iamport.console(partial, self.now)

    @rule(gap=st.sampled_from(GAPS))
    def time_passes(self, gap: float) -> None:
        self._pass(gap)

    @precondition(lambda self: self.status in WAITING)
    @rule()
    def a_notification_comes(self) -> None:
        self.look_first = True  # store.note_news: the job looks first, and is due now
        self.due_at = min(self.due_at, self.now)

    @precondition(lambda self: self.status is JobStatus.NEEDS_REFUND)
    @rule()
    def a_person_requests_the_refund(self) -> None:
        # store.request_refund
        self.status = JobStatus.QUEUED
        self.refund_requested = True
        self.look_first = True
        self.attempts = 0
        self.idle_runs = 0
        self.due_at = self.now

    # -- a worker run ---------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """The job said how it ended (a job that gave up on learning anything said nothing)."""
        gave_up = self.decision is not None and self.decision.idle
        return self.status in TERMINAL and not (self.status is JobStatus.FAILED and gave_up)

    @property
    def refund_allowed(self) -> bool:
        return self.on_paid is OnPaid.REFUND or self.refund_requested

    @precondition(lambda self: self.status in WAITING)
    @rule(
        mutating=st.lists(
            st.tuples(st.sampled_from(MUTATING_FAULTS), st.sampled_from(FLIGHTS)), max_size=4
        ),
        lookups=st.lists(st.sampled_from(LOOKUP_FAULTS), max_size=4),
        meanwhile=st.lists(st.sampled_from(MEANWHILE), max_size=6),
        late=st.sampled_from([0.0, 0.0, 0.01, 2.0, 30.0]),
    )
    def worker_runs(
        self,
        mutating: list[tuple[str, float | None]],
        lookups: list[str],
        meanwhile: list[str | None],
        late: float,
    ) -> None:
        self.run(iter(mutating), iter(lookups), iter(meanwhile), late)

    def run(
        self,
        mutating: Iterator[tuple[str, float | None]],
        lookups: Iterator[str],
        meanwhile: Iterator[str | None],
        late: float,
    ) -> None:
        # Between runs the clock advances by the decision's delay, or more.
        self._pass(max(self.due_at - self.now, 0.0) + late)
        self.runs += 1
        run_no = self.runs
        settle_left = 0.0
        if self.uncertain is not None and self.last_call_at is not None:
            settle_left = max(0.0, self.last_call_at + SETTLE - self.now)
        state = JobState(
            attempts=self.attempts,
            uncertain=self.uncertain,
            settle_left=settle_left,
            method=self.method,
            refund_allowed=self.refund_allowed,
            look_first=self.look_first,
            idle_runs=self.idle_runs,
            error=self.error,
        )
        self.look_first = False  # the claim reads and clears it
        self.status = JobStatus.RUNNING
        run_start = self.now

        def call(step: Step, method: Method, checksum: float | None) -> Result:
            news = next(meanwhile, None)
            if news == "pay":
                self.iamport.customer_pays()
            elif news is not None:
                self.iamport.console(news == "console_partial", self.now)
            if step in MUTATING:
                fault, flight = next(mutating, ("ok", None))
                return self.mutate(run_no, step, method, checksum, fault, flight)
            return self.lookup(run_no, next(lookups, "ok"))

        ran = drive(state, call, POLICY, self.rng, lambda: self.now - run_start)
        d = ran.decision
        assert d.status is not None
        self.decision = d
        self.status = d.status
        self.attempts = ran.attempts
        self.uncertain = d.uncertain
        self.idle_runs = self.idle_runs + 1 if d.idle else 0
        self.method = d.method or self.method
        self.error = d.error or self.error
        self.due_at = self.now + d.delay
        assert self.attempts <= POLICY.max_attempts
        self.check_terminal(d)
        if d.terminal:
            by = d.cancellation.cancelled_by if d.cancellation else ""
            note(f"ended {d.status.value} {by} idle={d.idle}".strip())
        elif d.payment_status and d.uncertain:
            note(f"waits to settle, {d.payment_status}")

    def mutate(
        self,
        run_no: int,
        step: Step,
        method: Method,
        checksum: float | None,
        fault: str,
        flight: float | None,
    ) -> Result:
        iamport = self.iamport
        iamport.advance(self.now, self.ended)
        start = self.now
        # Never a mutating call while an earlier one of the job can still apply.
        for earlier in iamport.ours:
            if earlier.sent and not earlier.answered:
                assert start >= earlier.start + SETTLE, (
                    f"{step} sent at {start} while {earlier.step} sent at {earlier.start} "
                    "could still apply"
                )
        note(f"sent {step.value} by {method.value} to a {iamport.pay_method}")
        if step is Step.REFUND:
            assert self.refund_allowed, "a refund of a held payment nobody asked to refund"
            before = iamport.calls[-1] if iamport.calls else None
            assert isinstance(before, Looked), "a refund not right after a lookup"
            assert before.run == run_no, "a refund after a lookup of an earlier run"
            assert before.kind is Kind.OK and before.payment is not None
            assert before.payment.status == "paid"
            assert checksum == before.payment.amount - before.payment.cancel_amount
        else:
            assert checksum is None
        sent = Sent(run_no, step, method, checksum, start, sent=fault != "not_sent")
        iamport.calls.append(sent)
        self.last_call_at = start  # the write-ahead
        result = self._mutation_result(sent, fault, flight)
        self._pass(DURATION[fault])
        return result

    def _mutation_result(self, sent: Sent, fault: str, flight: float | None) -> Result:
        iamport = self.iamport
        if fault == "not_sent":
            sent.answered = True
            return Result(Kind.NOT_SENT, sent=False)
        if fault.startswith("json5xx"):
            # iamport's application answered 5xx: the call ended, maybe after applying
            sent.answered = sent.maybe = True
            if fault == "json5xx_after":
                iamport.apply(sent, self.now)
            return Result(Kind.ENDED, error=ERR_APP)
        sent.maybe = fault not in ("ok", "429", "401")
        if fault in ("timeout_after", "gw5xx_after"):
            iamport.apply(sent, self.now)
            return Result(Kind.UNKNOWN, error=ERR_TIMEOUT if "timeout" in fault else ERR_GATEWAY)
        if fault in ("timeout_before", "gw5xx_before"):
            if flight is not None:
                sent.apply_at = sent.start + flight * SETTLE
            return Result(Kind.UNKNOWN, error=ERR_TIMEOUT if "timeout" in fault else ERR_GATEWAY)
        sent.answered = True
        if fault == "429":
            return Result(Kind.RATE_LIMITED, retry_after=1.0)
        if fault == "401":
            return Result(Kind.UNAUTHORIZED, error=ERR_401)
        if iamport.status == "missing":
            return Result(Kind.NOT_FOUND, error=ERR_404)
        if iamport.apply(sent, self.now):
            return Result(Kind.OK, payment=iamport.payment())
        return Result(Kind.REFUSED, error=ERR_REFUSED)

    def lookup(self, run_no: int, fault: str) -> Result:
        iamport = self.iamport
        iamport.advance(self.now, self.ended)
        if fault == "ok":
            if iamport.status == "missing":
                result = Result(Kind.NOT_FOUND, error=ERR_404)
            else:
                result = Result(Kind.OK, payment=iamport.payment())
        elif fault == "timeout":
            result = Result(Kind.UNKNOWN, error=ERR_TIMEOUT)
        elif fault == "gw5xx":
            result = Result(Kind.UNKNOWN, error=ERR_GATEWAY)
        elif fault == "json5xx":
            result = Result(Kind.ENDED, error=ERR_APP)
        elif fault == "429":
            result = Result(Kind.RATE_LIMITED, retry_after=1.0)
        elif fault == "401":
            result = Result(Kind.UNAUTHORIZED, error=ERR_401)
        else:
            result = Result(Kind.NOT_SENT, sent=False)
        iamport.calls.append(Looked(run_no, result.kind, result.payment))
        self._pass(DURATION[fault])
        return result

    # -- the truth --------------------------------------------------------------------------

    def check_terminal(self, d: Decision) -> None:
        iamport = self.iamport
        ours = iamport.ours
        cancel_applied = any(c.applied and c.step is Step.CANCEL for c in ours)
        refund_applied = any(c.applied and c.step is Step.REFUND for c in ours)
        refund_maybe = any(c.step is Step.REFUND and c.maybe for c in ours)
        truth = iamport.status
        if d.status is JobStatus.CANCELLED:
            assert truth == "cancelled"
            assert d.cancellation is not None
            if d.cancellation.cancelled_by == "upstream":
                assert not cancel_applied and not refund_applied
            else:
                assert cancel_applied or iamport.console_acted
        elif d.status is JobStatus.REFUNDED:
            assert truth == "cancelled"
            assert refund_applied or (iamport.console_acted and refund_maybe)
        elif d.status is JobStatus.NEEDS_REFUND:
            assert truth == "paid"
        elif d.status is JobStatus.FAILED:
            idle_bound = d.idle and self.idle_runs >= POLICY.max_idle_runs
            assert (
                truth in ("failed", "missing")
                or (truth == "ready" and self.attempts >= POLICY.max_attempts)
                or idle_bound
            ), (truth, self.attempts, self.idle_runs)

    @invariant()
    def at_most_one_of_ours_applied(self) -> None:
        ours = self.iamport.ours
        assert sum(c.applied and c.step is Step.CANCEL for c in ours) <= 1
        assert sum(c.applied and c.step is Step.REFUND for c in ours) <= 1
        assert self.attempts <= POLICY.max_attempts

    @invariant()
    def nothing_of_ours_applies_after_the_job_said_how_it_ended(self) -> None:
        assert not self.iamport.late, self.iamport.late

    def teardown(self) -> None:
        # Once iamport behaves (every call answered at once, nobody else acts), the job ends.
        if self.status is JobStatus.RUNNING:
            return  # a run failed an assertion mid-way: that failure is the report
        for _ in range(int(SETTLE / POLICY.unknown_floor_seconds) + 8):
            if self.status in WAITING:
                self.run(iter([]), iter([]), iter([]), 0.0)
        assert self.status in TERMINAL, (self.status, self.decision)
        self._pass(SETTLE)
        self.nothing_of_ours_applies_after_the_job_said_how_it_ended()
        self.at_most_one_of_ours_applied()


TestJobMachine = JobMachine.TestCase
TestJobMachine.settings = settings(
    max_examples=500,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_replay_a_refund_request_while_an_unanswered_cancel_can_still_apply() -> None:
    """The minimal case Hypothesis found: a refund sent inside the cancel's settle time.

    t=0 the cancel times out (unknown outcome; it settles at t=SETTLE). The customer pays. t~10
    the next run looks up: paid, on_paid hold -> needs_refund. The decision used to drop
    `uncertain` there, so when a person asked for the refund at once the run looked up (paid)
    and, with no uncertain call left, sent POST /payments/cancel at t~10, before t=SETTLE.
    needs_refund now keeps the unsettled cancel, and the refund waits for it to settle.
    """
    m = JobMachine()
    m.start(pay_method="cvs", hint=Method.CVS, on_paid=OnPaid.HOLD, initial="ready", seed=0)
    m.worker_runs(mutating=[("timeout_before", None)], lookups=[], meanwhile=[], late=0.0)
    assert (m.status, m.uncertain) == (JobStatus.RETRY_WAIT, Step.CANCEL)
    m.customer_pays(gap=0.0)
    m.worker_runs(mutating=[], lookups=[], meanwhile=[], late=0.0)
    assert m.status is JobStatus.NEEDS_REFUND
    assert m.uncertain is Step.CANCEL  # kept: the cancel can still apply
    assert m.now < SETTLE
    m.a_person_requests_the_refund()
    m.worker_runs(mutating=[], lookups=[], meanwhile=[], late=0.0)
    assert (m.status, m.uncertain) == (JobStatus.RETRY_WAIT, Step.CANCEL)
    assert not any(c.step is Step.REFUND for c in m.iamport.ours)
    m.teardown()
