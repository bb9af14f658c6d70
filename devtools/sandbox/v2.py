"""PortOne V2's routes and their `/__control/v2` API, served beside iamport V1 on one port.

V1 and V2 share one path, `GET /payments/{id}`: a call that authenticates as V2 does
(`Authorization: PortOne ...`), or names a `storeId`, is V2's; every other is V1's, as before.

The faults are V1's (devtools.sandbox.faults), drawn per call with the call kinds `lookup`,
`cancel_vbank` (virtual-account close) and `refund` (cancel): a store's own faults when it has
some, else the unscoped ones every V1 merchant without its own gets. What V2 adds around them
is the idempotency key: a fault in front of the application (429, 5xx before, a hang before)
never touches a key, while one after it (5xx after, a dropped answer, a hang after, a late
apply) leaves the application's own answer stored, so a repeat with the same key settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devtools.sandbox.faults import MUTATING, Faults, decide, retry_after_header
from devtools.sandbox.responses import (
    CLIENT_CLOSED,
    DroppedResponse,
    TrickleResponse,
)
from devtools.sandbox.responses import (
    encode as _encode,
)
from devtools.sandbox.responses import (
    pause as _pause,
)
from devtools.sandbox.responses import (
    wait_disconnect as _wait_disconnect,
)
from devtools.sandbox.state import HTML_ERROR, Sandbox
from devtools.sandbox.v2_state import (
    Change,
    V2Payment,
    V2Sandbox,
    V2Store,
    error,
    fingerprint,
    idempotency_key,
    sign_webhook,
    store_from_spec,
)

V2Action = Callable[[V2Store], tuple[tuple[int, Any, bool], list[Change]]]
WEBHOOK_TIMEOUT = 10.0
STATUS_EVENTS = {
    "READY": "Ready",
    "PENDING": "PayPending",
    "VIRTUAL_ACCOUNT_ISSUED": "VirtualAccountIssued",
    "PAID": "Paid",
    "PARTIAL_CANCELLED": "PartialCancelled",
    "CANCELLED": "Cancelled",
    "FAILED": "Failed",
}
UNAUTHORIZED = error("UNAUTHORIZED", "인증 정보가 올바르지 않습니다.")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def is_v2(request: Request) -> bool:
    """Whether a call on a path both APIs share is V2's."""
    auth = request.headers.get("authorization", "").strip()
    return auth[:8].lower() == "portone " or "storeId" in request.query_params


