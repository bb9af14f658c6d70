"""The shared iamport token against real Redis and a real sandbox: one getToken, not a stampede."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any, cast

import pytest
import redis

from app.upstream.errors import NotSent
from app.upstream.iamport import IamportClient, TokenProvider, TokenResponse
from app.upstream.iamport.token import key_id
from devtools.sandbox.control import SandboxControl
from tests.support.processes import wait_until
from tests.support.sandbox import IMP_KEY, IMP_SECRET

PROCESSES = 4
THREADS = 16


def _lookups(client: IamportClient, imp_uid: str, barrier: threading.Barrier) -> list[str]:
    """THREADS threads look the payment up at once; returns the errors they hit."""
    errors: list[str] = []

    def one() -> None:
        barrier.wait()
        try:
            assert client.look_up(imp_uid).imp_uid == imp_uid
        except Exception as exc:  # reported to the parent
            errors.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def token_worker(base_url: str, redis_url: str, imp_uid: str, phases: Any, results: Any) -> None:
    """One process of the stampede: phase 1 cold start, then (tokens expired) phase 2."""
    client = IamportClient(
        base_url=base_url,
        imp_key=IMP_KEY,
        imp_secret=IMP_SECRET,
        timeout=10,
        limiter=None,
        redis_client=redis.Redis.from_url(redis_url),
    )
    errors: list[str] = []
    for _ in range(2):
        phases.wait()  # every process ready (and, before phase 2, tokens expired)
        errors += _lookups(client, imp_uid, threading.Barrier(THREADS))
        phases.wait()  # phase done everywhere
    results.put(errors)
    client.close()


def test_many_threads_in_many_processes_share_one_token(
    sandbox: SandboxControl, clean_redis: str
) -> None:
    imp_uid = sandbox.create_payment()["imp_uid"]
    ctx = multiprocessing.get_context("spawn")
    phases = ctx.Barrier(PROCESSES + 1, timeout=60)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=token_worker, args=(sandbox.base_url, clean_redis, imp_uid, phases, results)
        )
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        phases.wait()  # phase 1 starts
        phases.wait()  # phase 1 done
        calls = sandbox.calls()
        assert [c["call"] for c in calls].count("token") == 1
        assert [c["call"] for c in calls].count("lookup") == PROCESSES * THREADS
        seen = len(calls)
        sandbox.expire_tokens()
        phases.wait()  # phase 2 starts
        phases.wait()  # phase 2 done
        errors = [results.get(timeout=30) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert errors == [[]] * PROCESSES
    later = sandbox.calls(since=seen)
    assert [c["call"] for c in later].count("token") == 1
    lookups = [c for c in later if c["call"] == "lookup"]
    assert sum(c["status_code"] == 401 for c in lookups) >= PROCESSES  # each process saw 401s
    assert sum(c["status_code"] == 200 for c in lookups) == PROCESSES * THREADS


# -- the provider's rules, with a scripted getToken ----------------------------------------


class Fetcher:
    def __init__(self, lifetime: int = 1800, skew: int = 0, delay: float = 0.0) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.skew = skew
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, observer: Any = None) -> TokenResponse:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        now = int(time.time()) + self.skew
        return TokenResponse(access_token=f"tok{n}", now=now, expired_at=now + self.lifetime)


def provider(r: redis.Redis, fetch: Fetcher, **kw: Any) -> TokenProvider:
    return TokenProvider(r, fetch, key_id(IMP_KEY), **kw)


def test_token_is_shared_through_redis_under_a_hashed_key(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    fetch = Fetcher()
    a, b = provider(r, fetch), provider(r, fetch)
    assert a.get() == "tok1" and b.get() == "tok1" and a.get() == "tok1"
    assert fetch.calls == 1
    keys = sorted(k.decode() for k in cast(list[bytes], r.keys("*")))
    # The lock was released; the token, and the clock skew measured with it, remain.
    assert keys == [f"iamport:clock-skew:{key_id(IMP_KEY)}", f"iamport:token:{key_id(IMP_KEY)}"]
    assert all(IMP_KEY not in k for k in keys)
    for k in keys:
        assert 1790 <= r.ttl(k) <= 1800  # they expire with iamport's token


@pytest.mark.parametrize("skew", [0, 45, -45])
def test_the_clock_skew_is_measured_and_shared_with_the_token(clean_redis: str, skew: int) -> None:
    r = redis.Redis.from_url(clean_redis)
    fetch = Fetcher()
    fetch.skew = skew
    a, b = provider(r, fetch), provider(r, fetch)
    assert a.skew is None
    a.get()
    b.get()  # adopts a's token from Redis, and with it a's measure of iamport's clock
    assert fetch.calls == 1
    for p in (a, b):
        assert p.skew is not None and abs(p.skew - skew) <= 1.1  # iamport's now: whole seconds


def test_expiry_is_corrected_for_iamport_clock(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    fetch = Fetcher(skew=-3600)  # iamport's clock an hour behind ours
    p = provider(r, fetch)
    p.get()
    p.get()
    assert fetch.calls == 1
    assert 1790 <= r.ttl(f"iamport:token:{key_id(IMP_KEY)}") <= 1800


def test_refresh_inside_margin_is_not_a_storm(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    fetch = Fetcher(lifetime=100)  # already inside the 120 s margin when it arrives
    p = provider(r, fetch)
    for _ in range(50):
        assert p.get() == "tok1"
    assert fetch.calls == 1


def test_invalidate_replaces_only_the_stale_token(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    fetch = Fetcher()
    a, b = provider(r, fetch), provider(r, fetch)
    assert a.get() == b.get() == "tok1"
    assert a.invalidate("tok1") == "tok2"
    assert b.invalidate("tok1") == "tok2"  # adopts what a stored: compare-and-refresh
    assert a.invalidate("tok1") == "tok2"
    assert fetch.calls == 2


def test_waiter_falls_back_when_the_lock_holder_is_gone(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    r.set(f"iamport:token-lock:{key_id(IMP_KEY)}", "someone-dead", px=60_000)
    fetch = Fetcher()
    started = time.monotonic()
    assert provider(r, fetch, wait_timeout=0.3).get() == "tok1"
    assert 0.3 <= time.monotonic() - started < 2 and fetch.calls == 1


def test_redis_down_falls_back_to_this_process() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    fetch = Fetcher()
    p = provider(dead, fetch)
    assert p.get() == "tok1" and p.get() == "tok1" and fetch.calls == 1


def test_threads_of_one_process_fetch_once(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    fetch = Fetcher(delay=0.2)
    p = provider(r, fetch)
    barrier = threading.Barrier(32)
    got: list[str] = []

    def one() -> None:
        barrier.wait()
        got.append(p.get())

    threads = [threading.Thread(target=one) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["tok1"] * 32 and fetch.calls == 1


def test_failed_refresh_keeps_the_valid_token_and_backs_off(clean_redis: str) -> None:
    r = redis.Redis.from_url(clean_redis)
    fetch = Fetcher(lifetime=100)  # due for refresh 10 s after it arrives
    p = provider(r, fetch)
    assert p.get() == "tok1"
    r.flushall()
    failures = 0

    def broken(observer: Any = None) -> TokenResponse:
        nonlocal failures
        failures += 1
        raise RuntimeError("iamport down")

    p._fetch = broken
    p._local = p._local._replace(refresh_at=time.time() - 1)  # type: ignore[union-attr]
    assert [p.get() for _ in range(20)] == ["tok1"] * 20
    assert failures == 1


def test_threads_waiting_for_a_failing_refresh_share_its_failure(clean_redis: str) -> None:
    """A getToken that hangs to its timeout is one timeout for every thread that waited for
    it, not one apiece in turn (each holding a job thread meanwhile)."""
    r = redis.Redis.from_url(clean_redis)
    fetches = 0
    lock = threading.Lock()

    def hanging(observer: Any = None) -> TokenResponse:
        nonlocal fetches
        with lock:
            fetches += 1
        time.sleep(0.3)
        raise TimeoutError("getToken timed out")

    p = provider(r, Fetcher())
    p._fetch = hanging
    barrier = threading.Barrier(8)
    errors: list[Exception] = []

    def one() -> None:
        barrier.wait()
        try:
            p.get()
        except TimeoutError as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 8 and fetches == 1
    assert time.monotonic() - started < 0.3 * 3  # one timeout, not eight in a row
    p._fetch = Fetcher()
    wait_until(lambda: not r.exists(f"iamport:token-failed:{key_id(IMP_KEY)}"), 3, "the hold")
    assert p.get() == "tok1"  # a thread that comes after the failure's hold tries again


def test_a_failed_get_token_is_every_process_answer_for_a_moment(clean_redis: str) -> None:
    """Processes that wait for, or come after, a getToken that failed do not each try in turn
    (a hanging gateway would cost a timeout per process, each holding its threads)."""
    r = redis.Redis.from_url(clean_redis)
    a, b = provider(r, Fetcher()), provider(r, Fetcher())

    def down(observer: Any = None) -> TokenResponse:
        raise TimeoutError("getToken timed out")

    a._fetch = down
    with pytest.raises(TimeoutError):
        a.get()
    fetch_b = Fetcher()
    b._fetch = fetch_b
    with pytest.raises(NotSent):
        b.get()
    assert fetch_b.calls == 0  # nothing was sent for it
    wait_until(lambda: not r.exists(f"iamport:token-failed:{key_id(IMP_KEY)}"), 3, "the hold")
    assert b.get() == "tok1" and fetch_b.calls == 1


def test_a_holder_that_died_costs_one_call_time_not_the_lock_s(
    sandbox: SandboxControl, clean_redis: str
) -> None:
    """A worker killed inside getToken leaves its lock behind. The next process's call waits
    for it no longer than a getToken may take, so the job it serves keeps its lease (a 2 s
    call's lease is 9 s; the lock's old fixed 30 s TTL and 15 s wait outlived it)."""
    r = redis.Redis.from_url(clean_redis)
    imp_uid = sandbox.create_payment()["imp_uid"]
    client = IamportClient(
        base_url=sandbox.base_url,
        imp_key=IMP_KEY,
        imp_secret=IMP_SECRET,
        timeout=2,
        rate_limit_max_wait=1,
        redis_client=r,
    )
    lock = f"iamport:token-lock:{key_id(IMP_KEY)}"
    r.set(lock, "a-worker-killed-mid-getToken", px=60_000)
    try:
        started = time.monotonic()
        assert client.look_up(imp_uid).imp_uid == imp_uid
        took = time.monotonic() - started
        r.delete(lock, f"iamport:token:{key_id(IMP_KEY)}")
        # A live holder's lock lasts as long as its getToken may: limiter wait + deadline + 1.
        seen: list[int] = []
        real_fetch = client.fetch_token

        def fetch_watching(observer: Any = None) -> TokenResponse:
            seen.append(int(r.pttl(lock)))
            return real_fetch(observer)

        tokens = cast(TokenProvider, client.tokens)
        tokens._fetch = fetch_watching
        tokens._local = None
        tokens.get()
    finally:
        client.close()
    assert 3.0 <= took < 5.0, took
    assert len(seen) == 1 and 3_000 < seen[0] <= 4_000, seen
