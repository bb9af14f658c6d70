"""The sandbox's HTTP edge: iamport's routes and the `/__control` API over one `Sandbox`.

Lean on purpose (it must serve hundreds of calls per second with injected latency on little
CPU): plain Starlette routes, asyncio sleeps for latency, no per-request logging. A mutating
call that waits (latency, a hang) watches for the client's disconnect, so a client that gave up
stops counting as in flight at once; a late apply goes on in the background regardless, as
iamport's own servers do.

Each call speaks as a merchant: the imp_key its token was issued to (getToken: the imp_key in
its body) and its `Tier` header; that decides which faults it gets and which payments it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devtools.sandbox.faults import MUTATING, Decision, Faults, oddly, retry_after_header
from devtools.sandbox.merchants import (
    DEFAULT_KEY,
    DEFAULT_SECRET,
    Caller,
    Merchant,
    merchant_from_spec,
    parse_merchant,
)
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
from devtools.sandbox.state import HTML_ERROR, UNAUTHORIZED, CallEntry, Sandbox, envelope
from devtools.sandbox.v2 import V2Server, is_v2
from devtools.sandbox.v2_state import IDEMPOTENCY_TTL, V2Sandbox, V2Store, parse_store

CONFIRM_TIMEOUT = 5.0
DROPPED = "ASGI callable returned without completing response."

Action = Callable[[Caller], Awaitable[tuple[int, Any, bool | None]]]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _bearer(request: Request) -> str | None:
    """The token from `Authorization: Bearer T`, a bare `Authorization: T`, or X-ImpTokenHeader."""
    auth = request.headers.get("authorization")
    if auth:
        auth = auth.strip()
        return auth[7:].strip() if auth[:7].lower() == "bearer " else auth
    return request.headers.get("x-imptokenheader")


def _tier(request: Request) -> str | None:
    """The `Tier` header; an empty one counts as none, as a client that sends `Tier: ` for a
    merchant without a tier means none."""
    return request.headers.get("tier") or None


async def _fields(request: Request) -> dict[str, Any]:
    """A JSON object or form-encoded body as a dict ({} when neither)."""
    raw = await request.body()
    if not raw:
        return {}
    if "json" in request.headers.get("content-type", ""):
        try:
            body = json.loads(raw)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}
    return dict(parse_qsl(raw.decode("utf-8", "replace")))


class _QuietDrops(logging.Filter):
    """uvicorn reports each deliberately dropped answer as an error; they are not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != DROPPED


