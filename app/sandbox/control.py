"""A small typed client for the sandbox's `/__control` API, for tests, benchmarks and chaos runs."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, TypedDict, cast

import httpx


class CallLogEntry(TypedDict):
    """One iamport call as the sandbox saw it."""

    seq: int
    call: str  # token | lookup | cancel | issue
    imp_uid: str | None
    started_at: float
    ended_at: float | None
    status_code: int | None  # 499: the client went away before the answer
    applied: bool | None
    fault: str | None


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

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = self._http.request(method, path, **kw)
        response.raise_for_status()
        return response.json()

    def create_payments(self, payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Bulk-create payments (`imp_uid`, `merchant_uid`, `amount`, `status`, `confirm_url`,
        `notice_url`, all optional); returns them with their generated fields."""
        body = self._call("POST", "/payments", json={"payments": payments})
        return cast(list[dict[str, Any]], body["payments"])

    def create_payment(self, **spec: Any) -> dict[str, Any]:
        """Create one payment; returns it."""
        return self.create_payments([spec])[0]

    def payment(self, imp_uid: str) -> dict[str, Any]:
        """The truth: the payment plus `cancel_calls` and `cancels_applied`."""
        return cast(dict[str, Any], self._call("GET", f"/payments/{imp_uid}"))

    def pay(self, imp_uid: str, pay_type: Literal["card", "cash"] = "cash") -> PayResult:
        """A customer tries to pay at the store (confirm_url first, then notice_url)."""
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

    def faults(self) -> dict[str, Any]:
        """The faults in force."""
        return cast(dict[str, Any], self._call("GET", "/faults"))

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Merge into the faults in force (latency_ms, error_rate, rate_429, retry_after,
        timeout_before_rate, timeout_after_rate, hang_seconds, refusal_style, calls, seed...)."""
        return cast(dict[str, Any], self._call("POST", "/faults", json=faults))

    def clear_faults(self) -> dict[str, Any]:
        """No faults any more."""
        return cast(dict[str, Any], self._call("DELETE", "/faults"))

    def expire_tokens(self) -> None:
        """Every issued token stops working."""
        self._call("POST", "/tokens/expire")

    def calls(self, since: int = 0) -> list[CallLogEntry]:
        """The call log after sequence number `since`."""
        return cast(list[CallLogEntry], self._call("GET", "/calls", params={"since": since}))

    def stats(self) -> dict[str, Any]:
        """Counters: calls by kind, cancels applied, overlaps, in flight..."""
        return cast(dict[str, Any], self._call("GET", "/stats"))

    def reset(self) -> None:
        """Forget payments, tokens, faults and the log."""
        self._call("POST", "/reset")
