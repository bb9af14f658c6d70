"""The iamport simulator's state and rules, free of HTTP so they can be tested directly.

Every answer is `(http_status, body)` in iamport's envelope. Randomness (faults, refusal styles)
comes from one seeded `random.Random`, so a run with the same seed and the same order of calls
repeats itself. Not thread-safe: the server drives it from one asyncio loop.

The call log keeps, per imp_uid, what a careful client must never do: a mutating call that
arrives while an earlier one for the same payment is still being worked on (an overlap, whether
or not the earlier caller still waits), a mutating call after one applied, a second refund, a
refund without a lookup since the previous mutating call.

Each payment belongs to one merchant (devtools.sandbox.merchants); a call that speaks as another
merchant is answered exactly as for an imp_uid the sandbox does not know, because iamport does
not reveal that another merchant's payment exists. Faults can be scoped to one merchant.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from devtools.sandbox.faults import CALL_KINDS, MUTATING, REFUSAL_STYLES, Decision, Faults, decide
from devtools.sandbox.merchants import (
    DEFAULT_KEY,
    DEFAULT_SECRET,
    Caller,
    Merchant,
    Merchants,
    MerchantStats,
    Tokens,
)

PAYMENT_STATUSES = ("ready", "paid", "cancelled", "failed")
BATCH_LOOKUP_MAX = 100  # imp_uid[] per GET /payments, as iamport allows
# What a merchant may do to a payment in iamport's own admin, behind the service's back:
# refund a paid one in full, take a payment for an unpaid (or failed) one, void an unpaid one.
ADMIN_ACTIONS = {"refund": ("paid",), "pay": ("ready", "failed"), "cancel": ("ready",)}
PAY_METHODS = ("cvs", "vbank", "card")
PG_PROVIDERS = {"cvs": "galaxia", "vbank": "kcp", "card": "html5_inicis"}
VBANK_REFUND_FIELDS = ("refund_holder", "refund_bank", "refund_account")

NOT_FOUND_MESSAGE = "존재하지 않는 결제정보입니다."
NOT_READY_MESSAGES = {
    "paid": "이미 결제완료된 거래건입니다. (already paid)",
    "cancelled": "이미 취소된 거래건입니다. (already cancelled)",
    "failed": "결제실패된 거래건입니다. (payment failed)",
}
WRONG_METHOD_MESSAGE = "해당 결제수단의 거래건이 아닙니다. (pay_method is {method})"
UNAUTHORIZED = {"code": -1, "message": "Unauthorized", "response": None}
BAD_CREDENTIALS = "imp_key 또는 imp_secret 이 올바르지 않습니다."
UNKNOWN_TIER = "등록되지 않은 하위가맹점입니다. (unknown Tier {tier})"
HTML_ERROR = (
    "<html><head><title>{status} Error</title></head><body><center><h1>{status}</h1>"
    "</center><hr><center>nginx</center></body></html>"
)

Answer = tuple[int, Any]
Applied = tuple[int, Any, bool]  # (http status, body, whether the call changed the payment)


def envelope(response: Any, code: int = 0, message: str | None = None) -> dict[str, Any]:
    """iamport's answer shape."""
    return {"code": code, "message": message, "response": response}


@dataclass(slots=True)
class Tally:
    """What the sandbox saw happen to one imp_uid (known to it or not)."""

    mutating_calls: int = 0
    mutating_applied: int = 0
    cancel_calls: int = 0  # DELETE /cvs and DELETE /vbanks received
    cancels_applied: int = 0
    refund_calls: int = 0
    refunds_applied: int = 0
    lookups: int = 0
    overlaps: int = 0
    calls_after_applied: int = 0
    refunds_without_lookup: int = 0
    working: int = 0  # mutating calls received, not yet done applying or refusing
    looked_up: bool = False  # a lookup arrived since the last mutating call

    def counters(self) -> dict[str, int]:
        out = asdict(self)
        del out["working"], out["looked_up"]
        return out


