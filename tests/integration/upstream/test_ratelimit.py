"""The Redis token bucket holds one rate across processes and threads."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest
import redis

from app.upstream.iamport import LimiterBusy, RateLimiter

RATE = 50.0
DURATION = 4.0
PROCESSES = 4
THREADS = 4
KEY = "iamport:rate:test"


def limiter_worker(redis_url: str, rate: float, start: Any, results: Any) -> None:
    """THREADS threads take grants as fast as the limiter allows for DURATION seconds."""
    limiter = RateLimiter(redis.Redis.from_url(redis_url), KEY, rate)
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


# 50/s takes one grant a round trip; 1,000/s takes blocks of 16, each process running ahead.
@pytest.mark.parametrize("rate", [RATE, 1000.0])
def test_rate_holds_across_processes(clean_redis: str, rate: float) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES, timeout=60)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=limiter_worker, args=(clean_redis, rate, start, results))
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
    assert all(len(g) > rate * DURATION / PROCESSES / 3 for g in per_process)  # all took part
    t0 = grants[0]
    in_window = [t for t in grants if t < t0 + DURATION]
    assert abs(len(in_window) - rate * DURATION) <= 0.1 * rate * DURATION
    # Second by second too (the first second also holds the small initial burst).
    for second in range(1, int(DURATION) - 1):
        n = sum(t0 + second <= t < t0 + second + 1 for t in grants)
        assert abs(n - rate) <= 0.1 * rate, (second, n)


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


def test_pause_holds_back_every_process_sharing_the_key(clean_redis: str) -> None:
    """A 429's Retry-After applies to the account: another limiter on the key is refused at
    once for as long as it lasts (no thread sleeps it out), then grants at the rate again."""
    one = RateLimiter(redis.Redis.from_url(clean_redis), KEY, rate=100)
    other = RateLimiter(redis.Redis.from_url(clean_redis), KEY, rate=100)
    one.pause(0.5)
    started = time.monotonic()
    with pytest.raises(LimiterBusy) as info:
        other.reserve(max_wait=5)
    assert info.value.retry_after == pytest.approx(0.5, abs=0.05)
    assert time.monotonic() - started < 0.1
    # A shorter pause never shortens a longer one.
    one.pause(0.1)
    with pytest.raises(LimiterBusy) as info:
        other.reserve(max_wait=5)
    assert info.value.retry_after > 0.4
    time.sleep(info.value.retry_after)
    assert other.reserve(max_wait=5) < 0.05


def test_a_429_through_the_client_pauses_the_account(clean_redis: str) -> None:
    import respx

    from app.upstream.iamport import IamportClient, RateLimited

    r = redis.Redis.from_url(clean_redis)
    limiter = RateLimiter(r, KEY, rate=100)
    with respx.mock(base_url="https://iamport.test") as mock:
        mock.post("/users/getToken").respond(
            json={
                "code": 0,
                "message": None,
                "response": {"access_token": "t", "now": 1, "expired_at": 9999999999},
            }
        )
        mock.get("/payments/imps_1").respond(429, headers={"Retry-After": "2"})
        client = IamportClient(
            base_url="https://iamport.test",
            imp_key="k",
            imp_secret="s",
            timeout=2,
            tokens=None,
            limiter=limiter,
            redis_client=r,
        )
        with pytest.raises(RateLimited) as info:
            client.look_up("imps_1")
        client.close()
    assert info.value.retry_after == 2
    # Any process's next call is now refused for the Retry-After's time.
    with pytest.raises(LimiterBusy) as busy:
        RateLimiter(r, KEY, rate=100).reserve(max_wait=5)
    assert busy.value.retry_after == pytest.approx(2, abs=0.1)


def test_a_high_rate_takes_its_grants_a_block_a_round_trip(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    limiter = RateLimiter(r, KEY, rate=100_000)
    assert limiter.block == 16
    r.config_resetstat()
    waits = [limiter.acquire(1.0) for _ in range(160)]
    calls = int(r.info("commandstats")["cmdstat_evalsha"]["calls"])
    assert calls == 10 and max(waits) < 0.01
    # The default rate still takes one grant a round trip: nothing is held.
    assert RateLimiter(r, KEY + ":default", rate=20).block == 1


def test_a_pause_drops_the_grants_a_process_holds(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    limiter = RateLimiter(r, KEY, rate=400)  # burst 40, blocks of 10
    assert limiter.block == 10 and limiter.reserve(5) == 0  # nine more are held
    limiter.pause(1.0)
    with pytest.raises(LimiterBusy) as info:
        limiter.reserve(5)
    assert info.value.retry_after == pytest.approx(1.0, abs=0.05)


def test_held_grants_honour_max_wait_and_lapse(
    clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.upstream import ratelimit

    r = redis.Redis.from_url(clean_redis)
    limiter = RateLimiter(r, KEY, rate=400, burst=40)  # blocks of 10, 2.5 ms apart
    limiter.pause(0.0)  # the burst is spent: from here on, grants are 2.5 ms apart
    assert limiter.reserve(max_wait=1.0) < 0.0025
    with pytest.raises(LimiterBusy) as info:
        limiter.reserve(max_wait=0.0)  # the next held one is not due yet
    assert 0 < info.value.retry_after <= 0.0025
    monkeypatch.setattr(ratelimit, "SLOT_LAPSE", 0.05)
    time.sleep(0.1)  # every held slot is now past its time by more than the lapse
    r.config_resetstat()
    limiter.reserve(5)
    assert int(r.info("commandstats")["cmdstat_evalsha"]["calls"]) == 1
