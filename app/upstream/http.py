"""One observed HTTP exchange with a gateway, the part every gateway client shares.

local rate limiter -> observer.before_send -> HTTP (one total deadline for connect, send and
receive, and a cap on the body) -> the client's reading of the answer -> record ->
observer.after_call. What an answer means differs by gateway, so each client passes its own
`read`; how the bytes are fetched, bounded and recorded does not. Nothing here logs, and no
credential reaches an exception, a repr or a record.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import redis

from app import tracing
from app.kit.deadline import deadline_scope, deadline_transport
from app.upstream.contract import CallObserver, CallRecord
from app.upstream.errors import GatewayError, NotSent, OutcomeUnknown, RateLimited, Unavailable
from app.upstream.guard import Blocked, Guard
from app.upstream.ratelimit import LimiterBusy, RateLimiter

DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 3600.0
MESSAGE_LIMIT = 500
MAX_BODY_BYTES = 1 << 20  # a payment is a few KiB; more than this is not the gateway answering
GATEWAY_STATUSES = (502, 503, 504)  # said by whatever stands in front of the gateway
BASE_HEADERS = {"Accept": "application/json", "User-Agent": "stockout-cancel"}
# A query: a mapping, or pairs where a name repeats (iamport's `imp_uid[]=a&imp_uid[]=b`).
Params = Mapping[str, str] | httpx.QueryParams


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP-date); 1 s if absent."""
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Failure(Exception):
    """A classified failed exchange, raised as its GatewayError once it is recorded.

    `message` is what the record shows when the gateway said something of its own that the
    error does not carry (the error may say "malformed response object" instead).
    """

    def __init__(self, outcome: str, error: GatewayError, message: str | None = None) -> None:
        self.outcome = outcome
        self.error = error
        self.message = message


@dataclass(frozen=True, slots=True)
class Reading:
    """A successful answer as the client read it, with what its record shows."""

    answer: Any
    code: int | None = None
    message: str | None = None


Read = Callable[[httpx.Response, bytes], Reading]


class _BodyTooLarge(Exception):
    """The answer's body passed MAX_BODY_BYTES."""


class _DeadlinePassed(Exception):
    """The exchange's total deadline passed while the body was arriving."""


