"""The Redis token bucket holds one rate across processes and threads."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest
import redis

from app.iamport import LimiterBusy, RateLimiter

RATE = 50.0
DURATION = 4.0
PROCESSES = 4
THREADS = 4
KEY = "iamport:rate:test"


def limiter_worker(redis_url: str, start: Any, results: Any) -> None:
    """THREADS threads take grants as fast as the limiter allows for DURATION seconds."""
    limiter = RateLimiter(redis.Redis.from_url(redis_url), KEY, RATE)
    grants: list[float] = []
    lock = threading.Lock()
    start.wait()
    deadline = time.time() + DURATION

    def take() -> None:
        while True:
            limiter.acquire(max_wait=5.0)
            now = time.time()
            if now >= deadline:
                return
            with lock:
                grants.append(now)

    threads = [threading.Thread(target=take) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(grants)


def test_rate_holds_across_processes(clean_redis: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES, timeout=60)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=limiter_worker, args=(clean_redis, start, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        per_process = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
    grants = sorted(t for g in per_process for t in g)
    assert all(len(g) > RATE * DURATION / PROCESSES / 3 for g in per_process)  # all took part
    t0 = grants[0]
    in_window = [t for t in grants if t < t0 + DURATION]
    assert abs(len(in_window) - RATE * DURATION) <= 0.1 * RATE * DURATION
    # Second by second too (the first second also holds the small initial burst).
    for second in range(1, int(DURATION) - 1):
        n = sum(t0 + second <= t < t0 + second + 1 for t in grants)
        assert abs(n - RATE) <= 0.1 * RATE, (second, n)


def test_grants_are_spaced_and_waits_are_exact(clean_redis: str) -> None:
    limiter = RateLimiter(redis.Redis.from_url(clean_redis), KEY, rate=20, burst=1)
    assert limiter.acquire(1.0) == 0
    started = time.monotonic()
    waited = limiter.acquire(1.0)
    elapsed = time.monotonic() - started
    assert 0.04 <= waited <= 0.05 and elapsed == pytest.approx(waited, abs=0.02)


def test_refuses_beyond_max_wait_without_reserving(clean_redis: str) -> None:
    limiter = RateLimiter(redis.Redis.from_url(clean_redis), KEY, rate=1, burst=1)
    limiter.acquire(0)
    with pytest.raises(LimiterBusy) as info:
        limiter.acquire(max_wait=0.2)
    assert 0.9 <= info.value.retry_after <= 1.0
    # The refusal reserved nothing: the next slot is still about one second away.
    assert limiter.reserve(max_wait=5) <= 1.0


def test_burst_default_is_small(clean_redis: str) -> None:
    limiter = RateLimiter(redis.Redis.from_url(clean_redis), KEY, rate=50)
    assert limiter.burst == 5
    immediate = sum(limiter.reserve(5) == 0 for _ in range(10))
    assert immediate == 5
