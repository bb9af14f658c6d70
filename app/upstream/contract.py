"""What a job's run needs of a payment gateway, whichever it is.

A gateway looks a payment up, voids a barcode, closes a virtual account and refunds; each
returns the payment as it stands after the call (`Payment`) or raises one of the typed
outcomes of errors.py, which say what the caller must do next. Every HTTP exchange is shown
to the caller's observer: it may veto a mutating call just before it is sent (the job's
write-ahead), and it keeps each exchange's record as the job's attempt history.
iamport V1 (`app.upstream.iamport`) is the first implementation, PortOne V2
(`app.upstream.portone`) the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from app.upstream.payment import Payment


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP exchange with the gateway, for the caller's attempt history."""

    call: str  # "token" | "lookup" | "cancel" | "issue" | "refund"
    started_at: datetime  # tz-aware UTC
    duration_ms: int
    http_status: int | None
    code: int | None
    message: str | None  # upstream message, never secrets
    outcome: str  # ok, refused, not_found, unauthorized, rate_limited, unavailable, timeout,
    #               connection_error, bad_response, server_error, not_sent


class CallObserver(Protocol):
    """Sees every exchange: may veto one just before it is sent, and records each outcome."""

    def before_send(self, call: str) -> None: ...

    def after_call(self, record: CallRecord) -> None: ...


class Gateway(Protocol):
    """The calls a job's run makes; each may raise any outcome of app.upstream.errors."""

    def clock_skew(self) -> float | None:
        """The gateway's clock minus ours in seconds, as last measured; None if not known."""
        ...

    def look_up(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        """The payment as the gateway knows it now."""
        ...

    def void_barcode(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        """Void an unpaid convenience-store barcode."""
        ...

    # `intent` is whose call it is, the same on every repeat (the job's id). A gateway with
    # idempotency keys derives the key from it and the call's own arguments, so a repeat after
    # a lost answer is the same request to the gateway, not a second one; others ignore it.

    def close_vbank(
        self, imp_uid: str, observer: CallObserver | None = None, *, intent: str | None = None
    ) -> Payment:
        """Close an unpaid virtual account."""
        ...

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
        """Refund a paid payment; `checksum` is the balance a lookup just showed."""
        ...