class Exchanger:
    """Sends one request at a time over a shared, thread-safe httpx transport (one pool)."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float,
        headers: dict[str, str],
        limiter: RateLimiter | None = None,
        rate_limit_max_wait: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        gateway: str = "iamport",
        guard: Guard | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._guard = guard
        self.timeout = timeout
        self.gateway = gateway
        self._headers = headers
        self._limiter = limiter
        self._max_wait = rate_limit_max_wait
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        # httpx's transport, not its Client: what the Client adds to each request (a base URL
        # merge, cookie jars, auth and redirect flows, hooks) cost a third of a call's CPU in
        # the worker's profile, and none of it is wanted: one base URL, no cookies, no
        # redirects.
        self._transport = transport if transport is not None else deadline_transport(limits)

    def close(self) -> None:
        self._transport.close()

    def pause_everyone(self, seconds: float) -> None:
        """After a 429: every process of this account waits, not only the call that got it."""
        if self._guard is not None:
            self._guard.pause(seconds)
        if self._limiter is None:
            return
        # Best effort: the failing call still waits; others would find out from their own 429s.
        with contextlib.suppress(redis.RedisError):
            self._limiter.pause(seconds)

    def exchange(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        read: Read,
        *,
        params: Params | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One guarded, rate-limited, observed exchange: `read`'s answer, or the GatewayError it
        meant. Traced, it is a span of its own (the guard, the limiter's wait, the HTTP call's
        span, the outcome); its attributes name the call, never a credential or the body."""
        args = (call, method, path, observer, read, params, json, headers)
        if not tracing.ACTIVE:
            return self._guarded(*args)
        with tracing.span(f"{self.gateway} {call}", {"stockout.call": call}):
            return self._guarded(*args)

    def _guarded(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        read: Read,
        params: Params | None,
        json: Any,
        headers: dict[str, str] | None,
    ) -> Any:
        args = (call, method, path, observer, read, params, json, headers)
        if self._guard is None:
            return self._once(*args)
        try:
            trial = self._guard.enter()
        except Blocked as blocked:
            raise RateLimited(
                call, retry_after=blocked.retry_after, message=blocked.why, gateway=self.gateway
            ) from None
        outcome: list[str] = []
        try:
            return self._once(*args, outcome)
        finally:
            self._guard.leave(outcome[-1] if outcome else None, trial)

    def _once(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        read: Read,
        params: Params | None,
        json: Any,
        headers: dict[str, str] | None,
        outcome: list[str] | None = None,
    ) -> Any:
        self._acquire(call)
        if observer is not None:
            observer.before_send(call)
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        deadline = time.monotonic() + self.timeout
        http_status: int | None = None
        try:
            response, content = self._fetch(call, method, path, params, json, headers, deadline)
            http_status = response.status_code
            reading = read(response, content)
        except Failure as failure:
            error = failure.error
            if error.http_status is None and http_status is not None:
                error.http_status = http_status
            message = failure.message if failure.message is not None else error.message
            status, code = error.http_status, error.code
            if outcome is not None:
                outcome.append(failure.outcome)
            record(observer, call, started_at, started, status, code, message, failure.outcome)
            raise error from failure.__cause__
        code, message = reading.code, reading.message
        if outcome is not None:
            outcome.append("ok")
        record(observer, call, started_at, started, http_status, code, message, "ok")
        return reading.answer

    def _acquire(self, call: str) -> None:
        if self._limiter is None:
            return
        try:
            self._limiter.acquire(self._max_wait)
        except LimiterBusy as busy:
            raise RateLimited(
                call, retry_after=busy.retry_after, message="local rate limit", gateway=self.gateway
            ) from None
        except redis.RedisError:
            # Without the shared bucket we cannot know the global rate: hold back.
            raise RateLimited(
                call,
                retry_after=DEFAULT_RETRY_AFTER,
                message="rate limiter unreachable",
                gateway=self.gateway,
            ) from None

    def _fetch(
        self,
        call: str,
        method: str,
        path: str,
        params: Params | None,
        json: Any,
        headers: dict[str, str] | None,
        deadline: float,
    ) -> tuple[httpx.Response, bytes]:
        """The response and its body, or a Failure saying whether anything can have applied."""
        g = self.gateway
        try:
            with deadline_scope(deadline):
                return self._send(method, path, params, json, headers, deadline)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # No connection, so no byte of the request left us: nothing can apply.
            raise Failure("not_sent", NotSent(call, message=kind(exc), gateway=g)) from exc
        except _DeadlinePassed as exc:
            error = OutcomeUnknown(call, message="deadline passed", gateway=g)
            raise Failure("timeout", error) from exc
        except httpx.TimeoutException as exc:
            raise Failure("timeout", OutcomeUnknown(call, message=kind(exc), gateway=g)) from exc
        except httpx.TransportError as exc:
            error = OutcomeUnknown(call, message=kind(exc), gateway=g)
            raise Failure("connection_error", error) from exc
        except httpx.HTTPError as exc:
            raise Failure("bad_response", Unavailable(call, message=kind(exc), gateway=g)) from exc
        except _BodyTooLarge as exc:
            too_large = Unavailable(
                call, http_status=exc.args[0], message="response body too large", gateway=g
            )
            raise Failure("bad_response", too_large) from None

    def _send(
        self,
        method: str,
        path: str,
        params: Params | None,
        json: Any,
        headers: dict[str, str] | None,
        deadline: float,
    ) -> tuple[httpx.Response, bytes]:
        """The response and at most MAX_BODY_BYTES of its body, all by `deadline`."""
        left = max(deadline - time.monotonic(), 0.001)
        request = httpx.Request(
            method,
            self.base_url + path,
            params=params,
            json=json,
            headers=self._headers if headers is None else {**self._headers, **headers},
            extensions={"timeout": httpx.Timeout(left).as_dict()},
        )
        response = self._transport.handle_request(request)
        response.request = request
        try:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _BodyTooLarge(response.status_code)
                chunks.append(chunk)
                # The socket reads are bounded by the deadline too; this covers any transport.
                if time.monotonic() > deadline:
                    raise _DeadlinePassed
            return response, b"".join(chunks)
        finally:
            response.close()


def record(
    observer: CallObserver | None,
    call: str,
    started_at: datetime,
    started: float,
    http_status: int | None,
    code: int | None,
    message: str | None,
    outcome: str,
) -> None:
    """Hand the exchange's record to the observer, timed from `started` (perf_counter)."""
    if tracing.ACTIVE:
        tracing.annotate_current(
            **{"stockout.outcome": outcome, "http.response.status_code": http_status}
        )
    if observer is None:
        return
    duration_ms = int((time.perf_counter() - started) * 1000)
    observer.after_call(
        CallRecord(call, started_at, duration_ms, http_status, code, message, outcome)
    )


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Upstream text cut to MESSAGE_LIMIT, with any of `secrets` in it masked."""
    text = text[:MESSAGE_LIMIT]
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


def number(value: float) -> float | int:
    """An amount as JSON: a whole number without a fraction."""
    return int(value) if float(value).is_integer() else value


def json_object(content: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None for anything else (HTML, malformed, a list...)."""
    if not content:
        return None
    try:
        body = json.loads(content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def kind(exc: Exception) -> str:
    """An exception's class name: httpx messages may echo URLs, so keep only the kind."""
    return type(exc).__name__
