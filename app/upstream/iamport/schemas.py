"""iamport's own answers beside the payment: the access token."""

from __future__ import annotations

from app.upstream.payment import Lenient


class TokenResponse(Lenient):
    """The answer of POST /users/getToken; times are iamport's UNIX seconds."""

    access_token: str
    now: int
    expired_at: int

    def __repr__(self) -> str:
        return f"TokenResponse(access_token='***', now={self.now}, expired_at={self.expired_at})"

    __str__ = __repr__