async def _body(request: Request) -> tuple[bytes, dict[str, Any] | None]:
    """The raw body and its JSON object (None when it is not one; {} when empty)."""
    raw = await request.body()
    if not raw:
        return raw, {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw, None
    return raw, parsed if isinstance(parsed, dict) else None


class V2Server:
    """The V2 half of the app: its routes, background work and webhooks."""

    def __init__(self, sandbox: Sandbox, v2: V2Sandbox, client: Callable[[], httpx.AsyncClient]):
        self.sandbox = sandbox
        self.v2 = v2
        self.client = client
        self.background: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.Task[None] | None = None

    # -- serving one call ----------------------------------------------------------------

    def faults_for(self, store: V2Store | None) -> Faults:
        own = None if store is None else self.v2.scoped_faults.get(store.store_id)
        return self.sandbox.faults if own is None else own

    async def serve(
        self, request: Request, call: str, payment_id: str, action: V2Action, raw: bytes
    ) -> Response:
        """One V2 call: count it, inject its faults, check the secret and the key, act."""
        v2 = self.v2
        v2.calls_by_kind[call] = v2.calls_by_kind.get(call, 0) + 1
        v2.count(payment_id, "calls")
        mutating = call in MUTATING
        if call == "lookup":
            v2.count(payment_id, "lookups")
        elif call == "cancel_vbank":
            v2.count(payment_id, "close_calls")
        else:
            v2.count(payment_id, "cancel_calls")
        store = v2.authenticate(request.headers.get("authorization"))
        if mutating:
            header = request.headers.get("idempotency-key")
            v2.log_call(store, payment_id, request.method, request.url.path, header, raw)
        faults = self.faults_for(store)
        decision = decide(faults, v2.rng, call, payment_id)
        fault = decision.fault if decision.fault != "expired_token" else None  # no V2 tokens
        if fault is not None:
            v2.faults_injected[fault] = v2.faults_injected.get(fault, 0) + 1
        if not await _pause(request, decision.latency, mutating):
            return Response(status_code=CLIENT_CLOSED)
        if fault == "429":
            retry = retry_after_header(faults.retry_after, decision.retry_after_date, time.time())
            body = error("TOO_MANY_REQUESTS", "Too Many Requests")
            return _json(429, body, {"Retry-After": retry})
        if fault == "error":
            return self.error_page(decision.status, decision.html)
        if store is None:
            v2.unauthorized += 1
            return _json(401, UNAUTHORIZED)
        key: str | None = None
        replay: tuple[int, Any] | None = None
        if mutating:
            try:
                key = idempotency_key(request.headers.get("idempotency-key"))
            except ValueError as exc:
                return _json(400, error("INVALID_REQUEST", str(exc)))
            if key is None:
                v2.count(payment_id, "without_key")
            else:
                print_ = fingerprint(request.method, request.url.path, raw)
                outcome, record = v2.begin_key(store, key, print_, payment_id)
                if outcome == "reused":
                    message = "this Idempotency-Key was used for a different request"
                    return _json(422, error("INVALID_REQUEST", message))
                if outcome == "outstanding":
                    message = "a request with this Idempotency-Key is still being processed"
                    return _json(409, error("IDEMPOTENCY_OUTSTANDING_REQUEST", message))
                if outcome == "replay" and record is not None and record.status is not None:
                    replay = (record.status, record.body)
        tally = v2.tally(payment_id)
        if mutating and replay is None:
            if tally.working > 0:
                v2.count(payment_id, "overlaps")
            tally.working += 1

        def act() -> tuple[int, Any, bool]:
            if replay is not None:
                return replay[0], replay[1], False
            try:
                (status, body, applied), changes = action(store)
            finally:
                if mutating:
                    tally.working -= 1
            if key is not None:
                v2.finish_key(store, key, status, body)
            self.changed(changes)
            return status, body, applied

        if fault == "timeout_before" and replay is None:
            # Never reached PortOne's application: the key is free again.
            if key is not None:
                v2.release_key(store, key)
            tally.working -= 1
            if not await _pause(request, faults.hang_seconds, True):
                return Response(status_code=CLIENT_CLOSED)
            return self.error_page(504, True)
        if fault == "late_apply" and replay is None:
            return await self.late_apply(request, faults.late_apply_seconds, act)
        status, body, _ = act()
        if fault == "error_after":
            return self.error_page(decision.status, decision.html)
        if fault == "drop_after":
            return DroppedResponse(_encode(body), status)
        if fault == "timeout_after" and not await _pause(request, faults.hang_seconds, True):
            return Response(status_code=CLIENT_CLOSED)
        if fault == "trickle":
            interval = faults.trickle_interval_ms / 1000
            return TrickleResponse(
                _encode(body), status, interval, int(faults.trickle_bytes), lambda _: None
            )
        if call == "lookup" and decision.unknown_status and status == 200:
            body = dict(body, status=faults.unknown_status.upper())
        return _json(status, body)

    async def late_apply(
        self, request: Request, delay: float, act: Callable[[], tuple[int, Any, bool]]
    ) -> Response:
        """Applied `delay` seconds after arrival, whether or not the caller still waits; the
        key stays outstanding until then."""
        started = time.monotonic()

        async def work() -> tuple[int, Any, bool]:
            await asyncio.sleep(max(delay - (time.monotonic() - started), 0.0))
            return act()

        task = asyncio.ensure_future(work())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        waiter = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            finished, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task not in finished:
            return Response(status_code=CLIENT_CLOSED)
        status, body, _ = task.result()
        return _json(status, body)

    @staticmethod
    def error_page(status: int, html: bool) -> Response:
        """Something in front of PortOne's application answered: no V2 error type, so the
        client cannot take it for PortOne's own word."""
        if html:
            page = HTML_ERROR.format(status=status)
            return Response(page, status_code=status, media_type="text/html")
        return _json(status, {"message": "Internal Server Error"})

    # -- webhooks ------------------------------------------------------------------------

    def changed(self, changes: list[Change]) -> None:
        """Send each change's webhook in the background; wake up for REQUESTED ones."""
        for change in changes:
            self.spawn(self.deliver(change))
        self.arm_timer()

    def spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def arm_timer(self) -> None:
        """Finish REQUESTED cancellations at their due time, so their webhooks go out even if
        nobody looks the payment up."""
        if self.timer is not None and not self.timer.done():
            return
        due = self.v2.next_due()
        if due is None:
            return

        async def wake() -> None:
            while (due_at := self.v2.next_due()) is not None:
                await asyncio.sleep(max(due_at - self.v2.clock(), 0.0) + 0.01)
                for change in self.v2.settle_all():
                    self.spawn(self.deliver(change))

        self.timer = asyncio.ensure_future(wake())

    async def deliver(
        self,
        change: Change,
        *,
        webhook_id: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
        secret: str | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """POST the change's webhook, signed as Standard Webhooks says; the log entry."""
        store = self.v2.stores.get(change.store_id)
        target = url or (store.webhook_url if store is not None else None)
        webhook_id = webhook_id or "msg_" + secrets.token_hex(12)
        timestamp = int(time.time()) if timestamp is None else timestamp
        body = json.dumps(self.v2.webhook_body(change), ensure_ascii=False, separators=(",", ":"))
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        key = secret or (store.webhook_secret if store is not None else None)
        if signature is not None:
            headers["webhook-signature"] = signature
        elif key is not None:
            headers["webhook-signature"] = sign_webhook(key, webhook_id, timestamp, body)
        entry: dict[str, Any] = {
            "webhook_id": webhook_id,
            "timestamp": timestamp,
            "type": json.loads(body)["type"],
            "payment_id": change.payment_id,
            "store_id": change.store_id,
            "url": target,
            "signature": headers.get("webhook-signature"),
            "body": body,
            "status_code": None,
            "error": None,
        }
        self.v2.webhooks.append(entry)
        if not target:
            entry["error"] = "no webhook URL"
            return entry
        try:
            answer = await self.client().post(
                target, content=body.encode(), headers=headers, timeout=WEBHOOK_TIMEOUT
            )
            entry["status_code"] = answer.status_code
        except httpx.HTTPError as exc:
            entry["error"] = type(exc).__name__
        return entry

    # -- V2's API ------------------------------------------------------------------------

    async def lookup(self, request: Request) -> Response:
        payment_id = request.path_params["payment_id"]
        store_id = request.query_params.get("storeId")

        def action(store: V2Store) -> tuple[tuple[int, Any, bool], list[Change]]:
            (status, body), changes = self.v2.lookup(store, store_id, payment_id)
            return (status, body, False), changes

        return await self.serve(request, "lookup", payment_id, action, b"")

    async def close(self, request: Request) -> Response:
        payment_id = request.path_params["payment_id"]
        raw, fields = await _body(request)

        def action(store: V2Store) -> tuple[tuple[int, Any, bool], list[Change]]:
            if fields is None:
                return (400, error("INVALID_REQUEST", "the body is not a JSON object"), False), []
            merged = {"storeId": request.query_params.get("storeId"), **fields}
            return self.v2.close(store, merged, payment_id)

        return await self.serve(request, "cancel_vbank", payment_id, action, raw)

    async def cancel(self, request: Request) -> Response:
        payment_id = request.path_params["payment_id"]
        raw, fields = await _body(request)

        def action(store: V2Store) -> tuple[tuple[int, Any, bool], list[Change]]:
            if fields is None:
                return (400, error("INVALID_REQUEST", "the body is not a JSON object"), False), []
            return self.v2.cancel(store, fields, payment_id)

        return await self.serve(request, "refund", payment_id, action, raw)

    # -- /__control/v2 -------------------------------------------------------------------

    async def stores(self, request: Request) -> Response:
        if request.method == "POST":
            _, body = await _body(request)
            specs = (body or {}).get("stores")
            if not isinstance(specs, list):
                return _json(400, {"error": 'expected {"stores": [...]}'})
            try:
                added = self.v2.add_stores(store_from_spec(s) for s in specs)
            except ValueError as exc:
                return _json(400, {"error": str(exc)})
            return _json(200, {"stores": [self.store_view(s) for s in added]})
        return _json(200, {"stores": [self.store_view(s) for s in self.v2.stores.values()]})

    def store_view(self, store: V2Store) -> dict[str, Any]:
        own = self.v2.scoped_faults.get(store.store_id)
        return {
            **store.public(),
            "default": store is self.v2.default_store,
            "faults": None if own is None else own.as_dict(),
        }

    async def create_payments(self, request: Request) -> Response:
        _, body = await _body(request)
        specs = (body or {}).get("payments")
        if not isinstance(specs, list):
            return _json(400, {"error": 'expected {"payments": [...]}'})
        try:
            created = self.v2.add_payments(specs)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, {"payments": [self.v2.truth(p) for p in created]})

    def find(self, request: Request) -> V2Payment | Response:
        try:
            return self.v2.payment(
                request.path_params["payment_id"], request.query_params.get("store_id")
            )
        except KeyError:
            return _json(404, {"error": "unknown payment_id (name its store_id if it is in two)"})

    async def payment_truth(self, request: Request) -> Response:
        found = self.find(request)
        if isinstance(found, Response):
            return found
        self.changed(self.v2.settle(found))
        return _json(200, self.v2.truth(found))

    async def admin(self, request: Request) -> Response:
        """pay | issue | cancel {amount?, reason?} | fail {reason?}: behind the service's back."""
        found = self.find(request)
        if isinstance(found, Response):
            return found
        what = request.path_params["action"]
        _, body = await _body(request)
        fields = body or {}
        try:
            if what == "pay":
                changes = self.v2.admin_pay(found)
            elif what == "issue":
                changes = self.v2.admin_issue(found)
            elif what == "cancel":
                amount = fields.get("amount")
                if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
                    raise ValueError("amount must be an integer or null")
                reason = str(fields.get("reason") or "cancelled in the admin")
                changes = self.v2.admin_cancel(found, amount, reason)
            elif what == "fail":
                changes = self.v2.admin_fail(found, str(fields.get("reason") or "failed"))
            else:
                return _json(404, {"error": "unknown action"})
        except ValueError as exc:
            return _json(409, {"error": str(exc)})
        self.changed(changes)
        return _json(200, self.v2.truth(found))

    async def tally(self, request: Request) -> Response:
        return _json(200, self.v2.tally(request.path_params["payment_id"]).counters())

    async def settings(self, request: Request) -> Response:
        if request.method == "POST":
            _, body = await _body(request)
            try:
                self.v2.settings = self.v2.settings.merged(body or {})
            except ValueError as exc:
                return _json(400, {"error": str(exc)})
        return _json(200, self.v2.settings.as_dict())

    async def faults(self, request: Request) -> Response:
        """A store's own faults: `store_id` in the query (GET, DELETE) or the body (POST).
        The unscoped ones are /__control/faults, shared with V1."""
        if request.method == "POST":
            _, body = await _body(request)
            changes = dict(body or {})
            store_id = changes.pop("store_id", None)
        else:
            changes, store_id = {}, request.query_params.get("store_id")
        if store_id not in self.v2.stores:
            return _json(400, {"error": "store_id must name a known store"})
        if request.method == "DELETE":
            self.v2.scoped_faults.pop(store_id, None)
            return _json(200, self.sandbox.faults.as_dict())
        if request.method == "POST":
            own = self.v2.scoped_faults.get(store_id, Faults())
            try:
                merged = self.v2.scoped_faults[store_id] = own.merged(changes)
            except ValueError as exc:
                return _json(400, {"error": str(exc)})
            if merged.seed is not None and "seed" in changes:
                self.v2.rng.seed(merged.seed)
            return _json(200, merged.as_dict())
        return _json(200, self.faults_for(self.v2.stores[store_id]).as_dict())

    async def send_webhook(self, request: Request) -> Response:
        """Send one webhook now, waiting for the answer: `payment_id` (and `store_id`), `type`
        (default: from its status), `webhook_id` (to replay one), `timestamp` (UNIX seconds)
        or `timestamp_offset` (seconds from now: -600 is stale), `signature` (sent as is) or
        `secret` (sign with another one), `url`."""
        found = self.find_in(await _body(request))
        if isinstance(found, Response):
            return found
        payment, fields = found
        kind = fields.get("type") or STATUS_EVENTS[payment.status]
        kind = str(kind).removeprefix("Transaction.")
        timestamp = fields.get("timestamp")
        if timestamp is None:
            timestamp = int(time.time() + float(fields.get("timestamp_offset") or 0))
        change = Change(kind, payment.payment_id, payment.store_id)
        try:
            entry = await self.deliver(
                change,
                webhook_id=fields.get("webhook_id"),
                timestamp=int(timestamp),
                signature=fields.get("signature"),
                secret=fields.get("secret"),
                url=fields.get("url"),
            )
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, entry)

    def find_in(
        self, raw_fields: tuple[bytes, dict[str, Any] | None]
    ) -> tuple[V2Payment, dict[str, Any]] | Response:
        fields = raw_fields[1] or {}
        payment_id = fields.get("payment_id")
        if not isinstance(payment_id, str):
            return _json(400, {"error": "payment_id is required"})
        try:
            return self.v2.payment(payment_id, fields.get("store_id")), fields
        except KeyError:
            return _json(404, {"error": "unknown payment_id"})

    async def webhooks(self, request: Request) -> Response:
        return _json(200, {"webhooks": self.v2.webhooks})

    async def stats(self, request: Request) -> Response:
        return _json(200, self.v2.stats())

    async def calls(self, request: Request) -> Response:
        """The mutating calls as they arrived (`since`: after that sequence number), each with
        its Idempotency-Key as sent and its request's fingerprint."""
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return _json(400, {"error": "since must be an integer"})
        return _json(200, {"calls": self.v2.call_log[max(0, since) :]})

    def reset(self) -> None:
        for task in list(self.background):  # nothing late may land on the fresh state
            task.cancel()
        if self.timer is not None:
            self.timer.cancel()
        self.v2.reset()

    async def aclose(self) -> None:
        for task in list(self.background):
            task.cancel()
        if self.timer is not None:
            self.timer.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self.background, return_exceptions=True)

    def routes(self) -> list[Route]:
        """V2's own routes (the shared lookup path is dispatched by the V1 route)."""
        c = "/__control/v2"
        return [
            Route("/payments/{payment_id}/virtual-account/close", self.close, methods=["POST"]),
            Route("/payments/{payment_id}/cancel", self.cancel, methods=["POST"]),
            Route(f"{c}/stores", self.stores, methods=["GET", "POST"]),
            Route(f"{c}/payments", self.create_payments, methods=["POST"]),
            Route(f"{c}/payments/{{payment_id}}", self.payment_truth, methods=["GET"]),
            Route(f"{c}/payments/{{payment_id}}/{{action}}", self.admin, methods=["POST"]),
            Route(f"{c}/tallies/{{payment_id}}", self.tally, methods=["GET"]),
            Route(f"{c}/settings", self.settings, methods=["GET", "POST"]),
            Route(f"{c}/faults", self.faults, methods=["GET", "POST", "DELETE"]),
            Route(f"{c}/webhooks/send", self.send_webhook, methods=["POST"]),
            Route(f"{c}/webhooks", self.webhooks, methods=["GET"]),
            Route(f"{c}/stats", self.stats, methods=["GET"]),
            Route(f"{c}/calls", self.calls, methods=["GET"]),
        ]
