"""The account guard: a 429 pause, an open circuit and a full share refuse at once, and
nothing else does; a call admitted once makes its own exchanges inside that admission."""

from __future__ import annotations

import queue
import threading

import pytest

from app.upstream.guard import Blocked, Guard, GuardPolicy, Neighbours


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Call:
    """One call on a thread of its own (the guard counts calls by thread): admitted or
    refused at start, it ends with `end(outcome)`."""

    def __init__(self, guard: Guard) -> None:
        self._answers: queue.Queue[bool | Blocked] = queue.Queue()
        self._outcome: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(guard,))
        self._thread.start()
        answer = self._answers.get(timeout=5)
        if isinstance(answer, Blocked):
            self._thread.join(5)
            raise answer
        self.trial = answer

    def _run(self, guard: Guard) -> None:
        try:
            trial = guard.enter()
        except Blocked as blocked:
            self._answers.put(blocked)
            return
        self._answers.put(trial)
        guard.leave(self._outcome.get(timeout=5), trial)

    def end(self, outcome: str | None) -> None:
        self._outcome.put(outcome)
        self._thread.join(5)


def test_a_pause_refuses_until_it_ends() -> None:
    clock = Clock()
    guard = Guard(clock=clock)
    guard.pause(2.0)
    with pytest.raises(Blocked) as info:
        Call(guard)
    assert info.value.retry_after == pytest.approx(2.0)
    clock.now += 2.0
    Call(guard).end("ok")


def test_failures_in_a_row_open_the_circuit_and_one_trial_closes_it() -> None:
    clock = Clock()
    guard = Guard(GuardPolicy(failures_to_open=3, open_seconds=5.0), clock=clock)
    for outcome in ("timeout", "connection_error", "server_error"):
        Call(guard).end(outcome)
    assert guard.circuit_open
    with pytest.raises(Blocked) as info:
        Call(guard)
    assert info.value.retry_after == pytest.approx(5.0)
    clock.now += 5.0
    trial = Call(guard)
    assert trial.trial is True
    with pytest.raises(Blocked):  # one trial at a time
        Call(guard)
    trial.end("ok")
    assert not guard.circuit_open
    Call(guard).end("ok")


def test_a_failed_trial_opens_it_again_and_an_answer_resets_the_count() -> None:
    clock = Clock()
    guard = Guard(GuardPolicy(failures_to_open=2, open_seconds=1.0), clock=clock)
    Call(guard).end("timeout")
    Call(guard).end("refused")  # a refusal is an answer: the gateway is there
    Call(guard).end("timeout")
    assert not guard.circuit_open
    Call(guard).end("timeout")
    assert guard.circuit_open
    clock.now += 1.0
    Call(guard).end("timeout")
    with pytest.raises(Blocked):
        Call(guard)


def test_the_share_caps_calls_in_flight_and_a_429_is_no_failure() -> None:
    guard = Guard(GuardPolicy(max_in_flight=2, failures_to_open=1))
    a, b = Call(guard), Call(guard)
    with pytest.raises(Blocked) as info:
        Call(guard)
    assert "share" in info.value.why
    a.end("rate_limited")
    b.end(None)  # raised before an outcome: counts as nothing
    assert not guard.circuit_open
    Call(guard).end("ok")


def test_a_calls_own_exchanges_are_inside_its_admission() -> None:
    guard = Guard(GuardPolicy(max_in_flight=1, failures_to_open=1))
    outer = guard.enter()
    inner = guard.enter()  # its token fetch: not a second call, not over the share
    guard.leave("timeout", inner)  # ...but its failure counts
    assert guard.circuit_open
    with pytest.raises(Blocked):
        guard.enter()  # the same call's repeat after the failure meets the open circuit
    guard.leave(None, outer)
    with pytest.raises(Blocked):  # and another call, while the circuit is open
        Call(guard)


def test_the_share_applies_only_while_another_account_wants_threads() -> None:
    clock = Clock()
    neighbours = Neighbours()
    busy = Guard(GuardPolicy(max_in_flight=1), clock=clock, neighbours=neighbours)
    other = Guard(GuardPolicy(max_in_flight=1), clock=clock, neighbours=neighbours)
    a, b = Call(busy), Call(busy)  # alone, the busy account takes every thread
    a.end("ok")
    b.end("ok")
    Call(other).end("ok")  # another account calls: the share applies for a while
    a = Call(busy)
    with pytest.raises(Blocked):
        Call(busy)
    clock.now += Neighbours.WINDOW
    Call(busy).end("ok")  # the other has been quiet for the window: every thread again
    a.end("ok")
