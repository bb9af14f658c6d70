"""PortOne V2 in the sandbox: stores, payments, idempotency keys and their rules, free of HTTP.

Kept apart from the iamport V1 state (state.py) because the two APIs share nothing but the
host: V2 has no token (the API secret is the credential), no envelope (an error is
`{"type", "message"}` under an HTTP status), merchant-chosen payment ids, seven statuses and
cancellations that can be accepted now and finish later.

Every answer is `(http_status, body)`. Times come from one injectable clock, and a REQUESTED
cancellation that is due is settled whenever its payment is touched (`settle`), so the rules
hold without a background task; the server also wakes up at the due time to send webhooks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from devtools.sandbox.faults import Faults

STATUSES = (
    "READY",
    "PENDING",
    "VIRTUAL_ACCOUNT_ISSUED",
    "PAID",
    "PARTIAL_CANCELLED",
    "CANCELLED",
    "FAILED",
)
METHODS = {
    "virtual_account": "PaymentMethodVirtualAccount",
    "card": "PaymentMethodCard",
    "convenience_store": "PaymentMethodConvenienceStore",
}
PAID_STATUSES = ("PAID", "PARTIAL_CANCELLED")
CANCELLATION_OUTCOMES = ("SUCCEEDED", "FAILED")
DEFAULT_STORE = "store-sandbox"
DEFAULT_API_SECRET = "portone_sandbox_secret"  # noqa: S105 - the sandbox's well-known default
IDEMPOTENCY_TTL = 3 * 3600.0  # PortOne keeps a key 3 hours ("subject to change")
# PortOne's docs: 16-256 of letters, digits, '-' and '_'. The IETF draft it points to sends
# the key as an RFC 8941 string ("..."); both forms are taken, and name the same key.
KEY_CHARS = re.compile(r"[A-Za-z0-9_-]{16,256}")
PAYMENT_ID_MAX = 200
WEBHOOK_VERSION = "2024-04-25"

Answer = tuple[int, Any]
Applied = tuple[int, Any, bool]  # (http status, body, whether the call changed the payment)


def error(kind: str, message: str) -> dict[str, Any]:
    """PortOne V2's error body."""
    return {"type": kind, "message": message}


