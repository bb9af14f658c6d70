"""Idempotency keys for PortOne V2's calls that change a payment.

PortOne answers a repeat of a finished request (same key) with the original answer, and one
still running with 409 IDEMPOTENCY_OUTSTANDING_REQUEST. So an unanswered call is settled by
sending the very same key again, and the key must be a pure function of the intended call:
the same job, call and arguments give the same key on every worker and every run, and any
other call (a refund after a close, a refund of another balance) a different one.

The header's value is an RFC 8941 string: the key in double quotes, 16 to 256 ASCII
characters. A hex digest under a short readable prefix needs no escaping, and its length is
fixed well inside that range, with or without the quotes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

MIN_LENGTH = 16
MAX_LENGTH = 256
_CALL = re.compile(r"[a-z][a-z-]{0,30}")


def idempotency_key(
    intent: str,
    call: str,
    payment_id: str,
    *,
    amount: float | None = None,
    balance: float | None = None,
) -> str:
    """The `Idempotency-Key` header value for `call` on `payment_id`, made for `intent`.

    `intent` is whose call it is (the job's id); `amount` is what the call asks for (None: all
    of it) and `balance` the balance it expects to find (a refund's currentCancellableAmount),
    both compared as numbers, so 1000 and 1000.0 are the same call.
    """
    if not _CALL.fullmatch(call):
        raise ValueError("call must be a short lower-case word")
    identity = [intent, call, payment_id, _amount(amount), _amount(balance)]
    canonical = json.dumps(identity, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f'"stockout-{call}-{digest}"'


def _amount(value: float | None) -> str | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("an amount must be a finite number")
    # repr of a float is exact and the same for 1000 and 1000.0; -0.0 is 0.
    return repr(number + 0.0)
