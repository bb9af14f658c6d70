"""iamport V1, the first gateway of the upstream contract: typed answers, typed errors, shared
token and rate.

Every exchange goes: token -> local rate limiter -> observer.before_send -> HTTP (one total
deadline for connect, send and receive, and a cap on the body) -> classify -> record ->
observer.after_call -> return or raise. Errors say what the caller must do (errors.py); the
caller keeps the CallRecords as its attempt history. Nothing here logs, and no credential or
token ever reaches an exception, a repr or a record.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx
import redis
from pydantic import ValidationError

from app import tracing
from app.kit.deadline import deadline_scope, deadline_transport
from app.upstream.accounts import Account, default_account
from app.upstream.contract import CallObserver, CallRecord
from app.upstream.errors import (
    GatewayError,
    NotFound,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Refused,
    ServerError,
    Unauthorized,
    Unavailable,
)
from app.upstream.guard import Blocked, Guard
from app.upstream.iamport.schemas import TokenResponse
from app.upstream.iamport.token import TokenProvider, key_id
from app.upstream.payment import Payment
from app.upstream.ratelimit import LimiterBusy, RateLimiter

if TYPE_CHECKING:
    from app.config import Settings

DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 3600.0
_MESSAGE_LIMIT = 500
MAX_BODY_BYTES = 1 << 20  # a Payment is a few KiB; more than this is not iamport answering
_GATEWAY_STATUSES = (502, 503, 504)  # said by whatever stands in front of iamport
_HEADERS = {"Accept": "application/json", "User-Agent": "stockout-cancel"}


class TokenSource(Protocol):
    """What the client needs of a token provider (TokenProvider is the real one)."""

    def get(self, observer: CallObserver | None = None) -> str: ...

    def invalidate(self, stale: str, observer: CallObserver | None = None) -> str: ...


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


class _BodyTooLarge(Exception):
    """Internal: the answer's body passed MAX_BODY_BYTES."""


class _DeadlinePassed(Exception):
    """Internal: the exchange's total deadline passed while the body was arriving."""


class _Failure(Exception):
    """Internal: a classified failed exchange, turned into an GatewayError after recording."""

    def __init__(self, outcome: str, error: GatewayError) -> None:
        self.outcome = outcome
        self.error = error


