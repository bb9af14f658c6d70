"""The iamport (PortOne V1) REST client: typed answers, typed errors, shared token and rate."""

from app.iamport.client import CallObserver, CallRecord, IamportClient, TokenSource
from app.iamport.errors import (
    IamportError,
    NotFound,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Refused,
    ServerError,
    Unauthorized,
    Unavailable,
)
from app.iamport.ratelimit import LimiterBusy, RateLimiter
from app.iamport.schemas import CancelHistoryEntry, Payment, PaymentStatus, TokenResponse
from app.iamport.token import TokenProvider

__all__ = [
    "CallObserver",
    "CallRecord",
    "CancelHistoryEntry",
    "IamportClient",
    "IamportError",
    "LimiterBusy",
    "NotFound",
    "NotSent",
    "OutcomeUnknown",
    "Payment",
    "PaymentStatus",
    "RateLimited",
    "RateLimiter",
    "Refused",
    "ServerError",
    "TokenProvider",
    "TokenResponse",
    "TokenSource",
    "Unauthorized",
    "Unavailable",
]
