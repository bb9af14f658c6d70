"""One delivery attempt, sent safely: pinned to a checked address, one total deadline,
no redirects, a bounded read of the answer. And the pure rules for what happens next.

httpx applies its timeout per phase (connect, each read, each write), so a receiver that
trickles its answer could hold a worker far longer than WEBHOOK_TIMEOUT_SECONDS. Here the
network backend under httpcore gives every socket operation only what is left of one total
deadline, and it resolves the host itself, refuses any address the URL rules forbid, and
connects to the checked address (TLS still verifies the certificate for the URL's host name,
which is also the SNI and the Host header).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore

from app.kit.deadline import DeadlineBackend, deadline_scope
from app.webhooks import urls

MAX_ANSWER_BYTES = 64 * 1024
# httpcore's errors share no base class.
HTTP_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
    httpcore.TimeoutException,
)
USER_AGENT = "stockout-webhooks/1"


@dataclass(frozen=True)
class AttemptResult:
    outcome: str  # delivered | http_error | redirect | timeout | connection_error | blocked_address
    http_status: int | None
    error: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


class _CheckedBackend(DeadlineBackend):
    """Resolves, checks every address against the URL rules, connects to an allowed one; every
    operation ends by the exchange's deadline (app/kit/deadline.py)."""

    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self._allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = urls.resolve(host, port, self._allow_private)
        error: Exception = httpcore.ConnectError("no address to connect to")
        for address in addresses:
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error


def _host_header(url: str) -> str:
    scheme, host, port = urls.parse(url, allow_private=True)
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return shown if port == default else f"{shown}:{port}"


def send(
    url: str, headers: dict[str, str], body: bytes, timeout: float, allow_private: bool
) -> AttemptResult:
    """POST the body once; never raises for anything the receiver or the network does."""
    started = time.monotonic()
    deadline = started + timeout

    def result(outcome: str, status: int | None = None, error: str | None = None) -> AttemptResult:
        ms = int((time.monotonic() - started) * 1000)
        return AttemptResult(outcome, status, error, ms)

    try:
        urls.parse(url, allow_private)
        request_headers = [
            ("Host", _host_header(url)),
            ("User-Agent", USER_AGENT),
            ("Content-Length", str(len(body))),
            *headers.items(),
        ]
        per_phase = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        with (
            deadline_scope(deadline),
            httpcore.ConnectionPool(
                network_backend=_CheckedBackend(allow_private), retries=0
            ) as pool,
            pool.stream(
                "POST",
                url,
                headers=request_headers,
                content=body,
                extensions={"timeout": per_phase},
            ) as response,
        ):
            status = response.status
            read = 0
            try:
                # Read a little of the answer, then hang up: the status is what counts.
                for chunk in response.iter_stream():
                    read += len(chunk)
                    if read >= MAX_ANSWER_BYTES:
                        break
            except HTTP_ERRORS:
                pass
    except urls.UrlRefused as exc:
        return result("blocked_address", error=str(exc))
    except httpcore.TimeoutException:
        return result("timeout", error=f"no answer within {timeout:g} s")
    except (*HTTP_ERRORS, OSError) as exc:
        return result("connection_error", error=type(exc).__name__)
    if 200 <= status < 300:
        return result("delivered", status)
    if 300 <= status < 400:
        return result("redirect", status, f"HTTP {status}: redirects are not followed")
    return result("http_error", status, f"HTTP {status}")


# -- what happens next (pure) ------------------------------------------------------------------


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base · 2^(attempts-1))]."""
    ceiling = min(cap, base * 2 ** min(max(attempts - 1, 0), 62))
    return rng.uniform(0, ceiling)


def next_status(result: AttemptResult, attempts: int, max_attempts: int) -> str:
    """delivered, pending (another attempt later) or failed (attempts spent)."""
    if result.delivered:
        return "delivered"
    return "failed" if attempts >= max_attempts else "pending"
