"""A small typed client for the sandbox's `/__control` API, for tests, benchmarks and chaos runs."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, TypedDict, cast

import httpx


class CallLogEntry(TypedDict):
    """One iamport call as the sandbox saw it."""

    seq: int
    call: str  # token | lookup | cancel (DELETE /cvs) | cancel_vbank | refund | issue
    imp_uid: str | None
    started_at: float
    ended_at: float | None  # answered, or the client went away
    status_code: int | None  # 499: the client went away before the answer
    applied: bool | None  # mutating calls: whether it changed the payment (so far)
    applied_at: float | None  # when it did; after ended_at for a late apply
    fault: str | None
    key_id: str | None  # the short id of the imp_key it spoke with (token or getToken body)
    tier: str | None  # the Tier header it carried


class MerchantInfo(TypedDict):
    """A merchant account the sandbox knows (never its secret)."""

    id: str  # key_id, and `/TIER` for a sub-merchant: the key of stats()["by_merchant"]
    key_id: str
    imp_key: str
    tier: str | None
    default: bool
    faults: dict[str, Any] | None  # its own faults; None: it gets the unscoped ones


class Tally(TypedDict):
    """What the sandbox saw happen to one imp_uid."""

    mutating_calls: int  # DELETE /cvs, DELETE /vbanks, POST /payments/cancel received
    mutating_applied: int
    cancel_calls: int
    cancels_applied: int
    refund_calls: int
    refunds_applied: int  # more than 1 is a double refund
    lookups: int
    overlaps: int  # mutating calls that arrived while an earlier one was still worked on
    calls_after_applied: int  # mutating calls that arrived after one had applied
    refunds_without_lookup: int  # refunds with no lookup since the previous mutating call


class PayResult(TypedDict):
    """What happened when a customer tried to pay a barcode."""

    allowed: bool
    status: str
    confirm_status: int | None


class SandboxControl:
    """The sandbox's control API; every method raises httpx.HTTPStatusError on a non-2xx."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + "/__control", timeout=timeout)

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def v2(self) -> V2Control:
        """The PortOne V2 half of the control API."""
        return V2Control(self._call)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = self._http.request(method, path, **kw)
        response.raise_for_status()
        return response.json()

    def create_payments(self, payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Bulk-create payments (`imp_uid`, `merchant_uid`, `amount`, `status`, `pay_method`
        cvs|vbank|card, `confirm_url`, `notice_url`, `imp_key` and `tier` of the merchant it
        belongs to, all optional); returns their truth."""
        body = self._call("POST", "/payments", json={"payments": payments})
        return cast(list[dict[str, Any]], body["payments"])

    def create_payment(self, **spec: Any) -> dict[str, Any]:
        """Create one payment; returns it."""
        return self.create_payments([spec])[0]

    def payment(self, imp_uid: str) -> dict[str, Any]:
        """The truth: the payment plus its Tally counters (`cancels_applied`, `overlaps`...)."""
        return cast(dict[str, Any], self._call("GET", f"/payments/{imp_uid}"))

    def tally(self, imp_uid: str) -> Tally:
        """The counters of one imp_uid, also one the sandbox does not know."""
        return cast(Tally, self._call("GET", f"/tallies/{imp_uid}"))

    def pay(self, imp_uid: str, pay_type: Literal["card", "cash"] = "cash") -> PayResult:
        """The customer pays: a barcode asks its confirm_url first; then notice_url is told."""
        return cast(
            PayResult, self._call("POST", f"/payments/{imp_uid}/pay", json={"pay_type": pay_type})
        )

    def set_status(
        self, imp_uid: str, status: Literal["ready", "paid", "cancelled", "failed"]
    ) -> dict[str, Any]:
        """A console action on the payment."""
        return cast(
            dict[str, Any],
            self._call("POST", f"/payments/{imp_uid}/status", json={"status": status}),
        )

    def console_cancel(self, imp_uid: str) -> dict[str, Any]:
        """The merchant cancels the payment in iamport's console."""
        return self.set_status(imp_uid, "cancelled")

    def admin(self, imp_uid: str, action: Literal["refund", "pay", "cancel"]) -> dict[str, Any]:
        """Change the payment behind the service's back, as in iamport's admin (no
        notification): `refund` a paid one in full, `pay` a ready or failed one, `cancel` a
        ready one. 409 when the action does not fit the payment's status."""
        return cast(
            dict[str, Any],
            self._call("POST", f"/payments/{imp_uid}/admin", json={"action": action}),
        )

    def set_amounts(
        self, imp_uid: str, amount: int | None = None, cancel_amount: int | None = None
    ) -> dict[str, Any]:
        """Correct the payment's amounts (a partial refund elsewhere, a price change)."""
        body = {"amount": amount, "cancel_amount": cancel_amount}
        return cast(dict[str, Any], self._call("POST", f"/payments/{imp_uid}/amounts", json=body))

    def faults(self, imp_key: str | None = None, tier: str | None = None) -> dict[str, Any]:
        """The faults in force (with `imp_key`: those that merchant's calls get)."""
        return cast(dict[str, Any], self._call("GET", "/faults", params=_scope(imp_key, tier)))

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Merge into the faults in force; the fields are those of devtools.sandbox.faults.Faults
        (latency_ms, rate_429, retry_after_style, error_rate, error_after_rate, error_style,
        drop_after_rate, late_apply_rate, late_apply_seconds, trickle_rate, odd_timestamps_rate,
        unknown_status_rate, missing_history_rate, calls, imp_uids, seed...). With `imp_key`
        (and `tier`): that merchant's own faults, which its calls get instead."""
        return cast(dict[str, Any], self._call("POST", "/faults", json=faults))

    def clear_faults(self, imp_key: str | None = None, tier: str | None = None) -> dict[str, Any]:
        """No faults any more, for anyone (with `imp_key`: that merchant's own are dropped)."""
        return cast(dict[str, Any], self._call("DELETE", "/faults", params=_scope(imp_key, tier)))

    def expire_tokens(self, imp_key: str | None = None) -> None:
        """Every issued token (with `imp_key`: that key's) stops working."""
        self._call("POST", "/tokens/expire", json={} if imp_key is None else {"imp_key": imp_key})

    def merchants(self) -> list[MerchantInfo]:
        """The merchant accounts, the default one first."""
        return cast(list[MerchantInfo], self._call("GET", "/merchants")["merchants"])

    def add_merchants(self, merchants: list[dict[str, Any]]) -> list[MerchantInfo]:
        """Add accounts `{imp_key, imp_secret, tier?}`, all or nothing (a reset forgets them)."""
        body = self._call("POST", "/merchants", json={"merchants": merchants})
        return cast(list[MerchantInfo], body["merchants"])

    def add_merchant(self, imp_key: str, imp_secret: str, tier: str | None = None) -> MerchantInfo:
        """Add one account."""
        spec = {"imp_key": imp_key, "imp_secret": imp_secret, "tier": tier}
        return self.add_merchants([spec])[0]

    def calls(self, since: int = 0) -> list[CallLogEntry]:
        """The call log after sequence number `since`."""
        return cast(list[CallLogEntry], self._call("GET", "/calls", params={"since": since}))

    def stats(self) -> dict[str, Any]:
        """Counters: calls by kind, the Tally totals, per-imp_uid maxima, in flight...;
        `by_merchant` maps each merchant id to its calls, cancels_applied, refunds_applied,
        not_its_payment, faults_injected and payments."""
        return cast(dict[str, Any], self._call("GET", "/stats"))

    def reset(self) -> None:
        """Forget payments, tokens, faults, the log and merchants added since the start."""
        self._call("POST", "/reset")


def _scope(imp_key: str | None, tier: str | None) -> dict[str, str]:
    params = {} if imp_key is None else {"imp_key": imp_key}
    return params if tier is None else {**params, "tier": tier}


class V2Tally(TypedDict):
    """What the sandbox saw happen to one PortOne V2 paymentId."""

    calls: int
    lookups: int
    close_calls: int
    closes_applied: int
    cancel_calls: int
    refunds_requested: int  # cancels answered REQUESTED
    refunds_applied: int  # cancellations made through the API that SUCCEEDED; >1: double refund
    without_key: int  # mutating calls without an Idempotency-Key (the chaos checker wants 0)
    key_reused: int  # a key sent again with a different request
    replays: int  # answered with a key's stored first answer
    outstanding: int  # answered 409 IDEMPOTENCY_OUTSTANDING_REQUEST
    overlaps: int


class V2Control:
    """The PortOne V2 half of the control API (`/__control/v2`); `SandboxControl.v2`."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def stores(self) -> list[dict[str, Any]]:
        """The V2 stores (never their secrets), the default one first."""
        return cast(list[dict[str, Any]], self._call("GET", "/v2/stores")["stores"])

    def add_store(
        self,
        store_id: str,
        api_secret: str,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> dict[str, Any]:
        """Add a store (again: set where its webhooks go, and their `whsec_` secret)."""
        spec = {
            "store_id": store_id,
            "api_secret": api_secret,
            "webhook_url": webhook_url,
            "webhook_secret": webhook_secret,
        }
        body = self._call("POST", "/v2/stores", json={"stores": [spec]})
        return cast(dict[str, Any], body["stores"][0])

    def create_payments(self, payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create payments (`payment_id`, `store_id`, `amount`, `status`, `method`
        virtual_account|card|convenience_store, `order_name`, `currency`; all optional)."""
        body = self._call("POST", "/v2/payments", json={"payments": payments})
        return cast(list[dict[str, Any]], body["payments"])

    def create_payment(self, **spec: Any) -> dict[str, Any]:
        return self.create_payments([spec])[0]

    def payment(self, payment_id: str, store_id: str | None = None) -> dict[str, Any]:
        """The truth: PortOne's Payment object plus `cancellableAmount` and `tally`."""
        params = {} if store_id is None else {"store_id": store_id}
        return cast(dict[str, Any], self._call("GET", f"/v2/payments/{payment_id}", params=params))

    def _admin(self, payment_id: str, action: str, store_id: str | None, **body: Any) -> Any:
        params = {} if store_id is None else {"store_id": store_id}
        path = f"/v2/payments/{payment_id}/{action}"
        return cast(dict[str, Any], self._call("POST", path, params=params, json=body))

    def pay(self, payment_id: str, store_id: str | None = None) -> dict[str, Any]:
        """The customer pays (a deposit into an issued virtual account, ...)."""
        return cast(dict[str, Any], self._admin(payment_id, "pay", store_id))

    def issue(self, payment_id: str, store_id: str | None = None) -> dict[str, Any]:
        """A READY or PENDING virtual account is issued."""
        return cast(dict[str, Any], self._admin(payment_id, "issue", store_id))

    def admin_cancel(
        self, payment_id: str, amount: int | None = None, store_id: str | None = None
    ) -> dict[str, Any]:
        """The merchant cancels (or refunds `amount` of) the payment in PortOne's console."""
        return cast(dict[str, Any], self._admin(payment_id, "cancel", store_id, amount=amount))

    def fail(self, payment_id: str, store_id: str | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], self._admin(payment_id, "fail", store_id))

    def tally(self, payment_id: str) -> V2Tally:
        return cast(V2Tally, self._call("GET", f"/v2/tallies/{payment_id}"))

    def settings(self, **changes: Any) -> dict[str, Any]:
        """Read, or merge `changes` into: idempotency_ttl_seconds, requested_rate,
        requested_seconds, requested_outcome (SUCCEEDED|FAILED), requested_payment_ids."""
        if not changes:
            return cast(dict[str, Any], self._call("GET", "/v2/settings"))
        return cast(dict[str, Any], self._call("POST", "/v2/settings", json=changes))

    def set_faults(self, store_id: str, **faults: Any) -> dict[str, Any]:
        """Merge into the store's own faults (the fields of devtools.sandbox.faults.Faults)."""
        body = {"store_id": store_id, **faults}
        return cast(dict[str, Any], self._call("POST", "/v2/faults", json=body))

    def clear_faults(self, store_id: str) -> dict[str, Any]:
        return cast(
            dict[str, Any], self._call("DELETE", "/v2/faults", params={"store_id": store_id})
        )

    def send_webhook(self, payment_id: str, **options: Any) -> dict[str, Any]:
        """Send one webhook now and wait: `type`, `webhook_id`, `timestamp`,
        `timestamp_offset`, `signature`, `secret`, `url`, `store_id`; returns what was sent
        (`webhook_id`, `timestamp`, `signature`, `body`) and `status_code`."""
        body = {"payment_id": payment_id, **options}
        return cast(dict[str, Any], self._call("POST", "/v2/webhooks/send", json=body))

    def webhooks(self) -> list[dict[str, Any]]:
        """Every webhook sent since the last reset."""
        return cast(list[dict[str, Any]], self._call("GET", "/v2/webhooks")["webhooks"])

    def stats(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "/v2/stats"))

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        """The mutating calls as they arrived, after sequence number `since`: `store_id`,
        `payment_id`, `method`, `path`, `key` (the Idempotency-Key as sent, None without one)
        and `fingerprint` (method, path and body)."""
        body = self._call("GET", "/v2/calls", params={"since": since})
        return cast(list[dict[str, Any]], body["calls"])
