"""What keeps one account's trouble inside that account, in one process.

Every account has its own client and so its own guard. It refuses a call at once, before
anything is sent, when the call would only tie a job thread down waiting for an account that
cannot answer: while the account is paused by a 429, while its circuit is open after a run of
failures (timeouts, connection errors, 5xx), and when the account already holds its share of
the process's job threads while another account wants them. A refused call is "rate limited": nothing was sent, no attempt is
spent, and the job waits `retry_after` and runs again. So a 429 storm, an outage or a hanging
gateway of one account leaves the threads to the others.
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


class Neighbours:
    """The guards of one process: when each account last made a call here. The share of
    threads matters only while another account wants them: one busy account among idle
    ones has every thread."""

    WINDOW = 1.0  # seconds since its last call that an account counts as wanting threads

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, float] = {}

    def saw(self, guard: Guard, now: float) -> None:
        with self._lock:
            self._seen[id(guard)] = now

    def others_active(self, guard: Guard, now: float) -> bool:
        with self._lock:
            return any(k != id(guard) and now - t < self.WINDOW for k, t in self._seen.items())


@dataclass(frozen=True)
class GuardPolicy:
    max_in_flight: int | None = None  # None: no cap (one account has every thread)
    failures_to_open: int = 5  # failures in a row that open the circuit
    open_seconds: float = 5.0  # how long it stays open before one trial call


class Guard:
    """One account's calls in this process: in flight, paused, and the circuit's state."""

    def __init__(
        self,
        policy: GuardPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        neighbours: Neighbours | None = None,
    ) -> None:
        self.policy = policy or GuardPolicy()
        self._neighbours = neighbours
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._paused_until = 0.0
        self._failures = 0
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
                raise Blocked(self._paused_until - now, "the account is paused after a 429")
            trial = False
            if self._failures >= self.policy.failures_to_open and self._trial != me:
                if depth or now < self._open_until or self._trial is not None:
                    left = max(self._open_until - now, 0.0) or self.policy.open_seconds
                    raise Blocked(left, "the account's gateway is failing; circuit open")
                trial = True
            cap = self.policy.max_in_flight
            if not depth and cap is not None and self._in_flight >= cap and self._crowded(now):
                raise Blocked(0.5, "the account holds its share of this process's threads")
            if trial:
                self._trial = me
            if not depth:
                self._in_flight += 1
        if not depth and self._neighbours is not None:
            self._neighbours.saw(self, now)
        self._depth.n = depth + 1
        return trial

    def leave(self, outcome: str | None, trial: bool) -> None:
        """The call ended with `outcome` (None: not known here, or it raised before one)."""
        depth = self._depth.n = self._depth.n - 1
        with self._lock:
            if not depth:
                self._in_flight -= 1
            if trial:
                self._trial = None
            if outcome in ANSWERS:
                self._failures = 0
            elif outcome in FAILURES:
                self._failures += 1
                if self._failures >= self.policy.failures_to_open:
                    self._open_until = self._clock() + self.policy.open_seconds

    def _crowded(self, now: float) -> bool:
        """Whether another account wants this process's threads (always, without neighbours)."""
        return self._neighbours is None or self._neighbours.others_active(self, now)

    def pause(self, seconds: float) -> None:
        """The gateway said 429 Retry-After: this process sends nothing for the account until
        then (other processes learn it from the shared limiter or their own 429)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def circuit_open(self) -> bool:
        with self._lock:
            return self._failures >= self.policy.failures_to_open
