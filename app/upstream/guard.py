"""What keeps one account's trouble inside that account, in one process.

Every account has its own client and so its own guard. It refuses a call at once, before
anything is sent, when the call would only tie a job thread down waiting for an account that
cannot answer: while the account is paused (by a 429, or after a fresh token was refused too),
while its circuit is open after a run of failures (timeouts, connection errors, 5xx), and when
an account in trouble (not answered yet, its last call failed, or its oldest call in flight has
run for a second) already holds its share of the process's job threads. A refused call is
"rate limited": nothing was sent, no attempt is spent, and the job waits `retry_after` and
runs again. So a 429 storm,
a 401 storm, an outage or a hanging gateway of one account leaves the threads to the others,
while a healthy account, whose calls come back quickly, is never held back by its share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# The outcomes that say the account's gateway is not answering (errors.py's classification);
# an answer of any kind, a refusal or a 401 included, says it is.
FAILURES = frozenset(
    {"timeout", "connection_error", "server_error", "unavailable", "not_sent", "bad_response"}
)
ANSWERS = frozenset({"ok", "refused", "not_found", "unauthorized"})


class Blocked(Exception):
    """The call was not made: wait `retry_after` seconds."""

    def __init__(self, retry_after: float, why: str) -> None:
        super().__init__(why)
        self.retry_after = retry_after
        self.why = why


@dataclass(frozen=True)
class GuardPolicy:
    max_in_flight: int | None = None  # None: no cap (one account has every thread)
    failures_to_open: int = 5  # failures in a row that open the circuit
    open_seconds: float = 5.0  # how long it stays open before one trial call
    # An account's calls stall when its oldest in flight has run this long. Only an account in
    # trouble (stalling, its last call failed, or not heard from yet) is held to its share: a
    # healthy one turns its threads over quickly and starves nobody.
    stalled_after: float = 1.0
    # A fresh token refused as well: the account's credentials or iamport's auth are at fault,
    # and every call would be refused alike. It pauses, doubling from the first to the most.
    refused_pause: tuple[float, float] = (0.5, 30.0)


class Guard:
    """One account's calls in this process: in flight, paused, and the circuit's state."""

    def __init__(
        self,
        policy: GuardPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or GuardPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._started: dict[int, float] = {}  # each thread's call in flight: when it began
        self._paused_until = 0.0
        self._paused_why = ""
        self._refusals = 0  # fresh tokens refused in a row
        self._failures = 0
        self._answered = False  # an account not heard from yet is not known to be healthy
        self._open_until = 0.0
        self._trial: int | None = None  # the thread testing a circuit that was open
        # Guards nest: a call admitted once (its token wait included) makes its own exchanges
        # (a token fetch, a repeat after a 401) inside the same admission.
        self._depth = threading.local()

    def enter(self) -> bool:
        """Admit a call or raise Blocked; True when it is the trial of an open circuit."""
        depth: int = getattr(self._depth, "n", 0)
        me = threading.get_ident()
        with self._lock:
            now = self._clock()
            if now < self._paused_until:
                raise Blocked(self._paused_until - now, self._paused_why)
            trial = False
            if self._failures >= self.policy.failures_to_open and self._trial != me:
                if depth or now < self._open_until or self._trial is not None:
                    left = max(self._open_until - now, 0.0) or self.policy.open_seconds
                    raise Blocked(left, "the account's gateway is failing; circuit open")
                trial = True
            cap = self.policy.max_in_flight
            if not depth and cap is not None and self._in_flight >= cap and self._troubled(now):
                raise Blocked(0.5, "the account holds its share of this process's threads")
            if trial:
                self._trial = me
            if not depth:
                self._in_flight += 1
                self._started[me] = now
        self._depth.n = depth + 1
        return trial

    def leave(self, outcome: str | None, trial: bool) -> None:
        """The call ended with `outcome` (None: not known here, or it raised before one)."""
        depth = self._depth.n = self._depth.n - 1
        with self._lock:
            if not depth:
                self._in_flight -= 1
                self._started.pop(threading.get_ident(), None)
            if trial:
                self._trial = None
            if outcome in ANSWERS:
                self._failures = 0
                self._answered = True
                if outcome == "ok":
                    self._refusals = 0
            elif outcome in FAILURES:
                self._failures += 1
                if self._failures >= self.policy.failures_to_open:
                    self._open_until = self._clock() + self.policy.open_seconds

    def _troubled(self, now: float) -> bool:
        """Not answered yet, its last call failed, or its calls stall: threads it holds may be
        held for long."""
        oldest = min(self._started.values(), default=now)
        stalled = now - oldest >= self.policy.stalled_after
        return not self._answered or self._failures > 0 or stalled

    def pause(self, seconds: float) -> None:
        """The gateway said 429 Retry-After: this process sends nothing for the account until
        then (other processes learn it from the shared limiter or their own 429)."""
        self._pause(seconds, "the account is paused after a 429")

    def refused_fresh_token(self) -> None:
        """iamport refused a token fetched for this very call: pause the account, longer each
        time in a row, until a call succeeds."""
        first, most = self.policy.refused_pause
        with self._lock:
            self._refusals += 1
            seconds = min(most, first * 2 ** (self._refusals - 1))
        self._pause(seconds, "the account's fresh token was refused (401); paused")

    def _pause(self, seconds: float, why: str) -> None:
        with self._lock:
            until = self._clock() + seconds
            if until > self._paused_until:
                self._paused_until, self._paused_why = until, why

    @property
    def circuit_open(self) -> bool:
        with self._lock:
            return self._failures >= self.policy.failures_to_open
