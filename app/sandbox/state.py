"""The iamport simulator's state and rules, free of HTTP so they can be tested directly.

Every answer is `(http_status, body)` in iamport's envelope. Randomness (faults, refusal styles)
comes from one seeded `random.Random`, so a run with the same seed and the same order of calls
repeats itself. Not thread-safe: the server drives it from one asyncio loop.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

CALL_KINDS = ("token", "lookup", "cancel", "issue")
FAULT_CALLS_DEFAULT = ("token", "lookup", "cancel", "issue")
REFUSAL_STYLES = ("code", "http", "mixed")
PAYMENT_STATUSES = ("ready", "paid", "cancelled", "failed")

NOT_FOUND_MESSAGE = "존재하지 않는 결제정보입니다."
NOT_READY_MESSAGES = {
    "paid": "이미 결제완료된 거래건입니다. (already paid)",
    "cancelled": "이미 취소된 거래건입니다. (already cancelled)",
    "failed": "결제실패된 거래건입니다. (payment failed)",
}
UNAUTHORIZED = {"code": -1, "message": "Unauthorized", "response": None}
HTML_ERROR = (
    "<html><head><title>{status} Error</title></head><body><center><h1>{status}</h1>"
    "</center><hr><center>nginx</center></body></html>"
)

Answer = tuple[int, Any]


def envelope(response: Any, code: int = 0, message: str | None = None) -> dict[str, Any]:
    """iamport's answer shape."""
    return {"code": code, "message": message, "response": response}


@dataclass(slots=True)
class SandboxPayment:
    """A payment the simulator holds, with its truth counters."""

    imp_uid: str
    merchant_uid: str
    amount: int
    status: str = "ready"
    name: str | None = None
    confirm_url: str | None = None
    notice_url: str | None = None
    barcode: str | None = None
    channel_key: str | None = None
    custom_data: str | None = None
    buyer_name: str | None = None
    buyer_email: str | None = None
    buyer_tel: str | None = None
    started_at: int = 0
    paid_at: int = 0
    failed_at: int = 0
    cancelled_at: int = 0
    cancel_amount: int = 0
    cancel_reason: str | None = None
    pg_tid: str | None = None
    cancel_history: list[dict[str, Any]] = field(default_factory=list)
    cancel_calls: int = 0
    cancels_applied: int = 0

    def to_api(self) -> dict[str, Any]:
        """The Payment object with every field of iamport's response model."""
        return {
            "imp_uid": self.imp_uid,
            "merchant_uid": self.merchant_uid,
            "pay_method": "cvs",
            "channel": "api",
            "pg_provider": "galaxia",
            "emb_pg_provider": None,
            "pg_tid": self.pg_tid,
            "pg_id": "galaxia_sandbox",
            "escrow": False,
            "apply_num": None,
            "bank_code": None,
            "bank_name": None,
            "card_code": None,
            "card_name": None,
            "card_quota": 0,
            "card_number": None,
            "card_type": None,
            "vbank_code": None,
            "vbank_name": None,
            "vbank_num": None,
            "vbank_holder": None,
            "vbank_date": 0,
            "vbank_issued_at": 0,
            "name": self.name,
            "amount": self.amount,
            "cancel_amount": self.cancel_amount,
            "currency": "KRW",
            "buyer_name": self.buyer_name,
            "buyer_email": self.buyer_email,
            "buyer_tel": self.buyer_tel,
            "buyer_addr": None,
            "buyer_postcode": None,
            "custom_data": self.custom_data,
            "user_agent": "sandbox",
            "status": self.status,
            "started_at": self.started_at,
            "paid_at": self.paid_at,
            "failed_at": self.failed_at,
            "cancelled_at": self.cancelled_at,
            "fail_reason": "sandbox failure" if self.status == "failed" else None,
            "cancel_reason": self.cancel_reason,
            "receipt_url": f"https://sandbox.invalid/receipts/{self.imp_uid}",
            "cancel_history": [dict(e) for e in self.cancel_history],
            "cancel_receipt_urls": [e["receipt_url"] for e in self.cancel_history],
            "cash_receipt_issued": False,
            "customer_uid": None,
            "customer_uid_usage": None,
            "barcode": self.barcode,
        }

    def truth(self) -> dict[str, Any]:
        """The payment plus what the sandbox saw happen to it."""
        body = self.to_api()
        body.update(
            confirm_url=self.confirm_url,
            notice_url=self.notice_url,
            cancel_calls=self.cancel_calls,
            cancels_applied=self.cancels_applied,
        )
        return body


