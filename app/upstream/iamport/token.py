"""One iamport access token per account, shared by every thread and process through Redis.

The common path reads an in-process cache and touches neither Redis nor iamport. When the
token nears its expiry (or a call got a 401 with it), one thread per process goes to Redis, and
one process at a time holds the refresh lock and calls getToken; the others poll Redis briefly
for the token it stores. If Redis is unreachable we fall back to this process alone: iamport
hands out the same token to everyone anyway, so correctness does not depend on the sharing.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import redis

from app.upstream.errors import NotSent
from app.upstream.iamport.schemas import TokenResponse

if TYPE_CHECKING:
    from app.upstream.contract import CallObserver

TokenFetch = Callable[["CallObserver | None"], TokenResponse]

# Compare-and-delete: release the lock only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# iamport answers with the same token and expiry until under a minute is left; asking again
# sooner is pointless, so a token that is already inside the refresh margin is re-asked for no
# more often than this.
_MIN_REFETCH_SECONDS = 10.0
# After a failed routine refresh, keep using the valid token this long before trying again.
_RETRY_REFRESH_SECONDS = 5.0
# A getToken that failed is the answer, for this long, of every process that waited for it or
# comes for one: an account whose gateway hangs costs one timeout per second, not one per
# process in turn while each holds its job threads.
_FAILED_HOLD_MS = 1000
# Never use a token closer than this to its expiry.
_SAFETY_SECONDS = 5.0


def key_id(imp_key: str) -> str:
    """A stable, non-reversible name for an account: never put the key itself in Redis."""
    return hashlib.sha256(imp_key.encode()).hexdigest()[:24]


class _Token(NamedTuple):
    value: str
    expires_at: float  # local epoch seconds, corrected for iamport's clock
    refresh_at: float  # local epoch seconds

    def usable(self, now: float) -> bool:
        return now < self.expires_at - _SAFETY_SECONDS

    def encode(self) -> str:
        return f"{self.expires_at!r} {self.refresh_at!r} {self.value}"

    @classmethod
    def decode(cls, raw: bytes | str | None) -> _Token | None:
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            expires, refresh, value = text.split(" ", 2)
            return cls(value, float(expires), float(refresh))
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"_Token(value='***', expires_at={self.expires_at}, refresh_at={self.refresh_at})"


class TokenProvider:
    """Hands out the shared token; `invalidate(stale)` replaces a token iamport refused."""

    def __init__(
        self,
        redis_client: redis.Redis | None,
        fetch: TokenFetch,
        key_id: str,
        refresh_margin: float = 120,
        *,
        lock_ttl: float = 30.0,
        wait_timeout: float = 15.0,
        poll_interval: float = 0.01,
    ) -> None:
        self._redis = redis_client
        self._fetch = fetch
        self._key = f"iamport:token:{key_id}"
        self._skew_key = f"iamport:clock-skew:{key_id}"
        # iamport's clock minus ours, in seconds, as the last getToken showed it (its `now`,
        # whole seconds, against our clock when the answer came); None until known.
        self.skew: float | None = None
        self._lock_key = f"iamport:token-lock:{key_id}"
        self._failed_key = f"iamport:token-failed:{key_id}"
        self._margin = refresh_margin
        self._lock_ttl_ms = int(lock_ttl * 1000)
        self._wait_timeout = wait_timeout
        self._poll = poll_interval
        self._local: _Token | None = None
        self._mutex = threading.Lock()
        # The last refresh that failed: when it ended, and how. Threads that queued for it
        # take its answer, as they would a token, instead of each failing in turn while they
        # hold their job threads (a gateway that hangs would hold them one timeout apiece).
        self._failed: tuple[float, Exception] | None = None
        self._release = redis_client.register_script(_RELEASE) if redis_client else None

    def __repr__(self) -> str:
        return f"TokenProvider(key={self._key!r})"

    def get(self, observer: CallObserver | None = None) -> str:
        """The current token, refreshed first if it is due."""
        local = self._local
        if local is not None and time.time() < local.refresh_at:
            return local.value
        arrived = time.monotonic()
        with self._mutex:
            local = self._local
            now = time.time()
            if local is not None and now < local.refresh_at:
                return local.value
            try:
                self._raise_if_failed_since(arrived)
                return self._refresh_once(lambda t: time.time() < t.refresh_at, observer)
            except Exception:
                # iamport or Redis failed during a routine refresh: a still-valid token beats
                # none (the refresh margin exists for exactly this). Try again in a while, not
                # on every call: the calls would queue behind each failing refresh.
                now = time.time()
                if local is not None and local.usable(now):
                    retry_at = min(now + _RETRY_REFRESH_SECONDS, local.expires_at - _SAFETY_SECONDS)
                    self._local = local._replace(refresh_at=retry_at)
                    return local.value
                raise

    def invalidate(self, stale: str, observer: CallObserver | None = None) -> str:
        """A fresh token to replace `stale`, which iamport refused; one refresh per stale token."""
        arrived = time.monotonic()
        with self._mutex:
            local = self._local
            if local is not None and local.value != stale and local.usable(time.time()):
                return local.value
            self._raise_if_failed_since(arrived)
            return self._refresh_once(
                lambda t: t.value != stale and t.usable(time.time()), observer
            )

    def _raise_if_failed_elsewhere(self) -> None:
        """Another process's getToken just failed: that is this call's answer too (it was not
        sent; the job tries again later)."""
        assert self._redis is not None
        if self._redis.exists(self._failed_key):
            raise NotSent("token", message="this account's getToken failed a moment ago")

    def _raise_if_failed_since(self, arrived: float) -> None:
        """The refresh this thread waited for failed: its failure is this thread's answer."""
        failed = self._failed
        if failed is not None and failed[0] >= arrived:
            raise failed[1]

    def _refresh_once(self, good: Callable[[_Token], bool], observer: CallObserver | None) -> str:
        try:
            return self._refresh(good, observer)
        except Exception as exc:
            self._failed = (time.monotonic(), exc)
            raise

    def _refresh(
        self,
        good: Callable[[_Token], bool],
        observer: CallObserver | None,
    ) -> str:
        """Adopt a `good` token from Redis, or become the one process that fetches it."""
        if self._redis is None:
            return self._store_local(self._fetch_token(observer))
        try:
            shared = _Token.decode(self._redis.get(self._key))
            if shared is not None and good(shared):
                return self._adopt(shared)
            self._raise_if_failed_elsewhere()
            deadline = time.monotonic() + self._wait_timeout
            while True:
                lock = secrets.token_hex(16)
                if self._redis.set(self._lock_key, lock, nx=True, px=self._lock_ttl_ms):
                    try:
                        # Someone may have stored a token between our read and our lock.
                        shared = _Token.decode(self._redis.get(self._key))
                        if shared is not None and good(shared):
                            return self._adopt(shared)
                        try:
                            token = self._fetch_token(observer)
                        except Exception:
                            with contextlib.suppress(redis.RedisError):
                                self._redis.set(self._failed_key, "1", px=_FAILED_HOLD_MS)
                            raise
                        self._local = token
                        ttl_ms = int((token.expires_at - time.time()) * 1000)
                        if ttl_ms > 0:
                            with contextlib.suppress(redis.RedisError):
                                self._redis.set(self._key, token.encode(), px=ttl_ms)
                                if self.skew is not None:
                                    # Beside the token, not in it: processes that adopt the
                                    # token measure no skew of their own.
                                    self._redis.set(self._skew_key, repr(self.skew), px=ttl_ms)
                        return token.value
                    finally:
                        assert self._release is not None
                        with contextlib.suppress(redis.RedisError):
                            self._release(keys=[self._lock_key], args=[lock])
                # Another process is fetching: wait for what it stores.
                while time.monotonic() < deadline:
                    time.sleep(self._poll)
                    shared = _Token.decode(self._redis.get(self._key))
                    if shared is not None and good(shared):
                        return self._adopt(shared)
                    self._raise_if_failed_elsewhere()
                    if not self._redis.exists(self._lock_key):
                        break  # the holder gave up or died: try to take the lock ourselves
                else:
                    # Bounded wait is over: fetch for ourselves (iamport returns the same token).
                    return self._store_local(self._fetch_token(observer))
        except redis.RedisError:
            return self._store_local(self._fetch_token(observer))

    def _adopt(self, shared: _Token) -> str:
        """Use a token another process fetched, and the clock skew it measured."""
        self._local = shared
        if self.skew is None and self._redis is not None:
            with contextlib.suppress(redis.RedisError, ValueError, TypeError):
                raw = self._redis.get(self._skew_key)
                if raw is not None:
                    self.skew = float(raw.decode() if isinstance(raw, bytes) else raw)
        return shared.value

    def _store_local(self, token: _Token) -> str:
        self._local = token
        return token.value

    def _fetch_token(self, observer: CallObserver | None) -> _Token:
        answer = self._fetch(observer)
        now = time.time()
        self.skew = float(answer.now) - now
        # Correct for clock skew: iamport's "now" and "expired_at" share iamport's clock.
        expires_at = now + (answer.expired_at - answer.now)
        refresh_at = expires_at - self._margin
        if refresh_at < now + _MIN_REFETCH_SECONDS:
            refresh_at = min(now + _MIN_REFETCH_SECONDS, expires_at - _SAFETY_SECONDS)
        return _Token(answer.access_token, expires_at, refresh_at)
