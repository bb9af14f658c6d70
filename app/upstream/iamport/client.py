"""iamport V1, the first gateway of the upstream contract: typed answers, typed errors, shared
token and rate.

Every exchange goes: token -> local rate limiter -> observer.before_send -> HTTP (one total
deadline for connect, send and receive, and a cap on the body) -> classify -> record ->
observer.after_call -> return or raise. Errors say what the caller must do (errors.py); the
caller keeps the CallRecords as its attempt history. Nothing here logs, and no credential or
token ever reaches an exception, a repr or a record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx
import redis
from pydantic import TypeAdapter, ValidationError

from app.upstream.accounts import Account, default_account
from app.upstream.contract import CallObserver
from app.upstream.errors import (
    NotFound,
    RateLimited,
    Refused,
    ServerError,
    Unauthorized,
    Unavailable,
)
from app.upstream.guard import Blocked, Guard
from app.upstream.http import (
    BASE_HEADERS,
    GATEWAY_STATUSES,
    MAX_BODY_BYTES,
    Exchanger,
    Failure,
    Params,
    Reading,
    json_object,
    number,
    parse_retry_after,
    scrub,
)
from app.upstream.iamport.schemas import TokenResponse
from app.upstream.iamport.token import TokenProvider, key_id
from app.upstream.payment import Payment
from app.upstream.ratelimit import RateLimiter

if TYPE_CHECKING:
    from app.config import Settings

__all__ = [
    "BATCH_LOOKUP_MAX",
    "MAX_BODY_BYTES",
    "IamportClient",
    "TokenSource",
    "parse_retry_after",
]

BATCH_LOOKUP_MAX = 100  # imp_uid[] in one GET /payments, as iamport allows


class TokenSource(Protocol):
    """What the client needs of a token provider (TokenProvider is the real one)."""

    def get(self, observer: CallObserver | None = None) -> str: ...

    def invalidate(self, stale: str, observer: CallObserver | None = None) -> str: ...


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
        self._imp_secret = imp_secret
        self._secrets = tuple(s for s in (imp_key, imp_secret) if s)
        self._lookup_params = {"include_sandbox": "true"} if include_sandbox else None
        self._guard = guard
        self._http = Exchanger(
            base_url=base_url,
            timeout=timeout,
            # An agency's sub-merchant: the `Tier` header goes on every call, getToken included.
            headers={**BASE_HEADERS, "Tier": tier} if tier else BASE_HEADERS,
            limiter=limiter,
            rate_limit_max_wait=rate_limit_max_wait,
            transport=transport,
            guard=guard,
        )
        # A getToken ends within the limiter's wait and its own deadline, so a lock held
        # longer than that belongs to a process that died holding it. Waiters give the holder
        # its deadline, then ask for themselves (iamport answers with the same token): a dead
        # holder must not cost more than one call's time, or the waiting jobs' leases run out.
        self.tokens: TokenSource = (
            tokens
            if tokens is not None
            else TokenProvider(
                redis_client,
                self.fetch_token,
                tokens_key or key_id(imp_key),
                lock_ttl=rate_limit_max_wait + timeout + 1.0,
                wait_timeout=timeout + 1.0,
            )
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
            # The account's own: its jobs' leases are made from it too.
            timeout=account.timeout_seconds,
            tokens_key=name,
            limiter=limiter,
            rate_limit_max_wait=settings.rate_limit_max_wait_seconds,
            redis_client=redis,
            tier=account.tier,
            guard=guard,
        )

    def __repr__(self) -> str:
        return f"IamportClient(base_url={self._http.base_url!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

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

    lookup_batch = BATCH_LOOKUP_MAX  # payments one look_up_many may ask for

    def look_up_many(
        self, imp_uids: Sequence[str], observer: CallObserver | None = None
    ) -> dict[str, Payment]:
        """GET /payments?imp_uid[]=…: up to BATCH_LOOKUP_MAX payments in one call, by imp_uid.

        An imp_uid iamport does not know (or not for this account) is absent from the answer:
        a `207` carries only the payments found, and a `404` means none was.
        """
        wanted = list(dict.fromkeys(imp_uids))
        if not wanted:
            return {}
        if len(wanted) > BATCH_LOOKUP_MAX:
            raise ValueError(f"at most {BATCH_LOOKUP_MAX} imp_uids in one lookup")
        pairs = [("imp_uid[]", i) for i in wanted]
        params = httpx.QueryParams([*pairs, *(self._lookup_params or {}).items()])
        try:
            found: list[Payment] = self._authed(
                "lookup", "GET", "/payments", observer, _payments, params=params
            )
        except NotFound:
            return {}
        asked = set(wanted)
        return {p.imp_uid: p for p in found if p.imp_uid in asked}

    def void_barcode(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        """DELETE /cvs/{imp_uid}: void an unpaid barcode; the cancelled Payment on success."""
        path = "/cvs/" + quote(imp_uid, safe="")
        answer: Payment | None = self._authed("cancel", "DELETE", path, observer, _payment_or_none)
        if answer is None:
            # Success without the payment: read it back rather than guess.
            return self.look_up(imp_uid, observer)
        return answer

    def close_vbank(
        self, imp_uid: str, observer: CallObserver | None = None, *, intent: str | None = None
    ) -> Payment:
        """DELETE /vbanks/{imp_uid}: close an unpaid virtual account; the cancelled Payment.

        `intent` is ignored: V1 has no idempotency keys.
        """
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
        intent: str | None = None,
    ) -> Payment:
        """POST /payments/cancel: refund a paid payment; `checksum` guards against doubles.

        `checksum` is the refundable balance (amount - cancel_amount) a lookup just showed; a
        refund without it could apply twice, so None is refused here, before anything is sent.
        `intent` is ignored: V1 has no idempotency keys, the checksum does their work.
        """
        if checksum is None:
            raise ValueError("a refund needs the checksum from a lookup")
        body: dict[str, Any] = {"imp_uid": imp_uid, "reason": reason}
        if amount is not None:
            body["amount"] = number(amount)
        body["checksum"] = number(checksum)
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
        params: Params | None = None,
        json: Any = None,
    ) -> Any:
        """An exchange with the shared token; on a 401, one fresh token and one repeat. The
        account's guard admits the whole of it, the wait for a token included: a thread waiting
        for another's getToken is a thread the other accounts cannot have."""
        if self._guard is None:
            return self._with_token(call, method, path, observer, parse, params, json)
        try:
            trial = self._guard.enter()
        except Blocked as blocked:
            raise RateLimited(call, retry_after=blocked.retry_after, message=blocked.why) from None
        try:
            return self._with_token(call, method, path, observer, parse, params, json)
        finally:
            self._guard.leave(None, trial)

    def _with_token(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        parse: Callable[[Any], Any],
        params: Params | None,
        json: Any,
    ) -> Any:
        token = self.tokens.get(observer)
        try:
            return self._exchange(
                call, method, path, observer, token, parse, params=params, json=json
            )
        except Unauthorized:
            pass
        token = self.tokens.invalidate(token, observer)
        try:
            return self._exchange(
                call, method, path, observer, token, parse, params=params, json=json
            )
        except Unauthorized:
            if self._guard is not None:
                self._guard.refused_fresh_token()
            raise

    def _exchange(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        token: str | None,
        parse: Callable[[Any], Any],
        *,
        params: Params | None = None,
        json: Any = None,
    ) -> Any:
        """One rate-limited, observed HTTP exchange: `parse(envelope's response)` or an error."""

        def read(response: httpx.Response, content: bytes) -> Reading:
            code: int | None = None
            message: str | None = None
            body = json_object(content)
            if body is not None:
                raw_code = body.get("code")
                if isinstance(raw_code, int) and not isinstance(raw_code, bool):
                    code = raw_code
                raw_message = body.get("message")
                if raw_message is not None:
                    message = self._scrub(str(raw_message), token)
            answer = self._classify(call, response, body, code, message)
            try:
                return Reading(parse(answer), code, message)
            except ValidationError:
                error = Unavailable(call, code=code, message="malformed response object")
                raise Failure("bad_response", error, message) from None

        headers = {"Authorization": "Bearer " + token} if token is not None else None
        return self._http.exchange(
            call, method, path, observer, read, params=params, json=json, headers=headers
        )

    def _classify(
        self,
        call: str,
        response: httpx.Response,
        body: dict[str, Any] | None,
        code: int | None,
        message: str | None,
    ) -> Any:
        """The envelope's `response` on success; else raise Failure with the caller's error."""
        status = response.status_code
        kw: dict[str, Any] = {"http_status": status, "code": code, "message": message}
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            self._http.pause_everyone(retry_after)
            raise Failure("rate_limited", RateLimited(call, retry_after=retry_after, **kw))
        enveloped = body is not None and code is not None
        if status >= 500 and status not in GATEWAY_STATUSES and enveloped:
            # iamport's application wrote this answer: the call is over, whatever it did.
            raise Failure("server_error", ServerError(call, **kw))
        if status >= 500 or status == 408:
            # A gateway, a proxy's page, or no envelope: iamport may still be working on it.
            raise Failure("unavailable", Unavailable(call, **kw))
        if status == 401 or (call == "token" and 400 <= status < 500):
            raise Failure("unauthorized", Unauthorized(call, **kw))
        if body is None or code is None:
            # An HTML page from a proxy, malformed JSON, or JSON without iamport's envelope.
            if message is None:
                kw["message"] = "unreadable response body"
            raise Failure("bad_response", Unavailable(call, **kw))
        if status == 207 and isinstance(body.get("response"), list):
            return body.get("response")  # a batch lookup that found only some
        if 200 <= status < 300:
            if code == 0:
                return body.get("response")
            if call == "token":
                raise Failure("unauthorized", Unauthorized(call, **kw))
            if call == "lookup" and body.get("response") is None:
                raise Failure("not_found", NotFound(call, **kw))
            raise Failure("refused", Refused(call, **kw))
        if status == 404 and call == "lookup":
            raise Failure("not_found", NotFound(call, **kw))
        if 400 <= status < 500:
            raise Failure("refused", Refused(call, **kw))
        raise Failure("bad_response", Unavailable(call, **kw))  # 1xx/3xx: not iamport's API

    def _scrub(self, text: str, token: str | None) -> str:
        return scrub(text, (*self._secrets, token) if token else self._secrets)


def _payment(answer: Any) -> Payment:
    return Payment.model_validate(answer)


_PAYMENTS = TypeAdapter(list[Payment])


def _payments(answer: Any) -> list[Payment]:
    return [] if answer is None else _PAYMENTS.validate_python(answer)


def _payment_or_none(answer: Any) -> Payment | None:
    return None if answer is None else Payment.model_validate(answer)


def _token_answer(answer: Any) -> TokenResponse:
    return TokenResponse.model_validate(answer)