@dataclass(slots=True)
class Faults:
    """What to inject; rates are fractions of the calls named in `calls`."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    rate_429: float = 0.0
    retry_after: float = 1.0
    timeout_before_rate: float = 0.0
    timeout_after_rate: float = 0.0
    hang_seconds: float = 30.0
    refusal_style: str = "mixed"
    calls: tuple[str, ...] = FAULT_CALLS_DEFAULT
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
        return out


def _fault_value(name: str, value: Any) -> Any:
    if name == "calls":
        if not isinstance(value, list | tuple) or not all(v in CALL_KINDS for v in value):
            raise ValueError(f"calls must be a list drawn from {list(CALL_KINDS)}")
        return tuple(value)
    if name == "refusal_style":
        if value not in REFUSAL_STYLES:
            raise ValueError(f"refusal_style must be one of {list(REFUSAL_STYLES)}")
        return value
    if name == "seed":
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError("seed must be an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    if (name.endswith("_rate") or name == "rate_429") and value > 1:
        raise ValueError(f"{name} must be within 0..1")
    return float(value)


@dataclass(slots=True)
class Decision:
    """What the server does with one iamport call before (or instead of) answering it."""

    latency: float = 0.0
    fault: str | None = None  # "error" | "429" | "timeout_before" | "timeout_after"
    status: int = 0  # for "error"
    html: bool = False  # for "error": a proxy's HTML page instead of JSON


@dataclass(slots=True)
class CallEntry:
    seq: int
    call: str
    imp_uid: str | None
    started_at: float
    started_mono: float
    ended_at: float | None = None
    status_code: int | None = None
    applied: bool | None = None
    fault: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "call": self.call,
            "imp_uid": self.imp_uid,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "status_code": self.status_code,
            "applied": self.applied,
            "fault": self.fault,
        }


class Sandbox:
    """One iamport account: its token, its payments, the injected faults and the call log."""

    def __init__(
        self,
        imp_key: str = "sandbox_key",
        imp_secret: str = "sandbox_secret",  # noqa: S107 - the sandbox's well-known default
        token_ttl: float = 1800,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        refusal_style: str = "mixed",
        confirm_url: str | None = None,
        notice_url: str | None = None,
    ) -> None:
        # Defaults for payments created without their own (`stockout dev` points them at the API).
        self.default_confirm_url = confirm_url
        self.default_notice_url = notice_url
        if refusal_style not in REFUSAL_STYLES:
            raise ValueError(f"refusal_style must be one of {list(REFUSAL_STYLES)}")
        self.refusal_style = refusal_style
        self.imp_key = imp_key
        self.imp_secret = imp_secret
        self.token_ttl = token_ttl
        self.seed = seed
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget everything: payments, tokens, faults, log and counters."""
        self.payments: dict[str, SandboxPayment] = {}
        self.by_merchant_uid: dict[str, str] = {}
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.current_token: str | None = None
        self.faults = Faults(refusal_style=self.refusal_style)
        self.rng = random.Random(self.seed)
        self.ids = random.Random(f"ids-{self.seed}")
        self.log: list[CallEntry] = []
        self.calls_by_kind: dict[str, int] = dict.fromkeys(CALL_KINDS, 0)
        self.faults_injected: dict[str, int] = {}
        self.cancels_in_flight: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.overlapping_cancels = 0
        self.cancel_after_applied = 0
        self.cancels_applied_total = 0

    # -- tokens --------------------------------------------------------------------------

    def get_token(self, imp_key: Any, imp_secret: Any) -> Answer:
        """POST /users/getToken: the same token until under a minute is left."""
        if imp_key != self.imp_key or imp_secret != self.imp_secret:
            return 401, envelope(None, -1, "imp_key 또는 imp_secret 이 올바르지 않습니다.")
        now = self.clock()
        token = self.current_token
        expiry = self.tokens.get(token) if token is not None else None
        if token is None or expiry is None or expiry <= now:
            if token is not None:
                self.tokens.pop(token, None)
            token = secrets.token_hex(20)
            expiry = now + self.token_ttl
            self.current_token = token
        elif expiry - now < 60:
            expiry += 300
        self.tokens[token] = expiry
        body = {"access_token": token, "now": int(now), "expired_at": int(expiry)}
        return 200, envelope(body)

    def authorized(self, token: str | None) -> bool:
        """Whether `token` is one we issued and it has not expired."""
        if not token:
            return False
        expiry = self.tokens.get(token)
        return expiry is not None and expiry > self.clock()

    def expire_tokens(self) -> None:
        """Every issued token stops working; the next getToken issues a new one."""
        self.tokens.clear()
        self.current_token = None

    # -- payments ------------------------------------------------------------------------

    def new_imp_uid(self) -> str:
        while True:
            imp_uid = f"imps_{self.ids.randrange(10**12):012d}"
            if imp_uid not in self.payments:
                return imp_uid

    def add_payment(self, spec: dict[str, Any]) -> SandboxPayment:
        """Create a payment from a control-API spec; ValueError if it is not acceptable."""
        status = spec.get("status", "ready")
        if status not in PAYMENT_STATUSES:
            raise ValueError(f"status must be one of {list(PAYMENT_STATUSES)}")
        imp_uid = spec.get("imp_uid") or self.new_imp_uid()
        if not isinstance(imp_uid, str) or imp_uid in self.payments:
            raise ValueError(f"imp_uid {imp_uid!r} is invalid or exists already")
        amount = spec.get("amount", 1000)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError("amount must be a positive integer")
        merchant_uid = spec.get("merchant_uid") or f"order-{imp_uid}"
        now = int(self.clock())
        payment = SandboxPayment(
            imp_uid=imp_uid,
            merchant_uid=str(merchant_uid),
            amount=amount,
            name=spec.get("name") or "sandbox order",
            confirm_url=spec.get("confirm_url", self.default_confirm_url),
            notice_url=spec.get("notice_url", self.default_notice_url),
            barcode=spec.get("barcode") or f"{self.ids.randrange(10**16):016d}",
            channel_key=spec.get("channel_key"),
            custom_data=spec.get("custom_data"),
            buyer_name=spec.get("buyer_name"),
            buyer_email=spec.get("buyer_email"),
            buyer_tel=spec.get("buyer_tel"),
            started_at=now,
        )
        self.payments[imp_uid] = payment
        self.by_merchant_uid[payment.merchant_uid] = imp_uid
        if status != "ready":
            self.set_status(imp_uid, status)
        return payment

    def add_payments(self, specs: Iterable[dict[str, Any]]) -> list[SandboxPayment]:
        """Bulk-create; all or nothing."""
        specs = list(specs)
        created: list[SandboxPayment] = []
        try:
            for spec in specs:
                if not isinstance(spec, dict):
                    raise ValueError("each payment must be an object")
                created.append(self.add_payment(spec))
        except ValueError:
            for p in created:
                self.payments.pop(p.imp_uid, None)
                self.by_merchant_uid.pop(p.merchant_uid, None)
            raise
        return created

    def set_status(self, imp_uid: str, status: str) -> SandboxPayment:
        """A console action; a console cancel adds a cancel_history entry. KeyError if unknown."""
        payment = self.payments[imp_uid]
        now = int(self.clock())
        if status not in PAYMENT_STATUSES:
            raise ValueError(f"status must be one of {list(PAYMENT_STATUSES)}")
        if status == "paid":
            payment.paid_at = now
        elif status == "failed":
            payment.failed_at = now
        elif status == "cancelled" and payment.status != "cancelled":
            self._record_cancel(payment, now, "console cancel")
        payment.status = status
        return payment

    def _record_cancel(self, payment: SandboxPayment, now: int, reason: str) -> None:
        n = len(payment.cancel_history) + 1
        payment.status = "cancelled"
        payment.cancelled_at = now
        payment.cancel_amount = payment.amount
        payment.cancel_reason = reason
        payment.cancel_history.append(
            {
                "pg_tid": f"cvs_cancel_{payment.imp_uid}_{n}",
                "amount": payment.amount,
                "cancelled_at": now,
                "reason": reason,
                "receipt_url": f"https://sandbox.invalid/receipts/{payment.imp_uid}/cancel/{n}",
                "cancellation_id": f"{payment.imp_uid}-c{n}",
            }
        )

    def lookup(self, imp_uid: str) -> Answer:
        """GET /payments/{imp_uid}."""
        payment = self.payments.get(imp_uid)
        if payment is None:
            return 404, envelope(None, -1, NOT_FOUND_MESSAGE)
        return 200, envelope(payment.to_api())

    def cancel(self, imp_uid: str) -> tuple[int, Any, bool]:
        """DELETE /cvs/{imp_uid}: (status, body, applied). Only a `ready` barcode is voided."""
        payment = self.payments.get(imp_uid)
        if payment is None:
            status, body = self._refusal(404, NOT_FOUND_MESSAGE)
            return status, body, False
        if payment.status != "ready":
            status, body = self._refusal(400, NOT_READY_MESSAGES[payment.status])
            return status, body, False
        self._record_cancel(payment, int(self.clock()), "바코드 취소 (cvs barcode cancelled)")
        payment.cancels_applied += 1
        self.cancels_applied_total += 1
        return 200, envelope(payment.to_api()), True

    def _refusal(self, http_status: int, message: str) -> Answer:
        style = self.faults.refusal_style
        if style == "mixed":
            style = self.rng.choice(("code", "http"))
        if style == "code":
            return 200, envelope(None, 1, message)
        if http_status == 400 and self.rng.random() < 0.25:
            http_status = 409
        return http_status, envelope(None, -1, message)

    def issue(self, fields_: dict[str, Any]) -> Answer:
        """POST /cvs: a new barcode in state `ready`."""
        merchant_uid = fields_.get("merchant_uid")
        if not isinstance(merchant_uid, str) or not 0 < len(merchant_uid) <= 40:
            return 400, envelope(None, -1, "merchant_uid 는 1-40자 문자열이어야 합니다.")
        amount = fields_.get("amount")
        if isinstance(amount, str) and amount.isdigit():
            amount = int(amount)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return 400, envelope(None, -1, "amount 는 양의 정수여야 합니다.")
        if merchant_uid in self.by_merchant_uid:
            return 200, envelope(None, 1, "이미 사용된 merchant_uid 입니다. (duplicated)")
        spec = {
            k: fields_.get(k)
            for k in (
                "name",
                "confirm_url",
                "notice_url",
                "barcode",
                "custom_data",
                "buyer_name",
                "buyer_email",
                "buyer_tel",
            )
        }
        spec.update(
            merchant_uid=merchant_uid,
            amount=amount,
            channel_key=fields_.get("channel_key") or fields_.get("pg"),
        )
        payment = self.add_payment(spec)
        return 200, envelope(payment.to_api())

    def confirm_body(self, payment: SandboxPayment, pay_type: str = "cash") -> dict[str, Any]:
        """What iamport POSTs to a barcode's confirm_url when the customer tries to pay."""
        return {
            "event": "Galaxia.Cvs.Confirm",
            "imp_uid": payment.imp_uid,
            "merchant_uid": payment.merchant_uid,
            "status": "ready",
            "extra": {"barcode": payment.barcode, "payType": pay_type},
        }

    def mark_paid(self, imp_uid: str) -> bool:
        """The customer paid (after confirm_url allowed it): only a still-ready barcode pays."""
        payment = self.payments[imp_uid]
        if payment.status != "ready":
            return False
        payment.status = "paid"
        payment.paid_at = int(self.clock())
        payment.pg_tid = f"cvs_pay_{imp_uid}"
        return True

    # -- faults and the call log ---------------------------------------------------------

    def set_faults(self, changes: dict[str, Any]) -> Faults:
        """Merge `changes` into the current faults; a `seed` restarts the random sequence."""
        self.faults = self.faults.merged(changes)
        if "seed" in changes and changes["seed"] is not None:
            self.rng = random.Random(changes["seed"])
        return self.faults

    def clear_faults(self) -> Faults:
        """Back to no faults (and the configured refusal style); the seed restarts."""
        self.faults = Faults(refusal_style=self.refusal_style)
        self.rng = random.Random(self.seed)
        return self.faults

    def decide(self, call: str) -> Decision:
        """Which fault, if any, this call gets, and how long it is delayed."""
        f = self.faults
        decision = Decision()
        if call not in f.calls:
            return decision
        rng = self.rng
        if f.latency_ms or f.latency_jitter_ms:
            jitter = (
                rng.uniform(-f.latency_jitter_ms, f.latency_jitter_ms) if f.latency_jitter_ms else 0
            )
            decision.latency = max(0.0, f.latency_ms + jitter) / 1000
        if f.rate_429 and rng.random() < f.rate_429:
            decision.fault = "429"
        elif f.error_rate and rng.random() < f.error_rate:
            decision.fault = "error"
            decision.status = rng.choice((500, 502, 503))
            decision.html = rng.random() < 0.5
        elif call == "cancel" and f.timeout_before_rate and rng.random() < f.timeout_before_rate:
            decision.fault = "timeout_before"
        elif call == "cancel" and f.timeout_after_rate and rng.random() < f.timeout_after_rate:
            decision.fault = "timeout_after"
        if decision.fault is not None:
            self.faults_injected[decision.fault] = self.faults_injected.get(decision.fault, 0) + 1
        return decision

    def begin_call(self, call: str, imp_uid: str | None = None) -> CallEntry:
        """Log a call's arrival and count what it overlaps with."""
        entry = CallEntry(len(self.log) + 1, call, imp_uid, self.clock(), time.monotonic())
        self.log.append(entry)
        self.calls_by_kind[call] = self.calls_by_kind.get(call, 0) + 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        if call == "cancel" and imp_uid is not None:
            if self.cancels_in_flight.get(imp_uid, 0) > 0:
                self.overlapping_cancels += 1
            self.cancels_in_flight[imp_uid] = self.cancels_in_flight.get(imp_uid, 0) + 1
            payment = self.payments.get(imp_uid)
            if payment is not None:
                payment.cancel_calls += 1
                if payment.cancels_applied > 0:
                    self.cancel_after_applied += 1
        return entry

    def end_call(
        self,
        entry: CallEntry,
        status_code: int,
        applied: bool | None = None,
        fault: str | None = None,
    ) -> None:
        """The call is answered, or its client went away (status 499); no longer in flight."""
        if entry.ended_at is not None:
            return
        entry.ended_at = entry.started_at + (time.monotonic() - entry.started_mono)
        entry.status_code = status_code
        entry.applied = applied
        entry.fault = fault
        self.in_flight -= 1
        if entry.call == "cancel" and entry.imp_uid is not None:
            left = self.cancels_in_flight.get(entry.imp_uid, 1) - 1
            if left > 0:
                self.cancels_in_flight[entry.imp_uid] = left
            else:
                self.cancels_in_flight.pop(entry.imp_uid, None)

    def calls_since(self, since: int) -> list[dict[str, Any]]:
        """Log entries with seq > since."""
        return [e.as_dict() for e in self.log[max(0, since) :]]

    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks."""
        applied_max = max((p.cancels_applied for p in self.payments.values()), default=0)
        return {
            "calls": dict(self.calls_by_kind),
            "calls_total": len(self.log),
            "payments": len(self.payments),
            "payments_by_status": _count(p.status for p in self.payments.values()),
            "cancels_applied": self.cancels_applied_total,
            "cancels_applied_max_per_imp_uid": applied_max,
            "cancel_after_applied": self.cancel_after_applied,
            "overlapping_cancels": self.overlapping_cancels,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "faults_injected": dict(self.faults_injected),
        }


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
