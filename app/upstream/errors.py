"""The typed outcomes of a gateway call that did not return a payment, each phrased as what the
caller must do next."""

from __future__ import annotations

MESSAGE_LIMIT = 500


class GatewayError(Exception):
    """A gateway call did not succeed. Never carries credentials or tokens."""

    outcome = "error"

    def __init__(
        self,
        call: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
        message: str | None = None,
        gateway: str = "iamport",
    ) -> None:
        self.call = call
        self.gateway = gateway
        self.http_status = http_status
        self.code = code
        self.message = message[:MESSAGE_LIMIT] if message is not None else None
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [f"{self.gateway} {self.call}: {self.outcome}"]
        if self.http_status is not None:
            parts.append(f"http {self.http_status}")
        if self.code is not None:
            parts.append(f"code {self.code}")
        if self.message:
            parts.append(repr(self.message))
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()!r})"


class Unauthorized(GatewayError):
    """A 401 that persisted after one fresh token, or credentials refused at getToken."""

    outcome = "unauthorized"


class RateLimited(GatewayError):
    """Wait `retry_after` seconds and try again; waiting is not a failed attempt.

    With `http_status` None the local limiter refused to grant in time: nothing was sent.
    """

    outcome = "rate_limited"

    def __init__(
        self,
        call: str,
        *,
        retry_after: float,
        http_status: int | None = None,
        code: int | None = None,
        message: str | None = None,
        gateway: str = "iamport",
    ) -> None:
        self.retry_after = retry_after
        super().__init__(call, http_status=http_status, code=code, message=message, gateway=gateway)

    def _describe(self) -> str:
        return f"{super()._describe()}, retry after {self.retry_after:.3f}s"


class Refused(GatewayError):
    """A business refusal (200 with code != 0, or a 400/404/409): the request did not apply."""

    outcome = "refused"


class Unsupported(Refused):
    """The gateway has no call for this (PortOne V2 cannot void a Korean convenience-store
    barcode): nothing was sent, and no repeat will ever succeed; the job ends with this message.

    A subclass of Refused so that a caller that does not tell the two apart still settles the
    job by a lookup, which is safe.
    """

    outcome = "unsupported"


class NotFound(GatewayError):
    """iamport does not know the payment."""

    outcome = "not_found"


class Unavailable(GatewayError):
    """A gateway's 502/503/504, an HTML page, a garbled body: the call may still be in flight."""

    outcome = "unavailable"


class ServerError(Unavailable):
    """A 5xx in iamport's own JSON envelope: its application answered, so the call has ended.

    What it did is learnt by a lookup. A subclass of Unavailable so that a caller that does not
    tell the two apart still treats it as unknown, which is safe.
    """

    outcome = "server_error"


class NotSent(Unavailable):
    """Connect refused, connect or pool timeout: the request never left us, nothing can apply.

    A subclass of Unavailable so that a caller that does not tell the two apart stays safe.
    """

    outcome = "not_sent"


class OutcomeUnknown(GatewayError):
    """Timeout, deadline passed, or connection lost after sending: the call may still apply."""

    outcome = "timeout"


class InFlight(OutcomeUnknown):
    """The gateway is still working on this very call: a repeat with its idempotency key was
    answered "still running" (PortOne V2's 409 IDEMPOTENCY_OUTSTANDING_REQUEST). It has not
    failed: wait, then repeat it with the same key or look the payment up.

    A subclass of OutcomeUnknown: a caller that does not tell the two apart waits for the call
    to settle, which is right.
    """

    outcome = "in_flight"


class CancelRequested(InFlight):
    """The gateway accepted the cancellation but has not finished it (PortOne V2's
    `REQUESTED`): it may yet succeed or fail. Not done: wait and look the payment up until the
    cancellation shows SUCCEEDED or FAILED."""

    outcome = "requested"