def iso(when: float | None) -> str | None:
    """RFC 3339 in UTC with milliseconds, as PortOne writes its times."""
    if when is None:
        return None
    moment = datetime.fromtimestamp(when, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def idempotency_key(header: str | None) -> str | None:
    """The key named by an Idempotency-Key header; ValueError for a malformed one."""
    if header is None:
        return None
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not KEY_CHARS.fullmatch(value):
        raise ValueError("Idempotency-Key must be 16-256 letters, digits, '-' or '_'")
    return value


def webhook_secret_bytes(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_` + base64); ValueError otherwise."""
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret is whsec_ followed by base64")
    try:
        return base64.b64decode(secret[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def sign_webhook(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header of the Standard Webhooks spec (one v1 signature)."""
    signed = f"{webhook_id}.{timestamp}.{body}".encode()
    mac = hmac.new(webhook_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(slots=True)
class V2Store:
    """One V2 store: its id, the API secret that speaks for it, where its webhooks go."""

    store_id: str
    api_secret: str = field(repr=False)
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.store_id, str) or not self.store_id:
            raise ValueError("store_id must be a non-empty string")
        if not isinstance(self.api_secret, str) or not self.api_secret:
            raise ValueError("api_secret must be a non-empty string")
        if self.webhook_url is not None and not isinstance(self.webhook_url, str):
            raise ValueError("webhook_url must be a string or null")
        if self.webhook_secret is not None:
            if not isinstance(self.webhook_secret, str):
                raise ValueError("webhook_secret must be a string or null")
            webhook_secret_bytes(self.webhook_secret)

    def public(self) -> dict[str, Any]:
        """What the control API shows: never a secret."""
        return {
            "store_id": self.store_id,
            "webhook_url": self.webhook_url,
            "webhook_signed": self.webhook_secret is not None,
        }


def parse_store(text: str) -> V2Store:
    """`STORE_ID:SECRET` (the CLI's form); ValueError otherwise."""
    store_id, sep, secret = text.partition(":")
    if not sep:
        raise ValueError("expected STORE_ID:SECRET")
    return V2Store(store_id, secret)


def store_from_spec(spec: Any) -> V2Store:
    if not isinstance(spec, dict):
        raise ValueError("each store must be an object")
    unknown = set(spec) - {"store_id", "api_secret", "webhook_url", "webhook_secret"}
    if unknown:
        raise ValueError(f"unknown store fields: {sorted(unknown)}")
    return V2Store(
        spec.get("store_id", ""),
        spec.get("api_secret", ""),
        spec.get("webhook_url"),
        spec.get("webhook_secret"),
    )


@dataclass(slots=True)
class V2Cancellation:
    id: str
    total_amount: int
    reason: str
    requested_at: float
    status: str = "SUCCEEDED"  # REQUESTED | SUCCEEDED | FAILED
    cancelled_at: float | None = None
    due_at: float | None = None  # REQUESTED: when it finishes
    outcome: str = "SUCCEEDED"  # REQUESTED: how it finishes
    trigger: str = "API"  # API | CONSOLE (the merchant's admin)

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "id": self.id,
            "totalAmount": self.total_amount,
            "taxFreeAmount": 0,
            "vatAmount": 0,
            "reason": self.reason,
            "requestedAt": iso(self.requested_at),
            "trigger": self.trigger,
        }
        if self.status == "SUCCEEDED":
            out["pgCancellationId"] = f"pgc_{self.id}"
            out["cancelledAt"] = iso(self.cancelled_at)
            out["receiptUrl"] = f"https://sandbox.invalid/receipts/{self.id}"
        return out


@dataclass(slots=True)
class V2Payment:
    payment_id: str
    store_id: str
    amount: int
    method: str = "card"
    status: str = "PAID"
    order_name: str = "sandbox order"
    currency: str = "KRW"
    requested_at: float = 0.0
    updated_at: float = 0.0
    status_changed_at: float = 0.0
    paid_at: float | None = None
    failed_at: float | None = None
    cancelled_at: float | None = None
    issued_at: float | None = None
    failure_reason: str | None = None
    cancellations: list[V2Cancellation] = field(default_factory=list)

    @property
    def cancelled(self) -> int:
        return sum(c.total_amount for c in self.cancellations if c.status == "SUCCEEDED")

    @property
    def requested(self) -> int:
        return sum(c.total_amount for c in self.cancellations if c.status == "REQUESTED")

    @property
    def cancellable(self) -> int:
        """What a new cancel may take: a REQUESTED cancellation holds its amount until it
        finishes, so two cancels never spend the same balance."""
        if self.status not in PAID_STATUSES:
            return 0
        return self.amount - self.cancelled - self.requested

    def to_api(self) -> dict[str, Any]:
        """PortOne's Payment object for the status (the fields the status's schema has)."""
        out: dict[str, Any] = {
            "status": self.status,
            "id": self.payment_id,
            "transactionId": f"tx_{self.payment_id}",
            "merchantId": "merchant-sandbox",
            "storeId": self.store_id,
            "channel": {
                "type": "TEST",
                "id": "channel-sandbox",
                "key": "channel-key-sandbox",
                "name": "sandbox",
                "pgProvider": "TOSSPAYMENTS" if self.method != "convenience_store" else "KPN",
                "pgMerchantId": "sandbox",
            },
            "version": "V2",
            "requestedAt": iso(self.requested_at),
            "updatedAt": iso(self.updated_at),
            "statusChangedAt": iso(self.status_changed_at),
            "orderName": self.order_name,
            "amount": {
                "total": self.amount,
                "taxFree": 0,
                "vat": 0,
                "supply": self.amount,
                "discount": 0,
                "paid": self.amount if self.paid_at is not None else 0,
                "cancelled": self.cancelled,
                "cancelledTaxFree": 0,
            },
            "currency": self.currency,
            "customer": {},
            "isCulturalExpense": False,
            "products": [],
        }
        if self.status not in ("READY",):
            out["method"] = self._method()
        if self.status in ("PAID", "PARTIAL_CANCELLED", "CANCELLED", "VIRTUAL_ACCOUNT_ISSUED"):
            out["pgTxId"] = f"pg_{self.payment_id}"
        if self.paid_at is not None and self.status in (*PAID_STATUSES, "CANCELLED"):
            out["paidAt"] = iso(self.paid_at)
            out["receiptUrl"] = f"https://sandbox.invalid/receipts/{self.payment_id}"
        if self.status in ("PARTIAL_CANCELLED", "CANCELLED"):
            out["cancelledAt"] = iso(self.cancelled_at)
        if self.status in (*PAID_STATUSES, "CANCELLED"):
            # A REQUESTED or FAILED cancellation shows on a still-paid payment too: where else
            # would a lookup tell that one is under way.
            out["cancellations"] = [c.to_api() for c in self.cancellations]
        if self.status == "FAILED":
            out["failedAt"] = iso(self.failed_at)
            out["failure"] = {"reason": self.failure_reason, "pgCode": None, "pgMessage": None}
        return out

    def _method(self) -> dict[str, Any]:
        kind = METHODS[self.method]
        if self.method == "virtual_account":
            return {
                "type": kind,
                "bank": "SHINHAN",
                "accountNumber": "56211112345678",
                "accountType": "NORMAL",
                "remitteeName": "sandbox",
                "expiredAt": iso((self.issued_at or self.requested_at) + 7 * 86400),
                "issuedAt": iso(self.issued_at or self.requested_at),
            }
        if self.method == "card":
            return {"type": kind, "card": {"issuer": "SHINHAN_CARD"}, "installmentMonth": 0}
        return {"type": kind, "store": "LAWSON", "confirmationNumber": "1234567890"}


@dataclass(slots=True)
class V2Tally:
    """What the sandbox saw happen to one paymentId (known to it or not)."""

    calls: int = 0
    lookups: int = 0
    close_calls: int = 0
    closes_applied: int = 0
    cancel_calls: int = 0
    refunds_requested: int = 0  # cancels answered REQUESTED
    refunds_applied: int = 0  # cancellations that SUCCEEDED through the API; >1 is a double refund
    without_key: int = 0  # mutating calls without an Idempotency-Key
    key_reused: int = 0  # a key sent again with a different request
    replays: int = 0  # answered from a key's stored answer
    outstanding: int = 0  # 409 IDEMPOTENCY_OUTSTANDING_REQUEST
    overlaps: int = 0  # mutating calls that arrived while another was being worked on
    working: int = 0

    def counters(self) -> dict[str, int]:
        out = asdict(self)
        del out["working"]
        return out


@dataclass(slots=True)
class KeyRecord:
    """A key's first request and, once it is done, its answer."""

    fingerprint: str
    created_at: float
    payment_id: str
    status: int | None = None  # None: still being processed
    body: Any = None


@dataclass(slots=True)
class V2Settings:
    """How cancels behave: a share of them (optionally only for some payments) is answered
    REQUESTED and finishes `requested_seconds` later as `requested_outcome`."""

    idempotency_ttl_seconds: float = IDEMPOTENCY_TTL
    requested_rate: float = 0.0
    requested_seconds: float = 2.0
    requested_outcome: str = "SUCCEEDED"
    requested_payment_ids: tuple[str, ...] | None = None

    def merged(self, changes: dict[str, Any]) -> V2Settings:
        values = asdict(self)
        unknown = set(changes) - set(values)
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for name, value in changes.items():
            values[name] = _setting(name, value)
        return V2Settings(**values)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        ids = self.requested_payment_ids
        out["requested_payment_ids"] = None if ids is None else list(ids)
        return out


def _setting(name: str, value: Any) -> Any:
    if name == "requested_outcome":
        if value not in CANCELLATION_OUTCOMES:
            raise ValueError(f"requested_outcome must be one of {list(CANCELLATION_OUTCOMES)}")
        return value
    if name == "requested_payment_ids":
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("requested_payment_ids must be a list of strings or null")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a non-negative number")
    if name == "requested_rate" and value > 1:
        raise ValueError("requested_rate must be within 0..1")
    return float(value)


@dataclass(slots=True)
class Change:
    """A payment changed: what its webhook says (`Transaction.*`)."""

    kind: str  # Paid | Cancelled | PartialCancelled | Failed | VirtualAccountIssued | ...
    payment_id: str
    store_id: str
    cancellation_id: str | None = None


class V2Sandbox:
    """PortOne V2 for a few stores; the first is the default one."""

    def __init__(
        self,
        stores: Iterable[V2Store] = (),
        clock: Callable[[], float] | None = None,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
        seed: int = 0,
    ) -> None:
        self.clock = clock or time.time
        self.initial_stores = [V2Store(DEFAULT_STORE, DEFAULT_API_SECRET), *stores]
        self.initial_settings = V2Settings(idempotency_ttl_seconds=float(idempotency_ttl))
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget payments, keys, tallies, faults and stores added since the start."""
        self.stores: dict[str, V2Store] = {}
        self.by_secret: dict[str, V2Store] = {}
        for store in self.initial_stores:
            self._add_store(V2Store(**_store_fields(store)))
        self.payments: dict[str, tuple[str, V2Payment]] = {}  # keyed by "store\0payment_id"
        self.keys: dict[tuple[str, str], KeyRecord] = {}
        self.tallies: dict[str, V2Tally] = {}
        self.totals = V2Tally()
        self.settings = self.initial_settings
        self.scoped_faults: dict[str, Faults] = {}
        self.rng = random.Random(f"v2-{self.seed}")
        self.ids = random.Random(f"v2-ids-{self.seed}")
        self.calls_by_kind: dict[str, int] = {}
        self.unauthorized = 0
        self.webhooks: list[dict[str, Any]] = []
        self.call_log: list[dict[str, Any]] = []
        self.faults_injected: dict[str, int] = {}

    # -- stores --------------------------------------------------------------------------

    @property
    def default_store(self) -> V2Store:
        return self.stores[self.initial_stores[0].store_id]

    def _add_store(self, store: V2Store) -> V2Store:
        known = self.stores.get(store.store_id)
        if known is not None and not secrets.compare_digest(known.api_secret, store.api_secret):
            raise ValueError(f"store {store.store_id} is known with another api_secret")
        other = self.by_secret.get(store.api_secret)
        if other is not None and other.store_id != store.store_id:
            raise ValueError("this api_secret already speaks for another store")
        if known is not None:
            # Adding a store again sets where its webhooks go.
            known.webhook_url = store.webhook_url
            known.webhook_secret = store.webhook_secret
            return known
        self.stores[store.store_id] = store
        self.by_secret[store.api_secret] = store
        return store

    def add_stores(self, stores: Iterable[V2Store]) -> list[V2Store]:
        """All or nothing."""
        batch = list(stores)
        trial = V2Sandbox.__new__(V2Sandbox)
        trial.stores = {k: V2Store(**_store_fields(v)) for k, v in self.stores.items()}
        trial.by_secret = {s.api_secret: s for s in trial.stores.values()}
        for store in batch:
            trial._add_store(V2Store(**_store_fields(store)))
        return [self._add_store(store) for store in batch]

    def authenticate(self, authorization: str | None) -> V2Store | None:
        """The store an `Authorization: PortOne <secret>` speaks for; None when it is not one."""
        if not authorization:
            return None
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() != "portone" or not secret.strip():
            return None
        store = self.by_secret.get(secret.strip())
        if store is None or not secrets.compare_digest(store.api_secret, secret.strip()):
            return None
        return store

    # -- payments ------------------------------------------------------------------------

    def find(self, store_id: str, payment_id: str) -> V2Payment | None:
        held = self.payments.get(_pkey(store_id, payment_id))
        return None if held is None else held[1]

    def payment(self, payment_id: str, store_id: str | None = None) -> V2Payment:
        """A payment by id (in `store_id`, or the only store holding that id); KeyError."""
        if store_id is not None:
            found = self.find(store_id, payment_id)
            if found is None:
                raise KeyError(payment_id)
            return found
        matches = [p for _, p in self.payments.values() if p.payment_id == payment_id]
        if len(matches) != 1:
            raise KeyError(payment_id)
        return matches[0]

    def add_payment(self, spec: dict[str, Any]) -> V2Payment:
        """A payment from a control-API spec; ValueError for a bad one."""
        known = {"payment_id", "store_id", "amount", "status", "method", "order_name", "currency"}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown payment fields: {sorted(unknown)}")
        store_id = spec.get("store_id") or self.default_store.store_id
        if store_id not in self.stores:
            raise ValueError(f"unknown store_id {store_id!r}")
        payment_id = spec.get("payment_id") or f"pay_{self.ids.getrandbits(48):012x}"
        if not isinstance(payment_id, str) or not 1 <= len(payment_id) <= PAYMENT_ID_MAX:
            raise ValueError(f"payment_id must be 1-{PAYMENT_ID_MAX} characters")
        if self.find(store_id, payment_id) is not None:
            raise ValueError(f"payment_id {payment_id!r} exists in store {store_id!r}")
        amount = spec.get("amount", 1000)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError("amount must be a positive integer")
        method = spec.get("method", "card")
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}")
        default_status = "VIRTUAL_ACCOUNT_ISSUED" if method == "virtual_account" else "PAID"
        status = spec.get("status", default_status)
        if status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}")
        if status == "PARTIAL_CANCELLED":
            raise ValueError("create it PAID, then cancel part of it")
        if status == "VIRTUAL_ACCOUNT_ISSUED" and method != "virtual_account":
            raise ValueError("only a virtual account is VIRTUAL_ACCOUNT_ISSUED")
        now = self.clock()
        payment = V2Payment(
            payment_id=payment_id,
            store_id=store_id,
            amount=amount,
            method=method,
            status="READY",
            order_name=str(spec.get("order_name") or "sandbox order"),
            currency=str(spec.get("currency") or "KRW"),
            requested_at=now,
            updated_at=now,
            status_changed_at=now,
        )
        if method == "virtual_account" and status != "READY":
            payment.issued_at = now
        self._become(payment, status, now)
        self.payments[_pkey(store_id, payment_id)] = (store_id, payment)
        return payment

    def add_payments(self, specs: Iterable[dict[str, Any]]) -> list[V2Payment]:
        """All or nothing."""
        added: list[V2Payment] = []
        try:
            for spec in specs:
                if not isinstance(spec, dict):
                    raise ValueError("each payment must be an object")
                added.append(self.add_payment(spec))
        except ValueError:
            for payment in added:
                del self.payments[_pkey(payment.store_id, payment.payment_id)]
            raise
        return added

    def _become(self, payment: V2Payment, status: str, now: float) -> None:
        payment.status = status
        payment.updated_at = payment.status_changed_at = now
        if status in PAID_STATUSES and payment.paid_at is None:
            payment.paid_at = now
        if status == "FAILED":
            payment.failed_at = now
        if status in ("PARTIAL_CANCELLED", "CANCELLED"):
            payment.cancelled_at = now

    def tally(self, payment_id: str) -> V2Tally:
        tally = self.tallies.get(payment_id)
        if tally is None:
            tally = self.tallies[payment_id] = V2Tally()
        return tally

    def count(self, payment_id: str, name: str, by: int = 1) -> None:
        setattr(self.tally(payment_id), name, getattr(self.tally(payment_id), name) + by)
        setattr(self.totals, name, getattr(self.totals, name) + by)

    def log_call(
        self,
        store: V2Store | None,
        payment_id: str,
        method: str,
        path: str,
        header: str | None,
        raw: bytes,
    ) -> None:
        """Remember one mutating call as it arrived, before any fault: its store, payment,
        request (method, path, the body's fingerprint) and its Idempotency-Key as sent (None:
        without one), so a checker can tell keys missing or sent for two different calls."""
        try:
            key = idempotency_key(header)
        except ValueError:
            key = header  # malformed: kept as sent
        self.call_log.append(
            {
                "seq": len(self.call_log) + 1,
                "at": self.clock(),
                "store_id": None if store is None else store.store_id,
                "payment_id": payment_id,
                "method": method,
                "path": path,
                "key": key,
                "fingerprint": fingerprint(method, path, raw),
            }
        )

    # -- REQUESTED cancellations ---------------------------------------------------------

    def settle(self, payment: V2Payment) -> list[Change]:
        """Finish the payment's REQUESTED cancellations that are due."""
        now = self.clock()
        changes: list[Change] = []
        for cancellation in payment.cancellations:
            if cancellation.status != "REQUESTED" or (cancellation.due_at or 0) > now:
                continue
            if cancellation.outcome == "FAILED":
                cancellation.status = "FAILED"
                payment.updated_at = now
                continue
            changes.append(self._succeed(payment, cancellation, now))
        return changes

    def settle_all(self) -> list[Change]:
        changes: list[Change] = []
        for _, payment in list(self.payments.values()):
            changes.extend(self.settle(payment))
        return changes

    def next_due(self) -> float | None:
        """When the next REQUESTED cancellation finishes, if any is pending."""
        dues = [
            c.due_at
            for _, p in self.payments.values()
            for c in p.cancellations
            if c.status == "REQUESTED" and c.due_at is not None
        ]
        return min(dues) if dues else None

    def _succeed(self, payment: V2Payment, cancellation: V2Cancellation, now: float) -> Change:
        cancellation.status = "SUCCEEDED"
        cancellation.cancelled_at = now
        full = payment.amount - payment.cancelled <= 0
        self._become(payment, "CANCELLED" if full else "PARTIAL_CANCELLED", now)
        if cancellation.trigger == "API":
            self.count(payment.payment_id, "refunds_applied")
        kind = "Cancelled" if full else "PartialCancelled"
        return Change(kind, payment.payment_id, payment.store_id, cancellation.id)

    # -- the API's rules -----------------------------------------------------------------

    def visible(self, store: V2Store, store_id: Any, payment_id: str) -> V2Payment | Answer:
        """The payment a call may touch, or the error that answers it: another store's payment
        is not found, as PortOne does not tell that it exists; a storeId that the secret does
        not speak for is forbidden."""
        if store_id is not None and store_id != store.store_id:
            if not isinstance(store_id, str):
                return 400, error("INVALID_REQUEST", "storeId must be a string")
            return 403, error("FORBIDDEN", "the API secret may not act for this store")
        if not 1 <= len(payment_id) <= PAYMENT_ID_MAX:
            return 400, error("INVALID_REQUEST", "paymentId must be 1-200 characters")
        payment = self.find(store.store_id, payment_id)
        if payment is None:
            return 404, error("PAYMENT_NOT_FOUND", "결제 건이 존재하지 않습니다.")
        return payment

    def lookup(self, store: V2Store, store_id: Any, payment_id: str) -> tuple[Answer, list[Change]]:
        found = self.visible(store, store_id, payment_id)
        if not isinstance(found, V2Payment):
            return found, []
        changes = self.settle(found)
        return (200, found.to_api()), changes

    def close(
        self, store: V2Store, fields_: dict[str, Any], payment_id: str
    ) -> tuple[Applied, list[Change]]:
        found = self.visible(store, fields_.get("storeId"), payment_id)
        if not isinstance(found, V2Payment):
            return (*found, False), []
        changes = self.settle(found)
        if found.status != "VIRTUAL_ACCOUNT_ISSUED":
            answer = error(
                "PAYMENT_NOT_WAITING_FOR_DEPOSIT", "결제 건이 입금 대기 상태가 아닙니다."
            )
            return (409, answer, False), changes
        now = self.clock()
        # Closed, the account is cancelled: nothing was paid, so no cancellation entry.
        self._become(found, "CANCELLED", now)
        self.count(payment_id, "closes_applied")
        changes.append(Change("Cancelled", payment_id, found.store_id))
        return (200, {"closedAt": iso(now)}, True), changes

    def cancel(
        self,
        store: V2Store,
        fields_: dict[str, Any],
        payment_id: str,
        requested: bool | None = None,
    ) -> tuple[Applied, list[Change]]:
        """POST /payments/{paymentId}/cancel; `requested` forces (or rules out) a REQUESTED
        answer, None draws it from the settings."""
        found = self.visible(store, fields_.get("storeId"), payment_id)
        if not isinstance(found, V2Payment):
            return (*found, False), []
        changes = self.settle(found)
        reason = fields_.get("reason")
        if not isinstance(reason, str) or not reason:
            return (400, error("INVALID_REQUEST", "reason is required"), False), changes
        amount = fields_.get("amount")
        current = fields_.get("currentCancellableAmount")
        for name, value in (("amount", amount), ("currentCancellableAmount", current)):
            if value is not None and not _whole(value, allow_zero=name != "amount"):
                message = f"{name} must be a positive integer"
                return (400, error("INVALID_REQUEST", message), False), changes
        if found.status == "CANCELLED":
            answer = error("PAYMENT_ALREADY_CANCELLED", "결제 건이 이미 취소되었습니다.")
            return (409, answer, False), changes
        if found.status not in PAID_STATUSES:
            return (
                409,
                error("PAYMENT_NOT_PAID", "결제 건이 결제 완료 상태가 아닙니다."),
                False,
            ), changes
        balance = found.cancellable
        if current is not None and int(current) != balance:
            answer = error(
                "CANCELLABLE_AMOUNT_CONSISTENCY_BROKEN",
                "취소 가능 잔액 검증에 실패했습니다.",
            )
            return (409, answer, False), changes
        take = balance if amount is None else int(amount)
        if take <= 0:
            answer = error(
                "CANCEL_AMOUNT_EXCEEDS_CANCELLABLE_AMOUNT", "취소 가능한 금액이 없습니다."
            )
            return (409, answer, False), changes
        if take > balance:
            answer = error(
                "CANCEL_AMOUNT_EXCEEDS_CANCELLABLE_AMOUNT",
                "결제 취소 금액이 취소 가능 금액을 초과합니다.",
            )
            return (409, answer, False), changes
        now = self.clock()
        cancellation = V2Cancellation(
            id=f"cancel_{self.ids.getrandbits(48):012x}",
            total_amount=take,
            reason=reason,
            requested_at=now,
        )
        found.cancellations.append(cancellation)
        if requested is None:
            requested = self._draw_requested(payment_id)
        if requested:
            cancellation.status = "REQUESTED"
            cancellation.due_at = now + self.settings.requested_seconds
            cancellation.outcome = self.settings.requested_outcome
            found.updated_at = now
            self.count(payment_id, "refunds_requested")
        else:
            changes.append(self._succeed(found, cancellation, now))
        return (200, {"cancellation": cancellation.to_api()}, True), changes

    def _draw_requested(self, payment_id: str) -> bool:
        s = self.settings
        if s.requested_payment_ids is not None and payment_id not in s.requested_payment_ids:
            return False
        return bool(s.requested_rate) and self.rng.random() < s.requested_rate

    # -- idempotency keys ----------------------------------------------------------------

    def begin_key(
        self, store: V2Store, key: str, fingerprint: str, payment_id: str
    ) -> tuple[str, KeyRecord | None]:
        """What a mutating call with `key` gets: ("new", record) to be processed, ("replay",
        record) with the first answer, ("outstanding", None) while the first is still being
        processed, ("reused", None) for another request under a used key."""
        now = self.clock()
        self._expire_keys(now)
        held = self.keys.get((store.store_id, key))
        if held is not None:
            if held.fingerprint != fingerprint:
                self.count(payment_id, "key_reused")
                return "reused", None
            if held.status is None:
                self.count(payment_id, "outstanding")
                return "outstanding", None
            self.count(payment_id, "replays")
            return "replay", held
        record = KeyRecord(fingerprint, now, payment_id)
        self.keys[(store.store_id, key)] = record
        return "new", record

    def finish_key(self, store: V2Store, key: str, status: int, body: Any) -> None:
        record = self.keys.get((store.store_id, key))
        if record is not None and record.status is None:
            record.status, record.body = status, body

    def release_key(self, store: V2Store, key: str) -> None:
        """The request never reached the application (a fault in front of it): the key is free."""
        record = self.keys.get((store.store_id, key))
        if record is not None and record.status is None:
            del self.keys[(store.store_id, key)]

    def _expire_keys(self, now: float) -> None:
        ttl = self.settings.idempotency_ttl_seconds
        for name in [k for k, r in self.keys.items() if r.created_at + ttl <= now]:
            del self.keys[name]

    # -- the merchant's admin, behind the service's back ---------------------------------

    def admin_pay(self, payment: V2Payment) -> list[Change]:
        """The customer pays (deposits into the virtual account, pays the card or store)."""
        if payment.status not in ("READY", "PENDING", "VIRTUAL_ACCOUNT_ISSUED"):
            raise ValueError(f"a {payment.status} payment cannot be paid")
        self._become(payment, "PAID", self.clock())
        return [Change("Paid", payment.payment_id, payment.store_id)]

    def admin_issue(self, payment: V2Payment) -> list[Change]:
        if payment.method != "virtual_account" or payment.status not in ("READY", "PENDING"):
            raise ValueError("only a READY or PENDING virtual account can be issued")
        payment.issued_at = self.clock()
        self._become(payment, "VIRTUAL_ACCOUNT_ISSUED", payment.issued_at)
        return [Change("VirtualAccountIssued", payment.payment_id, payment.store_id)]

    def admin_cancel(
        self, payment: V2Payment, amount: int | None = None, reason: str = "admin"
    ) -> list[Change]:
        """The merchant cancels in PortOne's console (a paid payment: a refund; an unpaid one:
        it is simply cancelled)."""
        changes = self.settle(payment)
        now = self.clock()
        if payment.status not in PAID_STATUSES:
            if payment.status in ("CANCELLED", "FAILED"):
                raise ValueError(f"a {payment.status} payment cannot be cancelled")
            self._become(payment, "CANCELLED", now)
            return [*changes, Change("Cancelled", payment.payment_id, payment.store_id)]
        take = payment.cancellable if amount is None else amount
        if not 0 < take <= payment.cancellable:
            raise ValueError(f"amount must be within 1..{payment.cancellable}")
        cancellation = V2Cancellation(
            id=f"cancel_{self.ids.getrandbits(48):012x}",
            total_amount=take,
            reason=reason,
            requested_at=now,
            trigger="CONSOLE",
        )
        payment.cancellations.append(cancellation)
        return [*changes, self._succeed(payment, cancellation, now)]

    def admin_fail(self, payment: V2Payment, reason: str = "failed in the sandbox") -> list[Change]:
        if payment.status not in ("READY", "PENDING", "VIRTUAL_ACCOUNT_ISSUED"):
            raise ValueError(f"a {payment.status} payment cannot fail")
        payment.failure_reason = reason
        self._become(payment, "FAILED", self.clock())
        return [Change("Failed", payment.payment_id, payment.store_id)]

    # -- webhooks and reports ------------------------------------------------------------

    def webhook_body(self, change: Change, when: float | None = None) -> dict[str, Any]:
        """PortOne's V2 webhook body (version 2024-04-25) for a change."""
        data: dict[str, Any] = {
            "transactionId": f"tx_{change.payment_id}",
            "paymentId": change.payment_id,
            "storeId": change.store_id,
        }
        if change.cancellation_id is not None:
            data["cancellationId"] = change.cancellation_id
        return {
            "type": f"Transaction.{change.kind}",
            "timestamp": iso(self.clock() if when is None else when),
            "data": data,
        }

    def truth(self, payment: V2Payment) -> dict[str, Any]:
        """The payment as the API shows it, plus its tally and what it holds back."""
        self.settle(payment)
        body = payment.to_api()
        body["cancellableAmount"] = payment.cancellable
        body["method_kind"] = payment.method
        body["tally"] = self.tally(payment.payment_id).counters()
        return body

    def stats(self) -> dict[str, Any]:
        tallies = list(self.tallies.values())
        return {
            "calls": dict(self.calls_by_kind),
            "totals": self.totals.counters(),
            "max_refunds_applied": max((t.refunds_applied for t in tallies), default=0),
            "max_closes_applied": max((t.closes_applied for t in tallies), default=0),
            "unauthorized": self.unauthorized,
            "payments": len(self.payments),
            "keys_held": len(self.keys),
            "webhooks_sent": len(self.webhooks),
            "faults_injected": dict(self.faults_injected),
        }


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests the same request: method, path and body (JSON compared by
    value, so key order and spacing do not matter)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = body.decode("utf-8", "replace")
    return hashlib.sha256(f"{method}\n{path}\n{canonical}".encode()).hexdigest()


def _pkey(store_id: str, payment_id: str) -> str:
    return f"{store_id}\0{payment_id}"


def _store_fields(store: V2Store) -> dict[str, Any]:
    return {
        "store_id": store.store_id,
        "api_secret": store.api_secret,
        "webhook_url": store.webhook_url,
        "webhook_secret": store.webhook_secret,
    }


def _whole(value: Any, allow_zero: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value) or value != int(value):
        return False
    return value >= 0 if allow_zero else value > 0
