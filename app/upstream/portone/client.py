"""PortOne V2, the second gateway of the upstream contract.

Same pipeline as iamport V1 (app.upstream.http: local rate limit, the observer's write-ahead,
one total deadline, a body cap, a record per exchange), with V2's differences:
- the API secret itself authenticates every call (`Authorization: PortOne ...`): no token,
  so a 401 is final;
- an error is `{"type": ..., "message": ...}` under an HTTP status; both decide, the message
  never does;
- every call that changes a payment carries an Idempotency-Key derived from the intended
  call (keys.py), so an unanswered call is settled by repeating it; a repeat still running
  is 409 IDEMPOTENCY_OUTSTANDING_REQUEST: InFlight, never a failure;
- a cancel may be accepted and finish later (`REQUESTED`): CancelRequested, not done;
- V2 has no call that voids a Korean convenience-store barcode: Unsupported, nothing sent.
No secret reaches an exception, a record or a repr.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from app.upstream.accounts import V2_BASE_URL, Account
from app.upstream.contract import CallObserver
from app.upstream.errors import (
    CancelRequested,
    GatewayError,
    InFlight,
    NotFound,
    RateLimited,
    Refused,
    ServerError,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from app.upstream.guard import Guard
from app.upstream.http import (
    BASE_HEADERS,
    GATEWAY_STATUSES,
    Exchanger,
    Failure,
    Reading,
    json_object,
    number,
    parse_retry_after,
    scrub,
)
from app.upstream.payment import Payment
from app.upstream.portone.keys import idempotency_key
from app.upstream.portone.mapping import REQUESTED, SUCCEEDED, to_payment
from app.upstream.portone.schemas import CancelAnswer, CloseAnswer, V2Payment
from app.upstream.ratelimit import RateLimiter

GATEWAY = "portone"
# PortOne goes on with a PG-backed call after the client hangs up, and asks for read timeouts
# of at least a minute: a shorter one only turns answers into unknowns.
DEFAULT_TIMEOUT = 60.0
OUTSTANDING = "IDEMPOTENCY_OUTSTANDING_REQUEST"
NOT_FOUND = "PAYMENT_NOT_FOUND"
# A 502 that says this came from PortOne's application: the PG answered it, the call is over.
PG_PROVIDER = "PG_PROVIDER"
VOID_UNSUPPORTED = (
    "PortOne V2 has no call that voids a Korean convenience-store barcode; "
    "cancel it in the PG's own console"
)


class PortOneClient:
    """PortOne V2's REST API for one store, over one shared, thread-safe httpx transport."""

    def __init__(
        self,
        *,
        store_id: str,
        api_secret: str,
        base_url: str = V2_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        limiter: RateLimiter | None = None,
        rate_limit_max_wait: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        guard: Guard | None = None,
    ) -> None:
        if not api_secret:
            raise ValueError("a PortOne V2 client needs the account's API secret")
        self._store_id = store_id
        self._secrets = (api_secret,)
        self._authorization = {"Authorization": "PortOne " + api_secret}
        self._skew: float | None = None
        self._http = Exchanger(
            base_url=base_url,
            timeout=timeout,
            headers=BASE_HEADERS,
            limiter=limiter,
            rate_limit_max_wait=rate_limit_max_wait,
            transport=transport,
            gateway=GATEWAY,
            guard=guard,
        )

    @classmethod
    def for_account(
        cls,
        account: Account,
        *,
        timeout: float | None = None,
        limiter: RateLimiter | None = None,
        rate_limit_max_wait: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        guard: Guard | None = None,
    ) -> PortOneClient:
        """The client of a v2 account (its base URL, store, API secret and timeout)."""
        secret = account.secret("api_secret")
        if account.api != "v2" or account.store_id is None or secret is None:
            raise ValueError(f"account {account.name} is not a v2 account with an API secret")
        return cls(
            store_id=account.store_id,
            api_secret=secret,
            base_url=account.base_url,
            timeout=account.timeout_seconds if timeout is None else timeout,
            limiter=limiter,
            rate_limit_max_wait=rate_limit_max_wait,
            transport=transport,
            guard=guard,
        )

    @staticmethod
    def rate_key(account: Account) -> str:
        """The name of the account's rate limit, shared by its clients in every process (the
        job runs' and reconciliation's) and by no other account."""
        return f"portone:rate:{account.name}:{account.store_id}"

    def __repr__(self) -> str:
        return f"PortOneClient(base_url={self._http.base_url!r}, store_id={self._store_id!r})"

    __str__ = __repr__

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def clock_skew(self) -> float | None:
        """PortOne's clock minus ours in seconds, from the last answer's Date header (whole
        seconds, so up to a second short); None before any answer carried one."""
        return self._skew

    # -- calls ---------------------------------------------------------------------------

    # PortOne V2 has no call that looks several payments up by id: a batch is one lookup each.
    lookup_batch = 1

    def look_up_many(
        self, imp_uids: Sequence[str], observer: CallObserver | None = None
    ) -> dict[str, Payment]:
        """Each payment as PortOne knows it now, by paymentId; one PortOne does not know (or
        not in this store) is absent."""
        found: dict[str, Payment] = {}
        for payment_id in dict.fromkeys(imp_uids):
            with contextlib.suppress(NotFound):
                found[payment_id] = self.look_up(payment_id, observer)
        return found

    def look_up(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        """GET /payments/{paymentId}?storeId=: the payment as PortOne knows it now.

        `imp_uid` is the V2 paymentId (the contract's name for a payment's id)."""
        params = {"storeId": self._store_id}
        answer: Payment = self._exchange(
            "lookup", "GET", _path(imp_uid), observer, _lookup_answer, params=params
        )
        return answer

    def void_barcode(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        """Refused at once: V2 cannot void a Korean convenience-store barcode."""
        raise Unsupported("cancel", message=VOID_UNSUPPORTED, gateway=GATEWAY)

    def close_vbank(
        self, imp_uid: str, observer: CallObserver | None = None, *, intent: str | None = None
    ) -> Payment:
        """POST /payments/{paymentId}/virtual-account/close; the payment read back after it.

        `intent` (the job's id) makes the Idempotency-Key; without one the paymentId stands
        in, which is as stable: one job per payment, ever.
        """
        key = idempotency_key(intent or imp_uid, "close", imp_uid)
        self._exchange(
            "cancel",
            "POST",
            _path(imp_uid) + "/virtual-account/close",
            observer,
            _close_answer,
            json={"storeId": self._store_id},
            key=key,
        )
        # The answer holds only the closing time: read the payment back rather than guess.
        return self._read_back("cancel", imp_uid, observer)

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
        """POST /payments/{paymentId}/cancel; the payment read back once it SUCCEEDED.

        `checksum` is the balance a lookup just showed, sent as currentCancellableAmount so
        that PortOne refuses a refund of a payment that changed meanwhile; None is refused
        here, before anything is sent. `amount` None refunds the whole balance. A
        cancellation answered REQUESTED raises CancelRequested; FAILED raises Refused.
        """
        if checksum is None:
            raise ValueError("a refund needs the balance from a lookup")
        body: dict[str, Any] = {"storeId": self._store_id, "reason": reason}
        if amount is not None:
            body["amount"] = number(amount)
        body["currentCancellableAmount"] = number(checksum)
        key = idempotency_key(intent or imp_uid, "refund", imp_uid, amount=amount, balance=checksum)
        self._exchange(
            "refund",
            "POST",
            _path(imp_uid) + "/cancel",
            observer,
            _cancel_answer,
            json=body,
            key=key,
        )
        return self._read_back("refund", imp_uid, observer)

    def _read_back(self, call: str, imp_uid: str, observer: CallObserver | None) -> Payment:
        """The payment after a close or refund PortOne answered as done. That call has ended
        and applied, so a lookup failing now (a 429, a 5xx, a timeout) must not pass for the
        call's own outcome, which would tell the job it never applied, or may still: the
        call ended (ServerError), and a lookup decides, counting what it shows as ours."""
        try:
            return self.look_up(imp_uid, observer)
        except GatewayError as exc:
            message = f"answered as done; the payment could not be read back ({exc.outcome})"
            raise ServerError(call, gateway=GATEWAY, message=message) from exc

    # -- plumbing ------------------------------------------------------------------------

    def _exchange(
        self,
        call: str,
        method: str,
        path: str,
        observer: CallObserver | None,
        parse: Callable[[str, Any], Any],
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        key: str | None = None,
    ) -> Any:
        headers = (
            self._authorization if key is None else {**self._authorization, "Idempotency-Key": key}
        )

        def read(response: httpx.Response, content: bytes) -> Reading:
            self._measure_skew(response)
            body = json_object(content)
            message = self._message(body)
            self._classify(call, response, body, message)
            if body is None:
                raise Failure(
                    "bad_response",
                    Unavailable(call, message="unreadable response body", gateway=GATEWAY),
                )
            try:
                return Reading(parse(call, body))
            except ValidationError:
                error = Unavailable(call, message="malformed response object", gateway=GATEWAY)
                raise Failure("bad_response", error) from None

        return self._http.exchange(
            call, method, path, observer, read, params=params, json=json, headers=headers
        )

    def _classify(
        self, call: str, response: httpx.Response, body: dict[str, Any] | None, message: str | None
    ) -> None:
        """Nothing for a 2xx; else raise Failure with the error the caller must act on."""
        status = response.status_code
        if 200 <= status < 300:
            return
        kind = error_type(body)
        kw: dict[str, Any] = {"http_status": status, "message": message, "gateway": GATEWAY}
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            self._http.pause_everyone(retry_after)
            raise Failure("rate_limited", RateLimited(call, retry_after=retry_after, **kw))
        outcome, error = classify(call, status, kind)
        raise Failure(outcome, error(call, **kw))

    def _message(self, body: dict[str, Any] | None) -> str | None:
        """What the record and the error show of an error body: `TYPE: message`."""
        if body is None:
            return None
        kind = error_type(body)
        raw = body.get("message")
        text = None if raw is None else str(raw)
        if kind is None:
            return None if text is None else scrub(text, self._secrets)
        return scrub(kind if text is None else f"{kind}: {text}", self._secrets)

    def _measure_skew(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if not date:
            return
        try:
            when = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return
        if when.tzinfo is not None:
            self._skew = when.timestamp() - time.time()


def classify(call: str, status: int, kind: str | None) -> tuple[str, type[GatewayError]]:
    """The outcome and error of a non-2xx, non-429 answer, by HTTP status and V2 error type.

    The message is never read. No V2 error body (`kind` None) means something in front of
    PortOne answered, or an unreadable body: the call may still be in flight.
    """
    if status == 409 and kind == OUTSTANDING:
        return "in_flight", InFlight
    if status >= 500 or status == 408:
        ended = kind is not None and (status not in GATEWAY_STATUSES or kind == PG_PROVIDER)
        return ("server_error", ServerError) if ended else ("unavailable", Unavailable)
    if status in (401, 403):
        # The secret is the credential itself: no fresh token can make a repeat succeed.
        return "unauthorized", Unauthorized
    if kind is None:
        return "bad_response", Unavailable
    if status == 404 and kind == NOT_FOUND:
        return "not_found", NotFound
    if 400 <= status < 500:
        # Already cancelled, not paid, not awaiting a deposit, a balance that changed...:
        # it did not apply, and a lookup says where the payment stands.
        return "refused", Refused
    return "bad_response", Unavailable  # 1xx/3xx: not PortOne's API


def error_type(body: dict[str, Any] | None) -> str | None:
    """A V2 error body's `type`, if the body is one."""
    kind = None if body is None else body.get("type")
    return kind if isinstance(kind, str) and kind else None


def _path(payment_id: str) -> str:
    return "/payments/" + quote(payment_id, safe="")


def _lookup_answer(call: str, body: Any) -> Payment:
    return to_payment(V2Payment.model_validate(body))


def _close_answer(call: str, body: Any) -> BaseModel:
    return CloseAnswer.model_validate(body)


def _cancel_answer(call: str, body: Any) -> BaseModel:
    """A cancellation that is not SUCCEEDED is no success: REQUESTED is still under way,
    FAILED did not apply."""
    answer = CancelAnswer.model_validate(body)
    status = answer.cancellation.status
    if status == SUCCEEDED:
        return answer
    if status == REQUESTED:
        error: GatewayError = CancelRequested(
            call, message="cancellation requested, not finished yet", gateway=GATEWAY
        )
        raise Failure("requested", error)
    if status == "FAILED":
        error = Refused(call, message="the cancellation failed", gateway=GATEWAY)
        raise Failure("refused", error)
    error = Unavailable(call, message="unknown cancellation status", gateway=GATEWAY)
    raise Failure("bad_response", error)
