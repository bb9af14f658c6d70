"""The iamport (PortOne V1) REST client: typed answers, typed errors, shared token and rate."""

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
from app.upstream.iamport.client import IamportClient, TokenSource
from app.upstream.iamport.schemas import TokenResponse
from app.upstream.iamport.token import TokenProvider
from app.upstream.payment import CancelHistoryEntry, Payment, PaymentStatus
from app.upstream.ratelimit import LimiterBusy, RateLimiter

__all__ = [
    "CallObserver",
    "CallRecord",
    "CancelHistoryEntry",
    "GatewayError",
    "IamportClient",
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
