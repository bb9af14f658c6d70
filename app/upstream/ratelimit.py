"""A token bucket in Redis shared by every process, so all workers together respect one rate.

It is a GCRA (the token bucket expressed as a "theoretical arrival time"): each grant reserves
the next free slot, possibly in the near future, and tells the caller exactly how long to sleep.
No polling, and Redis `TIME` is the one clock all processes share.

Where the rate is high, a process reserves a few consecutive slots in one round trip and hands
them to its own threads: at most a quarter of the burst, and 16. The default rate (20/s, burst
2) takes one slot a round trip, as before. A process holds at most one block, so all processes
together run ahead of the shared schedule by at most a block each; a slot unused a second after
its time lapses, and a 429's pause drops what is held.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import redis

# KEYS[1]: the bucket, KEYS[2]: its pause. ARGV: interval (s per grant), burst (grants),
# max_wait (s), count. Reserves `count` consecutive grants, or none when the last would wait
# over max_wait, or while a 429's pause lasts (refused at once, with the pause's time left:
# a thread that slept the pause out would be a thread the other accounts cannot have).
# Returns {granted (0/1), seconds}: granted, the first grant's wait (below 0 when it is due
# already; the others follow one interval apart); refused, the last one's wait. (Strings keep
# the float precision.)
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
  return {0, tostring(paused / 1000)}
end
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + count * interval
local last = new_tat - burst * interval - now
if last > max_wait then
  return {0, tostring(last)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, tostring(tat + interval - burst * interval - now)}
"""

MAX_BLOCK = 16
SLOT_LAPSE = 1.0  # seconds after its time that a reserved, unused slot is dropped


# KEYS[1]: the bucket, KEYS[2]: its pause. ARGV: seconds, interval, burst. Marks the pause
# (never shorter than one already marked) and moves the bucket's next free slot to its end, so
# the first grants after it keep to the rate.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seconds = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local until_tat = now + seconds + (burst - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < until_tat then
  redis.call('SET', KEYS[1], tostring(until_tat), 'PX', math.ceil((until_tat - now) * 1000) + 1000)
end
local ms = math.ceil(seconds * 1000)
if ms > 0 and redis.call('PTTL', KEYS[2]) < ms then
  redis.call('SET', KEYS[2], '1', 'PX', ms)
end
return 1
"""


class LimiterBusy(Exception):
    """No grant within max_wait; nothing was reserved. Try again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limiter busy, retry after {retry_after:.3f}s")


class RateLimiter:
    """At most `rate` grants per second across every process sharing `key`, bursts up to `burst`."""

    def __init__(
        self, redis_client: redis.Redis, key: str, rate: float, burst: float | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.key = key
        self._keys = [key, f"{key}:pause"]
        self.rate = rate
        # A small burst keeps the rate within 10% over a few seconds.
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self.block = max(1, min(MAX_BLOCK, int(self.burst // 4)))
        self._interval = 1.0 / rate
        self._args = [repr(self._interval), repr(self.burst)]
        self._script = redis_client.register_script(_GCRA)
        self._pause = redis_client.register_script(_PAUSE)
        self._held: deque[float] = deque()  # reserved slots not yet used, as monotonic times
        self._fetching = False  # a thread is reserving a block
        self._generation = 0  # moved on by each pause
        self._lock = threading.Lock()

    def reserve(self, max_wait: float) -> float:
        """Reserve one grant and return how long to wait for it; LimiterBusy if over max_wait."""
        with self._lock:
            now = time.monotonic()
            while self._held and self._held[0] < now - SLOT_LAPSE:
                self._held.popleft()
            if self._held:
                wait = self._held[0] - now
                if wait > max_wait:
                    raise LimiterBusy(wait)
                self._held.popleft()
                return max(0.0, wait)
            # One thread fetches a block; the others take a grant each meanwhile. No thread
            # waits on another's round trip (Redis may be slow or frozen).
            count = 1 if self._fetching else self.block
            self._fetching = self._fetching or count > 1
            generation = self._generation
        try:
            granted, seconds = self._script(
                keys=self._keys, args=[*self._args, repr(max(0.0, max_wait)), count]
            )
        finally:
            if count > 1:
                self._fetching = False
        if not int(granted):
            raise LimiterBusy(max(0.0, float(seconds)))
        now = time.monotonic()
        first = now + float(seconds)
        if count > 1:
            with self._lock:
                if generation == self._generation:  # else a pause came meanwhile: drop them
                    # A slot the burst made due already counts as due from now (its lapse too).
                    slots = (first + k * self._interval for k in range(1, count))
                    self._held.extend(max(now, slot) for slot in slots)
        return max(0.0, first - now)

    def acquire(self, max_wait: float) -> float:
        """Block until a grant is ours and return the seconds waited; LimiterBusy if too long.

        Redis errors propagate (redis.RedisError): the caller decides whether to send anyway.
        """
        wait = self.reserve(max_wait)
        if wait > 0:
            time.sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Hold every process's next grant back by `seconds` (iamport said 429 Retry-After).

        A 429 speaks of our account's rate, not of one payment, so all workers wait.
        """
        with self._lock:
            self._held.clear()
            self._generation += 1
        self._pause(keys=self._keys, args=[repr(max(0.0, seconds)), *self._args])
