"""Domain errors: plain classes with the HTTP status and stable problem `code` they answer
with. Nothing here knows the web framework; api/problems.py renders them (RFC 9457)."""

from __future__ import annotations

from typing import Any

DB_RETRY_AFTER_SECONDS = 5


class DomainError(Exception):
    """A refusal of the domain's: the API answers it with its status and code."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class NotFound(DomainError):
    status, code = 404, "not_found"


class EventConflict(DomainError):
    status, code = 409, "event_conflict"


class NotRetryable(DomainError):
    status, code = 409, "not_retryable"


class NotRefundable(DomainError):
    status, code = 409, "not_refundable"


class NoOpenDrift(DomainError):
    status, code = 409, "no_open_drift"


class Unauthenticated(DomainError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class InvalidCursor(DomainError):
    status, code = 400, "invalid_cursor"


class InvalidUrl(DomainError):
    status, code = 422, "invalid_url"


class UnknownAccount(DomainError):
    """An account that is not configured, or that the caller's key is not bound to."""

    status, code = 422, "unknown_account"

    def __init__(self, detail: str) -> None:
        # Shaped like a validation error (an `errors` list), as every 422 is.
        error = {"loc": ["body", "account"], "msg": detail, "type": "unknown_account"}
        super().__init__(detail, errors=[error])


class WrongPaymentField(DomainError):
    """An event names a payment by the other kind of account's field: `imp_uid` on a PortOne V2
    account, `payment_id` on an iamport V1 one."""

    status, code = 422, "validation_error"

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        # Shaped like every other validation error: the `errors` list says where.
        super().__init__(detail, errors=errors)
