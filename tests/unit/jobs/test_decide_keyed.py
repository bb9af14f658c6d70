"""The decisions for a gateway with idempotency keys (PortOne V2), without I/O: an unanswered
call is settled by its repeat under the same key, "still running" is never a failure, a
cancellation accepted but not finished is waited for, and a barcode the gateway cannot void
ends the job with its reason."""

from __future__ import annotations

import random
import re

from app.jobs.decide import Decision, JobState, Kind, Method, Policy, Result, Step, decide, drive
from app.jobs.records import UpstreamError
from app.jobs.run import KEY_SPENT_OUTCOMES
from app.jobs.status import JobStatus
from app.jobs.store import ANSWERED_CALLS_SQL
from app.upstream.payment import CancelHistoryEntry, Payment

SEED = 3
POLICY = Policy(max_attempts=3, settle_seconds=120.0, unknown_floor_seconds=10.0, max_idle_runs=5)
LOST = UpstreamError(message="ReadTimeout")
UNSUPPORTED = UpstreamError(message="PortOne V2 has no call that voids a Korean barcode")
CANCELLED_AT = 1_764_000_100.0


def pay(status: str, method: str | None = "vbank", **kw: object) -> Payment:
    history = []
    if status == "cancelled":
        history = [CancelHistoryEntry(pg_tid="pg-1", amount=1000.0, cancelled_at=CANCELLED_AT)]
    fields: dict[str, object] = {
        "imp_uid": "order-1",
        "status": status,
        "pay_method": method,
        "amount": 1000.0,
        "cancel_amount": 1000.0 if status == "cancelled" else 0.0,
        "cancel_history": history,
        **kw,
    }
    return Payment.model_validate(fields)


class Script:
    def __init__(self, *answers: Result) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[Step, Method, float | None]] = []

    def __call__(self, step: Step, method: Method, checksum: float | None) -> Result:
        self.calls.append((step, method, checksum))
        return self.answers.pop(0)


def run(state: JobState, script: Script) -> Decision:
    return drive(state, script, POLICY, random.Random(SEED)).decision


def test_an_unanswered_close_is_repeated_at_once_on_a_keyed_gateway() -> None:
    state = JobState(
        attempts=1, uncertain=Step.CANCEL, settle_left=100.0, method=Method.VBANK, keyed=True
    )
    script = Script(
        Result(Kind.OK, payment=pay("ready")), Result(Kind.OK, payment=pay("cancelled"))
    )
    d = run(state, script)
    assert [c[0] for c in script.calls] == [Step.LOOKUP, Step.CANCEL]
    assert d.status is JobStatus.CANCELLED


def test_without_keys_an_unanswered_close_waits_for_the_settle_time() -> None:
    state = JobState(attempts=1, uncertain=Step.CANCEL, settle_left=100.0, method=Method.VBANK)
    script = Script(Result(Kind.OK, payment=pay("ready")))
    d = run(state, script)
    assert [c[0] for c in script.calls] == [Step.LOOKUP]
    assert d.status is JobStatus.RETRY_WAIT


def test_an_unanswered_refund_is_repeated_with_the_balance_it_was_sent_with() -> None:
    state = JobState(
        attempts=1, uncertain=Step.REFUND, settle_left=100.0, refund_allowed=True, keyed=True
    )
    script = Script(
        Result(Kind.OK, payment=pay("paid", "card")),
        Result(Kind.OK, payment=pay("cancelled", "card")),
    )
    d = run(state, script)
    assert script.calls[1] == (Step.REFUND, Method.CVS, 1000.0)
    assert d.status is JobStatus.REFUNDED


def test_a_refund_is_not_a_repeat_of_an_unanswered_close() -> None:
    # A different call is a different key: the close must settle first, as without keys.
    state = JobState(
        attempts=1, uncertain=Step.CANCEL, settle_left=100.0, refund_allowed=True, keyed=True
    )
    script = Script(Result(Kind.OK, payment=pay("paid", "vbank")))
    d = run(state, script)
    assert [c[0] for c in script.calls] == [Step.LOOKUP]
    assert d.status is JobStatus.RETRY_WAIT


def test_past_the_keys_lifetime_the_settle_time_rules() -> None:
    policy = Policy(settle_seconds=4 * 3600.0, key_lifetime_seconds=3 * 3600.0)
    state = JobState(
        attempts=1, uncertain=Step.CANCEL, settle_left=600.0, method=Method.VBANK, keyed=True
    )
    d = decide(Step.LOOKUP, Result(Kind.OK, payment=pay("ready")), state, policy, random.Random(1))
    assert d.status is JobStatus.RETRY_WAIT and d.uncertain is Step.CANCEL


def test_still_in_flight_waits_keeps_the_call_open_and_is_no_attempt() -> None:
    state = JobState(
        attempts=1, uncertain=Step.CANCEL, settle_left=100.0, method=Method.VBANK, keyed=True
    )
    script = Script(Result(Kind.OK, payment=pay("ready")), Result(Kind.IN_FLIGHT, error=LOST))
    out = drive(state, script, POLICY, random.Random(1))
    assert [c[0] for c in script.calls] == [Step.LOOKUP, Step.CANCEL]
    assert out.attempts == 1  # the repeat answered "still running" is the first call's
    assert out.decision.status is JobStatus.RETRY_WAIT
    assert out.decision.uncertain is Step.CANCEL


