"""The account guard: a 429 pause, an open circuit and a full share refuse at once, and
nothing else does; a call admitted once makes its own exchanges inside that admission."""

from __future__ import annotations

import queue
import threading

import pytest

from app.upstream.guard import Blocked, Guard, GuardPolicy


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


def test_the_share_caps_stalling_calls_and_a_429_is_no_failure() -> None:
    clock = Clock()
    guard = Guard(GuardPolicy(max_in_flight=2, failures_to_open=1), clock=clock)
    a, b = Call(guard), Call(guard)
    with pytest.raises(Blocked):  # not heard from yet: not known to be healthy
        Call(guard)
    a.end("ok")
    a = Call(guard)
    Call(guard).end("ok")  # over the share, but its calls come back quickly: not held back
    clock.now += GuardPolicy.stalled_after
    with pytest.raises(Blocked) as info:  # the oldest has run a second: they are stalling
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


def test_a_refused_fresh_token_pauses_the_account_longer_each_time_until_a_success() -> None:
    clock = Clock()
    guard = Guard(GuardPolicy(refused_pause=(0.5, 2.0)), clock=clock)
    waits = []
    for _ in range(4):
        guard.refused_fresh_token()
        with pytest.raises(Blocked) as info:
            Call(guard)
        assert "401" in info.value.why
        waits.append(info.value.retry_after)
        clock.now += info.value.retry_after
    assert waits == [0.5, 1.0, 2.0, 2.0]
    Call(guard).end("unauthorized")  # an answer, but not a success: the doubling goes on
    guard.refused_fresh_token()
    with pytest.raises(Blocked) as info:
        Call(guard)
    assert info.value.retry_after == 2.0
    clock.now += 2.0
    Call(guard).end("ok")
    guard.refused_fresh_token()  # after a success it starts again from the first
    with pytest.raises(Blocked) as info:
        Call(guard)
    assert info.value.retry_after == 0.5


def test_an_account_whose_last_call_failed_is_held_to_its_share() -> None:
    guard = Guard(GuardPolicy(max_in_flight=1, failures_to_open=5), clock=Clock())
    Call(guard).end("ok")
    a = Call(guard)
    Call(guard).end("ok")  # healthy: over its share, not held back
    Call(guard).end("timeout")
    with pytest.raises(Blocked):
        Call(guard)
    a.end("ok")  # an answer: healthy again
    a = Call(guard)
    Call(guard).end("ok")
    a.end("ok")