@dataclass(slots=True)
class SandboxPayment:
    """A payment the simulator holds."""

    imp_uid: str
    merchant_uid: str
    amount: int
    imp_key: str = DEFAULT_KEY  # with tier, the merchant it belongs to
    tier: str | None = None
    pay_method: str = "cvs"
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

    def to_api(self) -> dict[str, Any]:
        """The Payment object with every field of iamport's response model."""
        vbank = self.pay_method == "vbank"
        card = self.pay_method == "card"
        return {
            "imp_uid": self.imp_uid,
            "merchant_uid": self.merchant_uid,
            "pay_method": self.pay_method,
            "channel": "api",
            "pg_provider": PG_PROVIDERS[self.pay_method],
            "emb_pg_provider": None,
            "pg_tid": self.pg_tid,
            "pg_id": f"{PG_PROVIDERS[self.pay_method]}_sandbox",
            "escrow": False,
            "apply_num": "30001234" if card and self.paid_at else None,
            "bank_code": None,
            "bank_name": None,
            "card_code": "361" if card else None,
            "card_name": "BC카드" if card else None,
            "card_quota": 0,
            "card_number": "910020*********1" if card else None,
            "card_type": 0 if card else None,
            "vbank_code": "004" if vbank else None,
            "vbank_name": "KB국민은행" if vbank else None,
            "vbank_num": f"9{self.imp_uid[-12:]}" if vbank else None,
            "vbank_holder": "(주)샌드박스" if vbank else None,
            "vbank_date": self.started_at + 3 * 86400 if vbank else 0,
            "vbank_issued_at": self.started_at if vbank else 0,
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
            "barcode": self.barcode if self.pay_method == "cvs" else None,
        }


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
    working: bool = False  # a mutating call the sandbox has not finished applying or refusing
    applied_at: float | None = None
    key_id: str | None = None  # the short id of the imp_key it spoke with; never the secret
    tier: str | None = None  # the Tier header it carried

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "call": self.call,
            "imp_uid": self.imp_uid,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "status_code": self.status_code,
            "applied": self.applied,
            "applied_at": self.applied_at,
            "fault": self.fault,
            "key_id": self.key_id,
            "tier": self.tier,
        }