def test_a_requested_cancellation_is_waited_for_until_it_succeeds() -> None:
    state = JobState(attempts=1, refund_allowed=True, keyed=True)
    d = decide(Step.REFUND, Result(Kind.REQUESTED), state, POLICY, random.Random(1))
    assert d.status is JobStatus.RETRY_WAIT and d.uncertain is Step.REFUND
    waiting = JobState(attempts=1, uncertain=Step.REFUND, refund_allowed=True, keyed=True)
    pending = pay("paid", "card", cancel_pending=True)
    script = Script(Result(Kind.OK, payment=pending))
    d2 = run(waiting, script)
    assert [c[0] for c in script.calls] == [Step.LOOKUP]  # no second refund
    assert d2.status is JobStatus.RETRY_WAIT
    assert d2.uncertain is Step.REFUND and not d2.idle
    done = run(waiting, Script(Result(Kind.OK, payment=pay("cancelled", "card"))))
    assert done.status is JobStatus.REFUNDED


def test_a_requested_cancellation_that_failed_is_for_a_person() -> None:
    waiting = JobState(attempts=1, uncertain=Step.REFUND, refund_allowed=True, keyed=True)
    failed = pay("paid", "card", cancel_failed=True)
    script = Script(Result(Kind.OK, payment=failed))
    d = run(waiting, script)
    assert [c[0] for c in script.calls] == [Step.LOOKUP]
    assert d.status is JobStatus.NEEDS_REFUND
    assert "failed" in str(d.error.message if d.error else "")


def test_a_barcode_the_gateway_cannot_void_fails_with_its_reason() -> None:
    script = Script(
        Result(Kind.UNSUPPORTED, error=UNSUPPORTED, sent=False),
        Result(Kind.OK, payment=pay("pending", "cvs")),
    )
    d = run(JobState(keyed=True), script)
    assert [c[0] for c in script.calls] == [Step.CANCEL, Step.LOOKUP]
    assert d.status is JobStatus.FAILED
    assert d.error == UNSUPPORTED


def test_a_barcode_that_cannot_be_voided_and_shows_an_odd_status_is_looked_up_again() -> None:
    # A status the gateway does not document says nothing of whether the payment is paid: a
    # later lookup decides (here: paid, so on_paid), never a failure for the barcode.
    script = Script(
        Result(Kind.UNSUPPORTED, error=UNSUPPORTED, sent=False),
        Result(Kind.OK, payment=pay("PENDING_REVIEW", "cvs")),
    )
    d = run(JobState(keyed=True), script)
    assert d.status is JobStatus.RETRY_WAIT and d.idle
    later = run(
        JobState(keyed=True, look_first=True, idle_runs=1),
        Script(Result(Kind.OK, payment=pay("paid", "cvs"))),
    )
    assert later.status is JobStatus.NEEDS_REFUND


def test_a_cvs_hint_for_a_virtual_account_closes_it_instead() -> None:
    script = Script(
        Result(Kind.UNSUPPORTED, error=UNSUPPORTED, sent=False),
        Result(Kind.OK, payment=pay("ready", "vbank")),
        Result(Kind.OK, payment=pay("cancelled", "vbank")),
    )
    d = run(JobState(keyed=True), script)
    assert script.calls[2][:2] == (Step.CANCEL, Method.VBANK)
    assert d.status is JobStatus.CANCELLED


def test_a_paid_cvs_payment_is_still_refunded_by_on_paid() -> None:
    script = Script(
        Result(Kind.UNSUPPORTED, error=UNSUPPORTED, sent=False),
        Result(Kind.OK, payment=pay("paid", "cvs")),
    )
    d = run(JobState(keyed=True), script)
    assert d.status is JobStatus.NEEDS_REFUND


def test_nothing_to_stop_yet_retries_with_a_plain_error_then_fails() -> None:
    d = decide(
        Step.LOOKUP, Result(Kind.OK, payment=pay("pending")), JobState(), POLICY, random.Random(1)
    )
    assert d.status is JobStatus.RETRY_WAIT and d.idle
    assert d.error is not None and "nothing to stop yet" in str(d.error.message if d.error else "")
    last = run(
        JobState(idle_runs=4, look_first=True), Script(Result(Kind.OK, payment=pay("pending")))
    )
    assert last.status is JobStatus.FAILED
    assert "nothing to stop yet" in str(last.error.message if last.error else "")


def test_a_refunded_cvs_hint_keeps_no_error_of_the_void_it_could_not_make() -> None:
    script = Script(
        Result(Kind.UNSUPPORTED, error=UNSUPPORTED, sent=False),
        Result(Kind.OK, payment=pay("paid", "card")),
        Result(Kind.OK, payment=pay("cancelled", "card")),
    )
    d = run(JobState(keyed=True, refund_allowed=True), script)
    assert d.status is JobStatus.REFUNDED and d.error is None


def test_the_answered_calls_the_database_counts_are_the_runs() -> None:
    listed = re.search(r"outcome IN \(([^)]*)\)", ANSWERED_CALLS_SQL)
    assert listed is not None
    assert set(re.findall(r"'([a-z_]+)'", listed.group(1))) == KEY_SPENT_OUTCOMES
