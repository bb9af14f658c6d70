"""The sandbox's menu of unkindness: which fault a call gets, drawn from one seeded generator.

Faults that touch the payment (5xx after applying, a lost answer, a late apply, a hang after
applying) only strike the mutating calls; the others strike any call named in `calls` (and,
when `imp_uids` is set, only calls for those payments). Oddities of the answer's Payment
(timestamps in milliseconds, unknown statuses, no cancel_history) are drawn apart from the
fault, so an answer can be both late and odd.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

CALL_KINDS = ("token", "lookup", "cancel", "cancel_vbank", "refund", "issue")
MUTATING = frozenset({"cancel", "cancel_vbank", "refund"})
REFUSAL_STYLES = ("code", "http", "mixed")
ERROR_STYLES = ("json", "html", "mixed")
RETRY_AFTER_STYLES = ("seconds", "date", "mixed")
TIMESTAMP_STYLES = ("ms", "fraction", "string", "iso")
TIMESTAMP_FIELDS = ("started_at", "paid_at", "failed_at", "cancelled_at")
GATEWAY_STATUSES = (502, 503, 504)
KST = timezone(timedelta(hours=9))

_CHOICES = {
    "refusal_style": REFUSAL_STYLES,
    "error_style": ERROR_STYLES,
    "retry_after_style": RETRY_AFTER_STYLES,
    "odd_timestamps_style": ("mixed", *TIMESTAMP_STYLES),
}


@dataclass(slots=True)
class Faults:
    """What to inject; each `*_rate` is the fraction of eligible calls that get the fault."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rate_429: float = 0.0  # 429 before anything happens
    retry_after: float = 1.0
    retry_after_style: str = "seconds"  # Retry-After as delta seconds or as an HTTP date
    token_expiry_rate: float = 0.0  # every token expires just before the call: 401
    error_rate: float = 0.0  # a 5xx before applying
    error_after_rate: float = 0.0  # mutating: applied, then a 5xx
    error_style: str = "mixed"  # json: 500 in iamport's envelope; html: a gateway's 502/503/504
    timeout_before_rate: float = 0.0  # mutating: hang `hang_seconds`, then 504, not applied
    timeout_after_rate: float = 0.0  # mutating: applied, then hang `hang_seconds`
    hang_seconds: float = 30.0
    drop_after_rate: float = 0.0  # mutating: applied, then the connection drops mid-answer
    late_apply_rate: float = 0.0  # mutating: applied `late_apply_seconds` after arrival
    late_apply_seconds: float = 3.0  # ... whether or not the caller still waits
    trickle_rate: float = 0.0  # the answer arrives `trickle_bytes` every `trickle_interval_ms`
    trickle_interval_ms: float = 300.0
    trickle_bytes: float = 1.0
    odd_timestamps_rate: float = 0.0  # Payment timestamps in ms, with fractions, as strings
    odd_timestamps_style: str = "mixed"  # one of TIMESTAMP_STYLES for them all, or drawn
    unknown_status_rate: float = 0.0  # lookups: a status outside ready|paid|cancelled|failed
    unknown_status: str = "pending_review"
    missing_history_rate: float = 0.0  # Payment without cancel_history (absent or null)
    refusal_style: str = "mixed"  # code: 200 with code != 0; http: 400/404/409; mixed: both
    calls: tuple[str, ...] = CALL_KINDS
    imp_uids: tuple[str, ...] | None = None  # only calls for these payments; None: all
    seed: int | None = None

    def merged(self, changes: dict[str, Any]) -> Faults:
        """A copy with `changes` applied and checked; ValueError for a bad field or value."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in changes.items():
            values[name] = _fault_value(name, value)
        return Faults(**values)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["calls"] = list(self.calls)
        out["imp_uids"] = None if self.imp_uids is None else list(self.imp_uids)
        return out

    def strikes(self, call: str, imp_uid: str | None) -> bool:
        """Whether this call is one the faults are aimed at."""
        if call not in self.calls:
            return False
        return self.imp_uids is None or imp_uid in self.imp_uids


def _fault_value(name: str, value: Any) -> Any:
    if name == "calls":
        if not isinstance(value, list | tuple) or not all(v in CALL_KINDS for v in value):
            raise ValueError(f"calls must be a list drawn from {list(CALL_KINDS)}")
        return tuple(value)
    if name == "imp_uids":
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("imp_uids must be a list of strings or null")
        return tuple(value)
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ValueError(f"{name} must be one of {list(_CHOICES[name])}")
        return value
    if name == "unknown_status":
        if not isinstance(value, str) or not value:
            raise ValueError("unknown_status must be a non-empty string")
        return value
    if name == "seed":
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError("seed must be an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a non-negative number")
    if (name.endswith("_rate") or name == "rate_429") and value > 1:
        raise ValueError(f"{name} must be within 0..1")
    return float(value)


@dataclass(slots=True)
class Decision:
    """What the server does with one iamport call before (or instead of) answering it."""

    latency: float = 0.0
    # 429 | expired_token | error | timeout_before | error_after | drop_after | timeout_after |
    # late_apply | trickle
    fault: str | None = None
    status: int = 0  # for error and error_after
    html: bool = False  # for error and error_after: a gateway's HTML page instead of JSON
    retry_after_date: bool = False  # for 429
    timestamps: str | None = None  # one of TIMESTAMP_STYLES: how the Payment's times are written
    unknown_status: bool = False
    missing_history: str | None = None  # "absent" | "null"


def decide(faults: Faults, rng: random.Random, call: str, imp_uid: str | None) -> Decision:
    """Which fault, if any, this call gets, and how long it is delayed."""
    f = faults
    decision = Decision()
    if not f.strikes(call, imp_uid):
        return decision
    if f.latency_ms or f.latency_jitter_ms:
        jitter = (
            rng.uniform(-f.latency_jitter_ms, f.latency_jitter_ms) if f.latency_jitter_ms else 0
        )
        decision.latency = max(0.0, f.latency_ms + jitter) / 1000
    mutating = call in MUTATING
    if f.rate_429 and rng.random() < f.rate_429:
        decision.fault = "429"
        decision.retry_after_date = _style(f.retry_after_style, "date", rng)
    elif f.token_expiry_rate and call != "token" and rng.random() < f.token_expiry_rate:
        decision.fault = "expired_token"
    elif f.error_rate and rng.random() < f.error_rate:
        decision.fault = "error"
        _error_kind(decision, f.error_style, rng)
    elif mutating and f.timeout_before_rate and rng.random() < f.timeout_before_rate:
        decision.fault = "timeout_before"
    elif mutating and f.error_after_rate and rng.random() < f.error_after_rate:
        decision.fault = "error_after"
        _error_kind(decision, f.error_style, rng)
    elif mutating and f.drop_after_rate and rng.random() < f.drop_after_rate:
        decision.fault = "drop_after"
    elif mutating and f.timeout_after_rate and rng.random() < f.timeout_after_rate:
        decision.fault = "timeout_after"
    elif mutating and f.late_apply_rate and rng.random() < f.late_apply_rate:
        decision.fault = "late_apply"
    elif call != "token" and f.trickle_rate and rng.random() < f.trickle_rate:
        decision.fault = "trickle"
    if call in ("token", "issue"):
        return decision
    if f.odd_timestamps_rate and rng.random() < f.odd_timestamps_rate:
        style = f.odd_timestamps_style
        decision.timestamps = rng.choice(TIMESTAMP_STYLES) if style == "mixed" else style
    if call == "lookup" and f.unknown_status_rate and rng.random() < f.unknown_status_rate:
        decision.unknown_status = True
    if f.missing_history_rate and rng.random() < f.missing_history_rate:
        decision.missing_history = rng.choice(("absent", "null"))
    return decision


def _style(style: str, wanted: str, rng: random.Random) -> bool:
    return style == wanted or (style == "mixed" and rng.random() < 0.5)


def _error_kind(decision: Decision, style: str, rng: random.Random) -> None:
    decision.html = _style(style, "html", rng)
    decision.status = rng.choice(GATEWAY_STATUSES) if decision.html else 500


def retry_after_header(seconds: float, as_date: bool, now: float) -> str:
    """Retry-After as delta seconds, or as an HTTP date (rounded up to the next second)."""
    if as_date:
        return format_datetime(datetime.fromtimestamp(math.ceil(now + seconds), UTC), usegmt=True)
    return repr(seconds).removesuffix(".0")


def oddly(payment: dict[str, Any], decision: Decision, unknown_status: str) -> dict[str, Any]:
    """The Payment as a less tidy PG or iamport release might write it."""
    if decision.timestamps is None and not decision.unknown_status and not decision.missing_history:
        return payment
    out = dict(payment)
    if decision.timestamps is not None:
        style = decision.timestamps
        for name in TIMESTAMP_FIELDS:
            out[name] = _odd_time(out.get(name), style)
        out["cancel_history"] = [
            dict(e, cancelled_at=_odd_time(e.get("cancelled_at"), style))
            for e in out.get("cancel_history") or []
        ]
    if decision.unknown_status:
        out["status"] = unknown_status
    if decision.missing_history == "absent":
        out.pop("cancel_history", None)
    elif decision.missing_history == "null":
        out["cancel_history"] = None
    return out


def _odd_time(value: Any, style: str) -> Any:
    if not isinstance(value, int | float) or not value:
        return value
    if style == "ms":
        return int(value * 1000) + 123
    if style == "fraction":
        return value + 0.123456
    if style == "string":
        return str(value)
    return datetime.fromtimestamp(value, KST).isoformat()