def create_app(sandbox: Sandbox, v2: V2Sandbox | None = None) -> Starlette:
    """The ASGI app serving `sandbox`, and PortOne V2's `v2` beside it (a fresh one with only
    the default store when None)."""
    # Imported here: the V2 half builds on this module's responses.

    background: set[asyncio.Task[None]] = set()
    late: set[asyncio.Task[tuple[int, Any, bool | None]]] = set()
    outbound: dict[str, httpx.AsyncClient] = {}

    def client() -> httpx.AsyncClient:
        if "c" not in outbound:
            outbound["c"] = httpx.AsyncClient(timeout=CONFIRM_TIMEOUT)
        return outbound["c"]

    portone = V2Server(sandbox, v2 if v2 is not None else V2Sandbox(), client)

    def caller_of(request: Request) -> Caller:
        return Caller(sandbox.token_key(_bearer(request)), _tier(request))

    async def serve(
        request: Request,
        call: str,
        imp_uid: str | None,
        action: Action,
        caller: Caller | None = None,
    ) -> Response:
        """One iamport call: log it, inject its faults, check the token, act, answer.

        `caller` is given for getToken (its body names the imp_key); any other call speaks as
        its token's imp_key and must carry a valid token.
        """
        auth = caller is None
        who = caller_of(request) if caller is None else caller
        entry = sandbox.begin_call(call, imp_uid, who)
        faults = sandbox.faults_for(who)
        decision = sandbox.decide(call, imp_uid, who)
        fault = decision.fault
        watch = call in MUTATING
        if not await _pause(request, decision.latency, watch):
            return gone(entry, fault)
        if fault == "429":
            retry = retry_after_header(
                faults.retry_after, decision.retry_after_date, sandbox.clock()
            )
            body = envelope(None, -1, "Too Many Requests")
            return done(entry, 429, body, None, fault, {"Retry-After": retry})
        if fault == "expired_token":
            # A merchant's own storm expires its own tokens; unscoped faults expire all, as
            # they always did.
            scoped = sandbox.fault_scope(who) is not None
            sandbox.expire_tokens(who.imp_key if scoped else None)
        if fault == "error":
            return error(entry, decision, None)
        if auth and not sandbox.authorized(_bearer(request)):
            return done(entry, 401, UNAUTHORIZED, None, fault)
        sandbox.admit(entry)
        if fault == "timeout_before":
            if not await _pause(request, faults.hang_seconds, watch):
                return gone(entry, fault)
            html = HTML_ERROR.format(status="504 Gateway Time-out")
            sandbox.end_call(entry, 504, False, fault)
            return Response(html, status_code=504, media_type="text/html")
        if fault == "late_apply":
            return await late_apply(request, entry, decision, action, who, faults)
        status, body, applied = await action(who)
        if watch:
            sandbox.finish_work(entry, applied)
        body = odd(body, decision, faults)
        if fault == "error_after":
            return error(entry, decision, applied)
        if fault == "drop_after":
            sandbox.end_call(entry, status, applied, fault)
            return DroppedResponse(_encode(body), status)
        if fault == "timeout_after" and not await _pause(request, faults.hang_seconds, watch):
            return gone(entry, fault)
        if fault == "trickle":
            interval = faults.trickle_interval_ms / 1000
            chunk = int(faults.trickle_bytes)

            def on_end(code: int) -> None:
                sandbox.end_call(entry, code, applied, fault)

            return TrickleResponse(_encode(body), status, interval, chunk, on_end)
        return done(entry, status, body, applied, fault)

    async def late_apply(
        request: Request,
        entry: CallEntry,
        decision: Decision,
        action: Action,
        who: Caller,
        faults: Faults,
    ) -> Response:
        """Work on the call for `late_apply_seconds` from its arrival, then apply, caller or not."""
        delay = faults.late_apply_seconds - (time.monotonic() - entry.started_mono)

        async def work() -> tuple[int, Any, bool | None]:
            await asyncio.sleep(max(delay, 0.0))
            result = await action(who)
            sandbox.finish_work(entry, result[2])
            return result

        task = asyncio.ensure_future(work())
        late.add(task)
        task.add_done_callback(late.discard)
        waiter = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            finished, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task not in finished:
            sandbox.end_call(entry, CLIENT_CLOSED, None, "late_apply", still_working=True)
            return Response(status_code=CLIENT_CLOSED)
        status, body, applied = task.result()
        return done(entry, status, odd(body, decision, faults), applied, "late_apply")

    def odd(body: Any, decision: Decision, faults: Faults) -> Any:
        """The envelope with its Payment written as the decision says."""
        payment = body.get("response") if isinstance(body, dict) else None
        if isinstance(payment, list):  # a batch lookup: each payment is as odd as one alone
            return dict(body, response=[oddly(p, decision, faults.unknown_status) for p in payment])
        if not isinstance(payment, dict) or "imp_uid" not in payment:
            return body
        return dict(body, response=oddly(payment, decision, faults.unknown_status))

    def done(
        entry: CallEntry,
        status: int,
        body: Any,
        applied: bool | None,
        fault: str | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        sandbox.end_call(entry, status, applied, fault)
        return _json(status, body, headers)

    def gone(entry: CallEntry, fault: str | None) -> Response:
        sandbox.end_call(entry, CLIENT_CLOSED, entry.applied, fault)
        return Response(status_code=CLIENT_CLOSED)

    def error(entry: CallEntry, decision: Decision, applied: bool | None) -> Response:
        sandbox.end_call(entry, decision.status, applied, decision.fault)
        if decision.html:
            page = HTML_ERROR.format(status=decision.status)
            return Response(page, status_code=decision.status, media_type="text/html")
        return _json(decision.status, envelope(None, -1, "Internal Server Error"))

    # -- iamport ---------------------------------------------------------------------------

    async def get_token(request: Request) -> Response:
        fields = await _fields(request)
        imp_key = fields.get("imp_key")
        tier = _tier(request)

        async def action(who: Caller) -> tuple[int, Any, bool | None]:
            status, body = sandbox.get_token(imp_key, fields.get("imp_secret"), tier)
            return status, body, None

        who = Caller(imp_key if isinstance(imp_key, str) else None, tier)
        return await serve(request, "token", None, action, who)

    async def get_payment(request: Request) -> Response:
        if is_v2(request):
            request.path_params["payment_id"] = request.path_params["imp_uid"]
            return await portone.lookup(request)
        imp_uid = request.path_params["imp_uid"]

        async def action(who: Caller) -> tuple[int, Any, bool | None]:
            status, body = sandbox.lookup(imp_uid, who)
            return status, body, None

        return await serve(request, "lookup", imp_uid, action)

    async def get_payments(request: Request) -> Response:
        """V1's batch lookup, `GET /payments?imp_uid[]=a&imp_uid[]=b`."""
        query = request.query_params
        imp_uids = query.getlist("imp_uid[]") or query.getlist("imp_uid")

        async def action(who: Caller) -> tuple[int, Any, bool | None]:
            status, body = sandbox.lookup_many(imp_uids, who)
            return status, body, None

        return await serve(request, "lookup", None, action)

    async def cancel_cvs(request: Request) -> Response:
        imp_uid = request.path_params["imp_uid"]

        async def action(who: Caller) -> tuple[int, Any, bool | None]:
            return sandbox.cancel(imp_uid, who)

        return await serve(request, "cancel", imp_uid, action)

    async def close_vbank(request: Request) -> Response:
        imp_uid = request.path_params["imp_uid"]

        async def action(who: Caller) -> tuple[int, Any, bool | None]:
            return sandbox.close_vbank(imp_uid, who)

        return await serve(request, "cancel_vbank", imp_uid, action)

    async def refund(request: Request) -> Response:
        fields = await _fields(request)

        async def action(who: Caller) -> tuple[int, Any, bool | None]:
            return sandbox.refund(fields, who)

        target = sandbox.refund_target(fields, caller_of(request))
        return await serve(request, "refund", target, action)

    async def issue_cvs(request: Request) -> Response:
        async def action(who: Caller) -> tuple[int, Any, bool | None]:
            status, body = sandbox.issue(await _fields(request), who)
            return status, body, None

        return await serve(request, "issue", None, action)

    # -- control ---------------------------------------------------------------------------

    async def create_payments(request: Request) -> Response:
        body = await _fields(request)
        specs = body.get("payments")
        if not isinstance(specs, list):
            return _json(400, {"error": 'expected {"payments": [...]}'})
        try:
            created = sandbox.add_payments(specs)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, {"payments": [sandbox.truth(p.imp_uid) for p in created]})

    async def payment_truth(request: Request) -> Response:
        imp_uid = request.path_params["imp_uid"]
        if imp_uid not in sandbox.payments:
            return _json(404, {"error": "unknown imp_uid"})
        return _json(200, sandbox.truth(imp_uid))

    async def tally(request: Request) -> Response:
        return _json(200, sandbox.tally(request.path_params["imp_uid"]).counters())

    async def set_amounts(request: Request) -> Response:
        imp_uid = request.path_params["imp_uid"]
        fields = await _fields(request)
        try:
            sandbox.set_amounts(imp_uid, fields.get("amount"), fields.get("cancel_amount"))
        except KeyError:
            return _json(404, {"error": "unknown imp_uid"})
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, sandbox.truth(imp_uid))

    async def pay(request: Request) -> Response:
        imp_uid = request.path_params["imp_uid"]
        payment = sandbox.payments.get(imp_uid)
        if payment is None:
            return _json(404, {"error": "unknown imp_uid"})
        if payment.status != "ready":
            return _json(200, {"allowed": False, "status": payment.status, "confirm_status": None})
        pay_type = (await _fields(request)).get("pay_type", "cash")
        confirm_status: int | None = None
        allowed = True
        # Only a barcode asks its confirm_url; a virtual account or a card just pays.
        if payment.confirm_url and payment.pay_method == "cvs":
            try:
                answer = await client().post(
                    payment.confirm_url, json=sandbox.confirm_body(payment, str(pay_type))
                )
                confirm_status = answer.status_code
                allowed = confirm_status == 200
            except httpx.HTTPError:
                allowed = False
        # The barcode may have been cancelled while confirm_url was thinking.
        allowed = allowed and sandbox.mark_paid(imp_uid)
        if allowed:
            notify(payment.notice_url, imp_uid, payment.merchant_uid, "paid")
        body = {"allowed": allowed, "status": payment.status, "confirm_status": confirm_status}
        return _json(200, body)

    def notify(url: str | None, imp_uid: str, merchant_uid: str, status: str) -> None:
        """POST iamport's notification to `url`, fire and forget."""
        if not url:
            return

        async def send() -> None:
            with contextlib.suppress(httpx.HTTPError):
                body = {"imp_uid": imp_uid, "merchant_uid": merchant_uid, "status": status}
                await client().post(url, json=body)

        task = asyncio.ensure_future(send())
        background.add(task)
        task.add_done_callback(background.discard)

    async def set_status(request: Request) -> Response:
        imp_uid = request.path_params["imp_uid"]
        status = (await _fields(request)).get("status")
        try:
            payment = sandbox.set_status(imp_uid, str(status))
        except KeyError:
            return _json(404, {"error": "unknown imp_uid"})
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        notify(payment.notice_url, imp_uid, payment.merchant_uid, payment.status)
        return _json(200, sandbox.truth(imp_uid))

    async def admin(request: Request) -> Response:
        """A change in iamport's admin, behind the service's back: no notification is sent."""
        imp_uid = request.path_params["imp_uid"]
        action = (await _fields(request)).get("action")
        try:
            sandbox.admin(imp_uid, str(action))
        except KeyError:
            return _json(404, {"error": "unknown imp_uid"})
        except ValueError as exc:
            return _json(409, {"error": str(exc)})
        return _json(200, sandbox.truth(imp_uid))

    async def faults(request: Request) -> Response:
        """Unscoped, or one merchant's own with `imp_key` (and `tier`) in the query (GET,
        DELETE) or the body (POST)."""
        query = request.query_params
        try:
            if request.method == "DELETE":
                cleared = sandbox.clear_faults(query.get("imp_key"), query.get("tier"))
                return _json(200, cleared.as_dict())
            if request.method == "POST":
                return _json(200, sandbox.set_faults(await _fields(request)).as_dict())
            imp_key = query.get("imp_key")
            if imp_key is None:
                return _json(200, sandbox.faults.as_dict())
            merchant = sandbox.merchant(imp_key, query.get("tier"))
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, sandbox.faults_for(merchant.caller).as_dict())

    async def expire_tokens(request: Request) -> Response:
        imp_key = (await _fields(request)).get("imp_key")
        sandbox.expire_tokens(imp_key if isinstance(imp_key, str) else None)
        return _json(200, {"expired": True})

    def merchant_view(merchant: Merchant) -> dict[str, Any]:
        own = sandbox.scoped_faults.get(merchant.id)
        return {
            **merchant.public(),
            "default": merchant == sandbox.merchants.default,
            "faults": None if own is None else own.as_dict(),
        }

    async def merchants(request: Request) -> Response:
        if request.method == "POST":
            specs = (await _fields(request)).get("merchants")
            if not isinstance(specs, list):
                return _json(400, {"error": 'expected {"merchants": [...]}'})
            try:
                added = sandbox.add_merchants(merchant_from_spec(s) for s in specs)
            except ValueError as exc:
                return _json(400, {"error": str(exc)})
            return _json(200, {"merchants": [merchant_view(m) for m in added]})
        return _json(200, {"merchants": [merchant_view(m) for m in sandbox.merchants]})

    async def calls(request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return _json(400, {"error": "since must be an integer"})
        return _json(200, sandbox.calls_since(since))

    async def stats(request: Request) -> Response:
        return _json(200, sandbox.stats())

    async def reset(request: Request) -> Response:
        for task in list(late):  # a late apply must not land on the fresh state
            task.cancel()
        sandbox.reset()
        portone.reset()
        return _json(200, {"reset": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await portone.aclose()
        if "c" in outbound:
            await outbound.pop("c").aclose()

    routes = [
        Route("/users/getToken", get_token, methods=["POST"]),
        Route("/payments", get_payments, methods=["GET"]),
        Route("/payments/{imp_uid}", get_payment, methods=["GET"]),
        Route("/cvs/{imp_uid}", cancel_cvs, methods=["DELETE"]),
        Route("/cvs", issue_cvs, methods=["POST"]),
        Route("/vbanks/{imp_uid}", close_vbank, methods=["DELETE"]),
        Route("/payments/cancel", refund, methods=["POST"]),
        Route("/__control/payments", create_payments, methods=["POST"]),
        Route("/__control/payments/{imp_uid}", payment_truth, methods=["GET"]),
        Route("/__control/payments/{imp_uid}/pay", pay, methods=["POST"]),
        Route("/__control/payments/{imp_uid}/status", set_status, methods=["POST"]),
        Route("/__control/payments/{imp_uid}/amounts", set_amounts, methods=["POST"]),
        Route("/__control/payments/{imp_uid}/admin", admin, methods=["POST"]),
        Route("/__control/tallies/{imp_uid}", tally, methods=["GET"]),
        Route("/__control/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/__control/tokens/expire", expire_tokens, methods=["POST"]),
        Route("/__control/merchants", merchants, methods=["GET", "POST"]),
        Route("/__control/calls", calls, methods=["GET"]),
        Route("/__control/stats", stats, methods=["GET"]),
        Route("/__control/reset", reset, methods=["POST"]),
        *portone.routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sandbox = sandbox
    app.state.v2 = portone.v2
    return app


def run(
    host: str = "127.0.0.1",
    port: int = 8090,
    imp_key: str = DEFAULT_KEY,
    imp_secret: str = DEFAULT_SECRET,
    token_ttl: float = 1800,
    seed: int = 0,
    refusal_style: str = "mixed",
    confirm_url: str | None = None,
    notice_url: str | None = None,
    merchants: Iterable[Merchant | str] = (),
    v2_stores: Iterable[V2Store | str] = (),
    idempotency_ttl: float = IDEMPOTENCY_TTL,
) -> None:
    """Serve a fresh sandbox until interrupted (what `stockout sandbox` runs); `merchants` are
    accounts besides the default one, as Merchants or `KEY:SECRET[:TIER]`; `v2_stores` are
    PortOne V2 stores besides the default one, as V2Stores or `STORE_ID:SECRET`."""
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    sandbox = Sandbox(
        merchants=[m if isinstance(m, Merchant) else parse_merchant(m) for m in merchants],
        imp_key=imp_key,
        imp_secret=imp_secret,
        token_ttl=token_ttl,
        seed=seed,
        refusal_style=refusal_style,
        confirm_url=confirm_url,
        notice_url=notice_url,
    )
    v2 = V2Sandbox(
        [s if isinstance(s, V2Store) else parse_store(s) for s in v2_stores],
        idempotency_ttl=idempotency_ttl,
        seed=seed,
    )
    uvicorn.run(
        create_app(sandbox, v2),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=30,
    )