class Sandbox:
    """iamport for a few merchant accounts: their tokens, their payments, the injected faults
    and the call log. `imp_key`/`imp_secret` is the default merchant (no tier): payments
    created without naming a merchant are its; `merchants` are more."""

    def __init__(
        self,
        imp_key: str = DEFAULT_KEY,
        imp_secret: str = DEFAULT_SECRET,
        token_ttl: float = 1800,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        refusal_style: str = "mixed",
        confirm_url: str | None = None,
        notice_url: str | None = None,
        merchants: Iterable[Merchant] = (),
    ) -> None:
        # Defaults for payments created without their own (`stockout dev` points them at the API).
        self.default_confirm_url = confirm_url
        self.default_notice_url = notice_url
        if refusal_style not in REFUSAL_STYLES:
            raise ValueError(f"refusal_style must be one of {list(REFUSAL_STYLES)}")
        self.refusal_style = refusal_style
        self.imp_key = imp_key
        self.imp_secret = imp_secret
        # Those configured at start; a reset forgets the ones added through the control API.
        self.initial_merchants = Merchants(Merchant(imp_key, imp_secret), merchants)
        self.token_ttl = token_ttl
        self.seed = seed
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget everything: payments, tokens, faults, log and counters."""
        self.payments: dict[str, SandboxPayment] = {}
        # (imp_key, tier, merchant_uid) -> imp_uid: a merchant_uid is unique within its merchant.
        self.by_merchant_uid: dict[tuple[str, str | None, str], str] = {}
        self.merchants = Merchants(self.initial_merchants.default, self.initial_merchants)
        self.tokens = Tokens(self.token_ttl, self.clock)
        self.faults = Faults(refusal_style=self.refusal_style)
        self.scoped_faults: dict[str, Faults] = {}  # merchant id -> its own faults
        self.merchant_stats: dict[str, MerchantStats] = {}
        self.rng = random.Random(self.seed)
        self.ids = random.Random(f"ids-{self.seed}")
        self.log: list[CallEntry] = []
        self.tallies: dict[str, Tally] = {}
        self.calls_by_kind: dict[str, int] = dict.fromkeys(CALL_KINDS, 0)
        self.faults_injected: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.totals = Tally()
        self.cvs_cancelled = 0
        self.vbanks_closed = 0
        self.late_applies_after_hangup = 0

    # -- tokens --------------------------------------------------------------------------

    def get_token(self, imp_key: Any, imp_secret: Any, tier: str | None = None) -> Answer:
        """POST /users/getToken: one token per imp_key, the same until under a minute is left.

        A Tier the agency does not have is refused with 401, like wrong credentials: iamport
        documents 401 as getToken's only refusal, and key, secret and Tier together are what
        name the account, so an unknown Tier is credentials that name nobody (a 403 would say
        "known, but not allowed", which tells a caller the Tier exists somewhere).
        """
        if not self.merchants.credentials_ok(imp_key, imp_secret):
            return 401, envelope(None, -1, BAD_CREDENTIALS)
        if tier is not None and self.merchants.find(Caller(imp_key, tier)) is None:
            return 401, envelope(None, -1, UNKNOWN_TIER.format(tier=tier))
        return 200, envelope(self.tokens.get(imp_key))

    def authorized(self, token: str | None) -> bool:
        """Whether `token` is one we issued and it has not expired."""
        return self.tokens.key_of(token) is not None

    def token_key(self, token: str | None) -> str | None:
        """The imp_key a valid token was issued to."""
        return self.tokens.key_of(token)

    def expire_tokens(self, imp_key: str | None = None) -> None:
        """The tokens of `imp_key` (None: every token) stop working; the next getToken issues a
        new one."""
        self.tokens.expire(imp_key)

    # -- merchants -----------------------------------------------------------------------

    def add_merchants(self, merchants: Iterable[Merchant]) -> list[Merchant]:
        """Add accounts, all or nothing; ValueError when one conflicts with a known one."""
        merchants = list(merchants)
        self.merchants.check(merchants)
        return [self.merchants.add(m) for m in merchants]

    def merchant(self, imp_key: Any = None, tier: Any = None) -> Merchant:
        """The merchant named by a control request (no imp_key: the default one)."""
        if imp_key is None and tier is None:
            return self.merchants.default
        key = self.merchants.default.imp_key if imp_key is None else imp_key
        found = self.merchants.find(Caller(key, tier)) if isinstance(key, str) else None
        if found is None:
            raise ValueError(f"no merchant with that imp_key and tier {tier!r}")
        return found

    def owns(self, payment: SandboxPayment, caller: Caller | None) -> bool:
        """Whether `caller` (None: the default merchant) speaks as the payment's merchant."""
        who = caller or self.merchants.default.caller
        return payment.imp_key == who.imp_key and payment.tier == who.tier

    def _visible(self, imp_uid: str | None, caller: Caller | None) -> SandboxPayment | None:
        """The payment as the caller may see it: another merchant's is not there."""
        payment = self.payments.get(imp_uid) if imp_uid is not None else None
        if payment is None or self.owns(payment, caller):
            return payment
        stats = self._stats_of(caller)
        if stats is not None:
            stats.not_its_payment += 1
        return None

    def _stats_of(self, caller: Caller | None) -> MerchantStats | None:
        merchant = self.merchants.find(caller or self.merchants.default.caller)
        return None if merchant is None else self.stats_for(merchant)

    def stats_for(self, merchant: Merchant) -> MerchantStats:
        stats = self.merchant_stats.get(merchant.id)
        if stats is None:
            stats = self.merchant_stats[merchant.id] = MerchantStats()
        return stats

    def _payment_stats(self, payment: SandboxPayment) -> MerchantStats | None:
        return self._stats_of(Caller(payment.imp_key, payment.tier))

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
        pay_method = spec.get("pay_method", "cvs")
        if pay_method not in PAY_METHODS:
            raise ValueError(f"pay_method must be one of {list(PAY_METHODS)}")
        imp_uid = spec.get("imp_uid") or self.new_imp_uid()
        if not isinstance(imp_uid, str) or imp_uid in self.payments:
            raise ValueError(f"imp_uid {imp_uid!r} is invalid or exists already")
        amount = spec.get("amount", 1000)
        if not _positive_int(amount):
            raise ValueError("amount must be a positive integer")
        merchant_uid = spec.get("merchant_uid") or f"order-{imp_uid}"
        merchant = self.merchant(spec.get("imp_key"), spec.get("tier"))
        # A payment cancelled (in the console, say) this many seconds before it is created here:
        # one cancelled at iamport well before any call of ours could have reached it.
        cancelled_ago = spec.get("cancelled_ago", 0)
        if isinstance(cancelled_ago, bool) or not isinstance(cancelled_ago, int | float):
            raise ValueError("cancelled_ago must be a number of seconds")
        if not 0 <= cancelled_ago < 10**9 or (cancelled_ago and status != "cancelled"):
            raise ValueError("cancelled_ago must be 0 or more, and only with status cancelled")
        now = int(self.clock())
        payment = SandboxPayment(
            imp_uid=imp_uid,
            merchant_uid=str(merchant_uid),
            amount=amount,
            imp_key=merchant.imp_key,
            tier=merchant.tier,
            pay_method=pay_method,
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
        self.by_merchant_uid[_uid_key(payment)] = imp_uid
        if status != "ready":
            self.set_status(imp_uid, status)
        if cancelled_ago:
            payment.cancelled_at = now - int(cancelled_ago)
            payment.cancel_history[-1]["cancelled_at"] = payment.cancelled_at
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
                self.by_merchant_uid.pop(_uid_key(p), None)
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
            payment.pg_tid = payment.pg_tid or f"{payment.pay_method}_pay_{imp_uid}"
        elif status == "failed":
            payment.failed_at = now
        elif status == "cancelled" and payment.status != "cancelled":
            self._record_cancel(payment, now, "console cancel")
        payment.status = status
        return payment

    def admin(self, imp_uid: str, action: str) -> SandboxPayment:
        """A change made in iamport's admin (ADMIN_ACTIONS): no notification, no call log
        entry, nothing the service could have seen. KeyError if unknown, ValueError if the
        action does not fit the payment's status."""
        payment = self.payments[imp_uid]
        allowed = ADMIN_ACTIONS.get(action)
        if allowed is None:
            raise ValueError(f"action must be one of {sorted(ADMIN_ACTIONS)}")
        if payment.status not in allowed:
            raise ValueError(f"cannot {action} a payment that is {payment.status}")
        now = int(self.clock())
        if action == "refund":
            self._record_cancel(payment, now, "관리자 환불 (refunded in admin)", kind="refund")
        elif action == "pay":
            payment.status = "paid"
            payment.paid_at = now
            payment.failed_at = 0
            payment.pg_tid = payment.pg_tid or f"{payment.pay_method}_pay_{imp_uid}"
        else:
            self._record_cancel(payment, now, "관리자 취소 (cancelled in admin)")
        return payment

    def set_amounts(
        self, imp_uid: str, amount: Any = None, cancel_amount: Any = None
    ) -> SandboxPayment:
        """A console correction of the amounts. KeyError if unknown, ValueError if invalid."""
        payment = self.payments[imp_uid]
        new_amount = payment.amount if amount is None else amount
        new_cancel = payment.cancel_amount if cancel_amount is None else cancel_amount
        if not _positive_int(new_amount):
            raise ValueError("amount must be a positive integer")
        if isinstance(new_cancel, bool) or not isinstance(new_cancel, int):
            raise ValueError("cancel_amount must be an integer")
        if not 0 <= new_cancel <= new_amount:
            raise ValueError("cancel_amount must be within 0..amount")
        payment.amount, payment.cancel_amount = new_amount, new_cancel
        return payment

    def _record_cancel(
        self, payment: SandboxPayment, now: int, reason: str, kind: str = "cancel"
    ) -> None:
        n = len(payment.cancel_history) + 1
        amount = payment.amount - payment.cancel_amount
        payment.status = "cancelled"
        payment.cancelled_at = now
        payment.cancel_amount = payment.amount
        payment.cancel_reason = reason
        payment.cancel_history.append(
            {
                "pg_tid": f"{payment.pay_method}_{kind}_{payment.imp_uid}_{n}",
                "amount": amount,
                "cancelled_at": now,
                "reason": reason,
                "receipt_url": f"https://sandbox.invalid/receipts/{payment.imp_uid}/cancel/{n}",
                "cancellation_id": f"{payment.imp_uid}-c{n}",
            }
        )

    # Every call below takes the Caller it speaks as; None is the default merchant (how the
    # rules are tested without HTTP).

    def lookup(self, imp_uid: str, caller: Caller | None = None) -> Answer:
        """GET /payments/{imp_uid}."""
        payment = self._visible(imp_uid, caller)
        if payment is None:
            return 404, envelope(None, -1, NOT_FOUND_MESSAGE)
        return 200, envelope(payment.to_api())

    def lookup_many(self, imp_uids: list[str], caller: Caller | None = None) -> Answer:
        """GET /payments?imp_uid[]=...: up to BATCH_LOOKUP_MAX payments in one answer, in the
        order asked (repeats once); 207 when only some are found, 404 when none is."""
        if not imp_uids:
            return 400, envelope(None, -1, "imp_uid[] 가 필요합니다. (imp_uid[] required)")
        if len(imp_uids) > BATCH_LOOKUP_MAX:
            message = f"imp_uid[] 는 최대 {BATCH_LOOKUP_MAX}개입니다. (at most {BATCH_LOOKUP_MAX})"
            return 400, envelope(None, -1, message)
        found: list[dict[str, Any]] = []
        for imp_uid in dict.fromkeys(imp_uids):
            tally = self.tally(imp_uid)
            tally.lookups += 1
            tally.looked_up = True
            self.totals.lookups += 1
            payment = self._visible(imp_uid, caller)
            if payment is not None:
                found.append(payment.to_api())
        if not found:
            return 404, envelope(None, -1, NOT_FOUND_MESSAGE)
        return (200 if len(found) == len(set(imp_uids)) else 207), envelope(found)

    def cancel(self, imp_uid: str, caller: Caller | None = None) -> Applied:
        """DELETE /cvs/{imp_uid}: only a `ready` barcode is voided."""
        return self._close(imp_uid, "cvs", "바코드 취소 (cvs barcode cancelled)", caller)

    def close_vbank(self, imp_uid: str, caller: Caller | None = None) -> Applied:
        """DELETE /vbanks/{imp_uid}: only a `ready` virtual account is closed."""
        return self._close(imp_uid, "vbank", "가상계좌 발급 취소 (vbank closed)", caller)

    def _close(self, imp_uid: str, method: str, reason: str, caller: Caller | None) -> Applied:
        style = self.faults_for(caller).refusal_style
        payment = self._visible(imp_uid, caller)
        if payment is None:
            return (*self._refusal(404, NOT_FOUND_MESSAGE, style), False)
        if payment.pay_method != method:
            message = WRONG_METHOD_MESSAGE.format(method=payment.pay_method)
            return (*self._refusal(400, message, style), False)
        if payment.status != "ready":
            return (*self._refusal(400, NOT_READY_MESSAGES[payment.status], style), False)
        self._record_cancel(payment, int(self.clock()), reason)
        tally = self.tally(imp_uid)
        tally.cancels_applied += 1
        self.totals.cancels_applied += 1
        stats = self._payment_stats(payment)
        if stats is not None:
            stats.cancels_applied += 1
        if method == "cvs":
            self.cvs_cancelled += 1
        else:
            self.vbanks_closed += 1
        self._applied(imp_uid)
        return 200, envelope(payment.to_api()), True

    def refund(self, fields_: dict[str, Any], caller: Caller | None = None) -> Applied:
        """POST /payments/cancel: a full refund of a paid payment; refusals are 200, code != 0."""
        payment = self._visible(self.refund_target(fields_, caller), caller)
        if payment is None:
            return 200, envelope(None, -1, NOT_FOUND_MESSAGE), False
        if payment.status != "paid":
            return 200, envelope(None, 1, NOT_READY_MESSAGES.get(payment.status, "not paid")), False
        balance = payment.amount - payment.cancel_amount
        checksum = _number(fields_.get("checksum"))
        if checksum is None:
            return 200, envelope(None, 1, "checksum 이 필요합니다. (checksum required)"), False
        if checksum != balance:
            message = f"checksum 불일치: 취소가능잔액 {balance} (checksum mismatch)"
            return 200, envelope(None, 1, message), False
        amount = _number(fields_.get("amount"))
        if amount is not None and amount != balance:
            return (
                200,
                envelope(None, 1, "부분취소는 지원하지 않습니다. (full refunds only)"),
                False,
            )
        if payment.pay_method == "vbank" and not all(fields_.get(k) for k in VBANK_REFUND_FIELDS):
            message = "가상계좌 환불은 환불계좌 정보가 필요합니다. (refund account required)"
            return 200, envelope(None, 1, message), False
        reason = str(fields_.get("reason") or "환불 (refund)")
        self._record_cancel(payment, int(self.clock()), reason, kind="refund")
        self.tally(payment.imp_uid).refunds_applied += 1
        self.totals.refunds_applied += 1
        stats = self._payment_stats(payment)
        if stats is not None:
            stats.refunds_applied += 1
        self._applied(payment.imp_uid)
        return 200, envelope(payment.to_api()), True

    def refund_target(self, fields_: dict[str, Any], caller: Caller | None = None) -> str | None:
        """The imp_uid a refund request names (by imp_uid, or else by the caller's merchant_uid)."""
        imp_uid = fields_.get("imp_uid")
        if isinstance(imp_uid, str) and imp_uid:
            return imp_uid
        merchant_uid = fields_.get("merchant_uid")
        if not isinstance(merchant_uid, str):
            return None
        who = caller if caller is not None and caller.imp_key else self.merchants.default.caller
        return self.by_merchant_uid.get((str(who.imp_key), who.tier, merchant_uid))

    def _applied(self, imp_uid: str) -> None:
        self.tally(imp_uid).mutating_applied += 1
        self.totals.mutating_applied += 1

    def _refusal(self, http_status: int, message: str, style: str) -> Answer:
        if style == "mixed":
            style = self.rng.choice(("code", "http"))
        if style == "code":
            return 200, envelope(None, 1, message)
        if http_status == 400 and self.rng.random() < 0.25:
            http_status = 409
        return http_status, envelope(None, -1, message)

    def issue(self, fields_: dict[str, Any], caller: Caller | None = None) -> Answer:
        """POST /cvs: a new barcode in state `ready`, the caller's merchant's."""
        merchant = self.merchants.find(caller or self.merchants.default.caller)
        if merchant is None:  # a Tier the agency does not have: refused as getToken refuses it
            tier = caller.tier if caller is not None else None
            return 401, envelope(None, -1, UNKNOWN_TIER.format(tier=tier))
        merchant_uid = fields_.get("merchant_uid")
        if not isinstance(merchant_uid, str) or not 0 < len(merchant_uid) <= 40:
            return 400, envelope(None, -1, "merchant_uid 는 1-40자 문자열이어야 합니다.")
        amount = fields_.get("amount")
        if isinstance(amount, str) and amount.isdigit():
            amount = int(amount)
        if not _positive_int(amount):
            return 400, envelope(None, -1, "amount 는 양의 정수여야 합니다.")
        if (merchant.imp_key, merchant.tier, merchant_uid) in self.by_merchant_uid:
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
            imp_key=merchant.imp_key,
            tier=merchant.tier,
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
        """The customer paid (a barcode: after confirm_url allowed it); only a ready one pays."""
        payment = self.payments[imp_uid]
        if payment.status != "ready":
            return False
        payment.status = "paid"
        payment.paid_at = int(self.clock())
        payment.pg_tid = f"{payment.pay_method}_pay_{imp_uid}"
        return True

    # -- faults and the call log ---------------------------------------------------------

    def set_faults(self, changes: dict[str, Any]) -> Faults:
        """Merge `changes` into the current faults; a `seed` restarts the random sequence.

        With `imp_key` (and `tier`), they are that merchant's own faults, merged into its own
        (starting from none): its calls get those instead of the unscoped ones, so one account
        can be in a storm while the others are served as usual.
        """
        changes = dict(changes)
        scope = self._scope(changes.pop("imp_key", None), changes.pop("tier", None))
        if scope is None:
            self.faults = self.faults.merged(changes)
            merged = self.faults
        else:
            own = self.scoped_faults.get(scope.id, Faults(refusal_style=self.refusal_style))
            merged = self.scoped_faults[scope.id] = own.merged(changes)
        if "seed" in changes and changes["seed"] is not None:
            self.rng = random.Random(changes["seed"])
        return merged

    def clear_faults(self, imp_key: Any = None, tier: Any = None) -> Faults:
        """Back to no faults (and the configured refusal style), every merchant's own too; the
        seed restarts. With `imp_key` (and `tier`): that merchant follows the unscoped ones
        again."""
        scope = self._scope(imp_key, tier)
        if scope is not None:
            self.scoped_faults.pop(scope.id, None)
            return self.faults
        self.faults = Faults(refusal_style=self.refusal_style)
        self.scoped_faults.clear()
        self.rng = random.Random(self.seed)
        return self.faults

    def _scope(self, imp_key: Any, tier: Any) -> Merchant | None:
        if imp_key is None:
            if tier is not None:
                raise ValueError("tier needs imp_key")
            return None
        return self.merchant(imp_key, tier)

    def fault_scope(self, caller: Caller | None) -> Merchant | None:
        """The merchant whose own faults this caller's calls get; None: the unscoped ones."""
        if not self.scoped_faults:
            return None
        merchant = self.merchants.find(caller or self.merchants.default.caller)
        return merchant if merchant is not None and merchant.id in self.scoped_faults else None

    def faults_for(self, caller: Caller | None) -> Faults:
        scope = self.fault_scope(caller)
        return self.faults if scope is None else self.scoped_faults[scope.id]

    def decide(
        self, call: str, imp_uid: str | None = None, caller: Caller | None = None
    ) -> Decision:
        """Which fault, if any, this call gets, and how long it is delayed."""
        decision = decide(self.faults_for(caller), self.rng, call, imp_uid)
        if decision.fault is not None:
            self.faults_injected[decision.fault] = self.faults_injected.get(decision.fault, 0) + 1
            stats = self._stats_of(caller) if caller is not None else None
            if stats is not None:
                injected = stats.faults_injected
                injected[decision.fault] = injected.get(decision.fault, 0) + 1
        return decision

    def tally(self, imp_uid: str) -> Tally:
        tally = self.tallies.get(imp_uid)
        if tally is None:
            tally = self.tallies[imp_uid] = Tally()
        return tally

    def begin_call(
        self, call: str, imp_uid: str | None = None, caller: Caller | None = None
    ) -> CallEntry:
        """Log a call's arrival and count what it overlaps with or comes after."""
        entry = CallEntry(len(self.log) + 1, call, imp_uid, self.clock(), time.monotonic())
        if caller is not None:
            entry.key_id = self.merchants.key_id(caller.imp_key)
            entry.tier = caller.tier
            stats = self._stats_of(caller)
            if stats is not None:
                stats.calls += 1
        self.log.append(entry)
        self.calls_by_kind[call] = self.calls_by_kind.get(call, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if imp_uid is None:
            return entry
        tally, totals = self.tally(imp_uid), self.totals
        if call == "lookup":
            tally.lookups += 1
            totals.lookups += 1
            tally.looked_up = True
        if call not in MUTATING:
            return entry
        tally.mutating_calls += 1
        totals.mutating_calls += 1
        if call == "refund":
            tally.refund_calls += 1
            totals.refund_calls += 1
        else:
            tally.cancel_calls += 1
            totals.cancel_calls += 1
        if tally.working > 0:
            tally.overlaps += 1
            totals.overlaps += 1
        if tally.mutating_applied > 0:
            tally.calls_after_applied += 1
            totals.calls_after_applied += 1
        tally.working += 1
        entry.working = True
        entry.applied = False
        return entry

    def admit(self, entry: CallEntry) -> None:
        """A mutating call passed the token check and reaches the application: a refund must
        have a lookup after the previous call that did (a 401 or 429 never got this far)."""
        if entry.imp_uid is None or entry.call not in MUTATING:
            return
        tally = self.tally(entry.imp_uid)
        if entry.call == "refund" and not tally.looked_up:
            tally.refunds_without_lookup += 1
            self.totals.refunds_without_lookup += 1
        tally.looked_up = False

    def finish_work(self, entry: CallEntry, applied: bool | None = None) -> None:
        """The sandbox is done with a mutating call: applied, refused, or given up."""
        if applied is not None:
            entry.applied = applied
            if applied:
                entry.applied_at = entry.started_at + (time.monotonic() - entry.started_mono)
                if entry.status_code is not None:
                    self.late_applies_after_hangup += 1  # the caller had already gone
        if not entry.working:
            return
        entry.working = False
        if entry.imp_uid is not None:
            self.tally(entry.imp_uid).working -= 1

    def end_call(
        self,
        entry: CallEntry,
        status_code: int,
        applied: bool | None = None,
        fault: str | None = None,
        still_working: bool = False,
    ) -> None:
        """The call is answered, or its client went away (status 499); no longer in flight.

        Unless `still_working`, the sandbox is done with it too (see finish_work).
        """
        if entry.ended_at is not None:
            return
        entry.ended_at = entry.started_at + (time.monotonic() - entry.started_mono)
        entry.status_code = status_code
        if applied is not None or entry.applied is None:
            entry.applied = applied
        entry.fault = fault
        self.in_flight -= 1
        if not still_working:
            self.finish_work(entry)

    def calls_since(self, since: int) -> list[dict[str, Any]]:
        """Log entries with seq > since."""
        return [e.as_dict() for e in self.log[max(0, since) :]]

    def truth(self, imp_uid: str) -> dict[str, Any]:
        """The payment plus what the sandbox saw happen to it. KeyError if unknown."""
        payment = self.payments[imp_uid]
        body = payment.to_api()
        body.update(confirm_url=payment.confirm_url, notice_url=payment.notice_url)
        body["merchant"] = self.merchant(payment.imp_key, payment.tier).id
        body.update(self.tally(imp_uid).counters())
        return body

    def stats(self) -> dict[str, Any]:
        """Counters for tests, benchmarks and the chaos checker."""
        tallies = self.tallies.values()
        totals = self.totals.counters()
        return {
            "calls": dict(self.calls_by_kind),
            "calls_total": len(self.log),
            "payments": len(self.payments),
            "payments_by_status": _count(p.status for p in self.payments.values()),
            **totals,
            "cvs_cancelled": self.cvs_cancelled,
            "vbanks_closed": self.vbanks_closed,
            "late_applies_after_hangup": self.late_applies_after_hangup,
            "cancels_applied_max_per_imp_uid": max((t.cancels_applied for t in tallies), default=0),
            "refunds_applied_max_per_imp_uid": max((t.refunds_applied for t in tallies), default=0),
            "mutating_applied_max_per_imp_uid": max(
                (t.mutating_applied for t in tallies), default=0
            ),
            # Names kept from before refunds and virtual accounts: every mutating call counts.
            "overlapping_cancels": totals["overlaps"],
            "cancel_after_applied": totals["calls_after_applied"],
            "working": sum(t.working for t in tallies),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "faults_injected": dict(self.faults_injected),
            "by_merchant": self.stats_by_merchant(),
        }

    def stats_by_merchant(self) -> dict[str, dict[str, Any]]:
        """Per merchant id: who it is, its payments, and its MerchantStats."""
        owners: dict[tuple[str, str | None], int] = {}
        for p in self.payments.values():
            owners[p.imp_key, p.tier] = owners.get((p.imp_key, p.tier), 0) + 1
        return {
            m.id: {
                "key_id": m.public()["key_id"],
                "tier": m.tier,
                "payments": owners.get((m.imp_key, m.tier), 0),
                **self.stats_for(m).as_dict(),
            }
            for m in self.merchants
        }


def _uid_key(payment: SandboxPayment) -> tuple[str, str | None, str]:
    return payment.imp_key, payment.tier, payment.merchant_uid


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> float | None:
    """A JSON or form number (`"1000"` from a form); None when absent or not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
