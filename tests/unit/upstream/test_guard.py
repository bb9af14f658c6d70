"""The account guard: a 429 pause, an open circuit and a full share refuse at once, and
nothing else does."""

from __future__ import annotations

import pytest

from app.upstream.guard import Blocked, Guard, GuardPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_pause_refuses_until_it_ends() -> None:
    clock = Clock()
    guard = Guard(clock=clock)
    guard.pause(2.0)
    with pytest.raises(Blocked) as info:
        guard.enter()
    assert info.value.retry_after == pytest.approx(2.0)
    clock.now += 2.0
    assert guard.enter() is False


def test_failures_in_a_row_open_the_circuit_and_one_trial_closes_it() -> None:
    clock = Clock()
    guard = Guard(GuardPolicy(failures_to_open=3, open_seconds=5.0), clock=clock)
    for outcome in ("timeout", "connection_error", "server_error"):
        guard.leave(outcome, guard.enter())
    assert guard.circuit_open
    with pytest.raises(Blocked) as info:
        guard.enter()
    assert info.value.retry_after == pytest.approx(5.0)
    clock.now += 5.0
    trial = guard.enter()
    assert trial is True
    with pytest.raises(Blocked):  # one trial at a time
        guard.enter()
    guard.leave("ok", trial)
    assert not guard.circuit_open and guard.enter() is False


def test_a_failed_trial_opens_it_again_and_an_answer_resets_the_count() -> None:
    clock = Clock()
    guard = Guard(GuardPolicy(failures_to_open=2, open_seconds=1.0), clock=clock)
    guard.leave("timeout", guard.enter())
    guard.leave("refused", guard.enter())  # a refusal is an answer: the gateway is there
    guard.leave("timeout", guard.enter())
    assert not guard.circuit_open
    guard.leave("timeout", guard.enter())
    assert guard.circuit_open
    clock.now += 1.0
    guard.leave("timeout", guard.enter())
    with pytest.raises(Blocked):
        guard.enter()


def test_the_share_caps_calls_in_flight_and_a_429_is_no_failure() -> None:
    guard = Guard(GuardPolicy(max_in_flight=2, failures_to_open=1))
    a, b = guard.enter(), guard.enter()
    with pytest.raises(Blocked) as info:
        guard.enter()
    assert "share" in info.value.why
    guard.leave("rate_limited", a)
    guard.leave(None, b)  # raised before an outcome: counts as nothing
    assert not guard.circuit_open
    guard.enter()