class IamportClient:
    """iamport's REST API over one shared, thread-safe httpx transport (one connection pool)."""

    def __init__(
        self,
        *,
        base_url: str,
        imp_key: str,
        imp_secret: str,
        timeout: float,
        tokens: TokenSource | None = None,
        limiter: RateLimiter | None = None,
        rate_limit_max_wait: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        include_sandbox: bool = False,
        redis_client: redis.Redis | None = None,
        tier: str | None = None,
        tokens_key: str | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._imp_key = imp_key
        # An agency's sub-merchant: the `Tier` header goes on every call, getToken included.
        self._headers = {**_HEADERS, "Tier": tier} if tier else _HEADERS
        self._imp_secret = imp_secret
        self._secrets = tuple(s for s in (imp_key, imp_secret) if s)
        self._limiter = limiter
        self._guard = guard
        self._max_wait = rate_limit_max_wait
        self._lookup_params = {"include_sandbox": "true"} if include_sandbox else None
        self._timeout = timeout
        self._base_url = base_url.rstrip("/")
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        # httpx's transport, not its Client: what the Client adds to each request (a base URL
        # merge, cookie jars, auth and redirect flows, hooks) cost a third of a call's CPU in
        # the worker's profile, and none of it is wanted: one base URL, no cookies, no
        # redirects.
        self._transport = transport if transport is not None else deadline_transport(limits)
        self.tokens: TokenSource = (
            tokens
            if tokens is not None
            else TokenProvider(redis_client, self.fetch_token, tokens_key or key_id(imp_key))
        )

    def clock_skew(self) -> float | None:
        """iamport's clock minus ours in seconds, as the token exchange measured it; None if not
        known (a token source that does not measure it)."""
        skew = getattr(self.tokens, "skew", None)
        return float(skew) if isinstance(skew, int | float) else None

    @classmethod
    def from_settings(cls, settings: Settings, redis: redis.Redis) -> IamportClient:
        """The client of the `default` account the IAMPORT_* variables make."""
        if settings.iamport_imp_key is None or settings.iamport_imp_secret is None:
            raise RuntimeError("IAMPORT_IMP_KEY and IAMPORT_IMP_SECRET must be set")
        return cls.for_account(default_account(settings), settings, redis)

    @classmethod
    def for_account(
        cls,
        account: Account,
        settings: Settings,
        redis: redis.Redis,
        guard: Guard | None = None,
    ) -> IamportClient:
        """A process's client for one v1 account: its own token, rate limit and 429 pause,
        shared by the account's clients in every process through `redis`, and by no other
        account's (one account's 429s or 401s never pause or refresh another's)."""
        secret = account.secret("imp_secret")
        if account.api != "v1" or account.imp_key is None or secret is None:
            raise RuntimeError(f"account {account.name} is not a v1 account with its credentials")
        imp_key = account.imp_key.get_secret_value()
        # The account's name and tier are in the key: an agency's sub-merchants share the
        # imp_key but not their tokens' fate.
        name = key_id(f"{imp_key}\n{account.name}\n{account.tier or ''}")
        limiter = RateLimiter(redis, f"iamport:rate:{name}", account.max_rps)
        return cls(
            base_url=account.base_url,
            imp_key=imp_key,
            imp_secret=secret,
            timeout=settings.iamport_timeout_seconds,
            tokens_key=name,
            limiter=limiter,
            rate_limit_max_wait=settings.rate_limit_max_wait_seconds,
            redis_client=redis,
            tier=account.tier,
            guard=guard,
        )

    def __repr__(self) -> str:
        return f"IamportClient(base_url={self._base_url!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._transport.close()

    # -- calls ---------------------------------------------------------------------------

    def fetch_token(self, observer: CallObserver | None = None) -> TokenResponse:
        """POST /users/getToken: a token for our credentials (use `tokens.get()` instead)."""
        body = {"imp_key": self._imp_key, "imp_secret": self._imp_secret}
        answer: TokenResponse = self._exchange(
            "token", "POST", "/users/getToken", observer, None, _token_answer, json=body
        )
        return answer

    def look_up(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        """GET /payments/{imp_uid}: the payment as iamport knows it now."""
        path = "/payments/" + quote(imp_uid, safe="")
        answer: Payment = self._authed(
            "lookup", "GET", path, observer, _payment, params=self._lookup_params
        )
        return answer

    def void_barcode(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        """DELETE /cvs/{imp_uid}: void an unpaid barcode; the cancelled Payment on success."""
        path = "/cvs/" + quote(imp_uid, safe="")
        answer: Payment | None = self._authed("cancel", "DELETE", path, observer, _payment_or_none)
        if answer is None:
            # Success without the payment: read it back rather than guess.
            return self.look_up(imp_uid, observer)
        return answer

    def close_vbank(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        """DELETE /vbanks/{imp_uid}: close an unpaid virtual account; the cancelled Payment."""
        path = "/vbanks/" + quote(imp_uid, safe="")
        answer: Payment | None = self._authed("cancel", "DELETE", path, observer, _payment_or_none)
        if answer is None:
            return self.look_up(imp_uid, observer)
        return answer

    def issue_cvs(
        self,
        *,
        merchant_uid: str,
        amount: int,
        channel_key: str | None = None,
        pg: str | None = None,
        confirm_url: str | None = None,
        notice_url: str | None = None,
        observer: CallObserver | None = None,
        **extra: Any,
    ) -> Payment:
        """POST /cvs: issue a barcode; the new payment is `ready`."""
        body: dict[str, Any] = {"merchant_uid": merchant_uid, "amount": amount}
        optional = {
            "channel_key": channel_key,
            "pg": pg,
            "confirm_url": confirm_url,
            "notice_url": notice_url,
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        body.update(extra)
        answer: Payment = self._authed("issue", "POST", "/cvs", observer, _payment, json=body)
        return answer

    def refund(
        self,
        *,
        imp_uid: str,
        amount: float | None,
        reason: str,
        checksum: float | None,
        observer: CallObserver | None = None,
    ) -> Payment:
        """POST /payments/cancel: refund a paid payment; `checksum` guards against doubles.

        `checksum` is the refundable balance (amount - cancel_amount) a lookup just showed; a
        refund without it could apply twice, so None is refused here, before anything is sent.
        """
        if checksum is None:
            raise ValueError("a refund needs the checksum from a lookup")
        body: dict[str, Any] = {"imp_uid": imp_uid, "reason": reason}
        if amount is not None:
            body["amount"] = _number(amount)
        body["checksum"] = _number(checksum)
        answer: Payment = self._authed(
            "refund", "POST", "/payments/cancel", observer, _payment, json=body
        )
        return answer

    # -- plumbing ------------------------------------------------------------------------

    def _authed(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        parse: Callable[[Any], Any],
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """An exchange with the shared token; on a 401, one fresh token and one repeat."""
        token = self.tokens.get(observer)
        try:
            return self._exchange(
                call, method, path, observer, token, parse, params=params, json=json
            )
        except Unauthorized:
            pass
        token = self.tokens.invalidate(token, observer)
        return self._exchange(call, method, path, observer, token, parse, params=params, json=json)

    def _exchange(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        token: str | None,
        parse: Callable[[Any], Any],
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """One rate-limited, observed HTTP exchange: `parse(envelope's response)` or an error.

        Traced, it is a span of its own (the guard, the limiter's wait, the HTTP call's span,
        the outcome); its attributes name the call, never the token or the body."""
        if not tracing.ACTIVE:
            return self._guarded(call, method, path, observer, token, parse, params, json)
        with tracing.span(f"iamport {call}", {"stockout.call": call}):
            return self._guarded(call, method, path, observer, token, parse, params, json)

    def _guarded(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        token: str | None,
        parse: Callable[[Any], Any],
        params: dict[str, str] | None,
        json: Any,
    ) -> Any:
        if self._guard is None:
            return self._limited(call, method, path, observer, token, parse, params, json)
        try:
            trial = self._guard.enter()
        except Blocked as blocked:
            raise RateLimited(call, retry_after=blocked.retry_after, message=blocked.why) from None
        outcome: list[str] = []
        try:
            return self._limited(call, method, path, observer, token, parse, params, json, outcome)
        finally:
            self._guard.leave(outcome[-1] if outcome else None, trial)

    def _limited(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        token: str | None,
        parse: Callable[[Any], Any],
        params: dict[str, str] | None,
        json: Any,
        outcome: list[str] | None = None,
    ) -> Any:
        if self._limiter is not None:
            try:
                self._limiter.acquire(self._max_wait)
            except LimiterBusy as busy:
                raise RateLimited(
                    call, retry_after=busy.retry_after, message="local rate limit"
                ) from None
            except redis.RedisError:
                # Without the shared bucket we cannot know the global rate: hold back.
                raise RateLimited(
                    call, retry_after=DEFAULT_RETRY_AFTER, message="rate limiter unreachable"
                ) from None
        if observer is not None:
            observer.before_send(call)
        headers = {"Authorization": "Bearer " + token} if token is not None else None
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        deadline = time.monotonic() + self._timeout
        http_status: int | None = None
        code: int | None = None
        message: str | None = None
        try:
            try:
                with deadline_scope(deadline):
                    response, content = self._send(method, path, params, json, headers, deadline)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # No connection, so no byte of the request left us: nothing can apply.
                raise _Failure("not_sent", NotSent(call, message=_kind(exc))) from exc
            except _DeadlinePassed as exc:
                raise _Failure("timeout", OutcomeUnknown(call, message="deadline passed")) from exc
            except httpx.TimeoutException as exc:
                raise _Failure("timeout", OutcomeUnknown(call, message=_kind(exc))) from exc
            except httpx.TransportError as exc:
                raise _Failure(
                    "connection_error", OutcomeUnknown(call, message=_kind(exc))
                ) from exc
            except httpx.HTTPError as exc:
                raise _Failure("bad_response", Unavailable(call, message=_kind(exc))) from exc
            except _BodyTooLarge as exc:
                http_status = exc.args[0]
                raise _Failure(
                    "bad_response", Unavailable(call, message="response body too large")
                ) from None
            http_status = response.status_code
            body = _json_object(content)
            if body is not None:
                raw_code = body.get("code")
                if isinstance(raw_code, int) and not isinstance(raw_code, bool):
                    code = raw_code
                raw_message = body.get("message")
                if raw_message is not None:
                    message = self._scrub(str(raw_message), token)
            answer = self._classify(call, response, body, code, message)
            try:
                answer = parse(answer)
            except ValidationError:
                raise _Failure(
                    "bad_response",
                    Unavailable(call, code=code, message="malformed response object"),
                ) from None
        except _Failure as failure:
            error = failure.error
            if error.http_status is None and http_status is not None:
                error.http_status = http_status
            if outcome is not None:
                outcome.append(failure.outcome)
            self._notify(
                observer,
                call,
                started_at,
                started,
                http_status,
                code,
                message if message is not None else error.message,
                failure.outcome,
            )
            raise error from failure.__cause__
        if outcome is not None:
            outcome.append("ok")
        self._notify(observer, call, started_at, started, http_status, code, message, "ok")
        return answer

    def _send(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        json: Any,
        headers: dict[str, str] | None,
        deadline: float,
    ) -> tuple[httpx.Response, bytes]:
        """The response and at most MAX_BODY_BYTES of its body, all by `deadline`."""
        left = max(deadline - time.monotonic(), 0.001)
        request = httpx.Request(
            method,
            self._base_url + path,
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

    def _pause_everyone(self, seconds: float) -> None:
        if self._guard is not None:
            self._guard.pause(seconds)
        if self._limiter is None:
            return
        # Best effort: the failing call still waits; others would find out from their own 429s.
        with contextlib.suppress(redis.RedisError):
            self._limiter.pause(seconds)

    def _classify(
        self,
        call: str,
        response: httpx.Response,
        body: dict[str, Any] | None,
        code: int | None,
        message: str | None,
    ) -> Any:
        """The envelope's `response` on success; else raise _Failure with the caller's error."""
        status = response.status_code
        kw: dict[str, Any] = {"http_status": status, "code": code, "message": message}
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            self._pause_everyone(retry_after)
            raise _Failure("rate_limited", RateLimited(call, retry_after=retry_after, **kw))
        enveloped = body is not None and code is not None
        if status >= 500 and status not in _GATEWAY_STATUSES and enveloped:
            # iamport's application wrote this answer: the call is over, whatever it did.
            raise _Failure("server_error", ServerError(call, **kw))
        if status >= 500 or status == 408:
            # A gateway, a proxy's page, or no envelope: iamport may still be working on it.
            raise _Failure("unavailable", Unavailable(call, **kw))
        if status == 401 or (call == "token" and 400 <= status < 500):
            raise _Failure("unauthorized", Unauthorized(call, **kw))
        if body is None or code is None:
            # An HTML page from a proxy, malformed JSON, or JSON without iamport's envelope.
            if message is None:
                kw["message"] = "unreadable response body"
            raise _Failure("bad_response", Unavailable(call, **kw))
        if 200 <= status < 300:
            if code == 0:
                return body.get("response")
            if call == "token":
                raise _Failure("unauthorized", Unauthorized(call, **kw))
            if call == "lookup" and body.get("response") is None:
                raise _Failure("not_found", NotFound(call, **kw))
            raise _Failure("refused", Refused(call, **kw))
        if status == 404 and call == "lookup":
            raise _Failure("not_found", NotFound(call, **kw))
        if 400 <= status < 500:
            raise _Failure("refused", Refused(call, **kw))
        raise _Failure("bad_response", Unavailable(call, **kw))  # 1xx/3xx: not iamport's API

    def _scrub(self, text: str, token: str | None) -> str:
        text = text[:_MESSAGE_LIMIT]
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        if token and token in text:
            text = text.replace(token, "***")
        return text

    @staticmethod
    def _notify(
        observer: CallObserver | None,
        call: str,
        started_at: datetime,
        started: float,
        http_status: int | None,
        code: int | None,
        message: str | None,
        outcome: str,
    ) -> None:
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


def _number(value: float) -> float | int:
    """An amount as JSON: a whole number without a fraction."""
    return int(value) if float(value).is_integer() else value


def _payment(answer: Any) -> Payment:
    return Payment.model_validate(answer)


def _payment_or_none(answer: Any) -> Payment | None:
    return None if answer is None else Payment.model_validate(answer)


def _token_answer(answer: Any) -> TokenResponse:
    return TokenResponse.model_validate(answer)


def _json_object(content: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None for anything else (HTML, malformed, a list...)."""
    if not content:
        return None
    try:
        body = json.loads(content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _kind(exc: Exception) -> str:
    """An exception's class name: httpx messages may echo URLs, so keep only the kind."""
    return type(exc).__name__
