"""A token bucket in Redis shared by every process, so all workers together respect one rate.

It is a GCRA (the token bucket expressed as a "theoretical arrival time"): each grant reserves
the next free slot, possibly in the near future, and tells the caller exactly how long to sleep.
No polling, one round trip per grant, and Redis `TIME` is the one clock all processes share.
"""

from __future__ import annotations

import time

import redis

# KEYS[1]: the bucket. ARGV: interval (s per grant), burst (grants), max_wait (s).
# Returns {granted (0/1), wait seconds as a string} (strings keep the float precision).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now
if wait < 0 then
  wait = 0
end
if wait > max_wait then
  return {0, tostring(wait)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, tostring(wait)}
"""


# KEYS[1]: the bucket. ARGV: seconds, interval, burst. Moves the bucket's next free slot to
# `seconds` from now (never earlier than it already is), so the next grant anywhere waits that long.
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
        self.rate = rate
        # A small burst keeps the rate within 10% over a few seconds.
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._interval = repr(1.0 / rate)
        self._burst = repr(self.burst)
        self._script = redis_client.register_script(_GCRA)
        self._pause = redis_client.register_script(_PAUSE)

    def reserve(self, max_wait: float) -> float:
        """Reserve one grant and return how long to wait for it; LimiterBusy if over max_wait."""
        granted, wait = self._script(
            keys=[self.key], args=[self._interval, self._burst, repr(max(0.0, max_wait))]
        )
        seconds = float(wait)
        if not int(granted):
            raise LimiterBusy(seconds)
        return seconds

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
        self._pause(keys=[self.key], args=[repr(max(0.0, seconds)), self._interval, self._burst])
