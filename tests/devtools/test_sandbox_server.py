"""The sandbox over HTTP: iamport's shapes and rules, the control API, faults and counters."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from app.upstream.iamport import IamportClient, OutcomeUnknown, RateLimited, Refused, Unavailable
from devtools.sandbox.control import SandboxControl
from tests.support.sandbox import IMP_KEY, IMP_SECRET


@pytest.fixture
def http(sandbox_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox_url, timeout=10) as client:
        yield client


def token(http: httpx.Client) -> str:
    answer = http.post("/users/getToken", json={"imp_key": IMP_KEY, "imp_secret": IMP_SECRET})
    assert answer.status_code == 200
    return str(answer.json()["response"]["access_token"])


def iamport(sandbox_url: str, timeout: float = 10) -> IamportClient:
    return IamportClient(
        base_url=sandbox_url, imp_key=IMP_KEY, imp_secret=IMP_SECRET, timeout=timeout, limiter=None
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# -- tokens and auth -------------------------------------------------------------------------


def test_get_token_json_and_form_same_token(sandbox: SandboxControl, http: httpx.Client) -> None:
    first = http.post("/users/getToken", json={"imp_key": IMP_KEY, "imp_secret": IMP_SECRET})
    second = http.post("/users/getToken", data={"imp_key": IMP_KEY, "imp_secret": IMP_SECRET})
    a, b = first.json(), second.json()
    assert a["code"] == 0 and a["message"] is None
    assert a["response"]["access_token"] == b["response"]["access_token"]
    assert a["response"]["expired_at"] - a["response"]["now"] in (1799, 1800)
    bad = http.post("/users/getToken", json={"imp_key": IMP_KEY, "imp_secret": "wrong"})
    assert bad.status_code == 401 and bad.json()["code"] != 0


def test_auth_styles_and_expiry(sandbox: SandboxControl, http: httpx.Client) -> None:
    uid = sandbox.create_payment()["imp_uid"]
    t = token(http)
    for headers in (
        {"Authorization": f"Bearer {t}"},
        {"Authorization": t},
        {"X-ImpTokenHeader": t},
    ):
        assert http.get(f"/payments/{uid}", headers=headers).status_code == 200
    for headers in ({}, {"Authorization": "Bearer nope"}):
        answer = http.get(f"/payments/{uid}", headers=headers)
        assert answer.status_code == 401
        assert answer.json() == {"code": -1, "message": "Unauthorized", "response": None}
    sandbox.expire_tokens()
    assert http.get(f"/payments/{uid}", headers={"Authorization": f"Bearer {t}"}).status_code == 401
    assert token(http) != t


# -- iamport routes through our client -----------------------------------------------------------


def test_lookup_cancel_and_refusals(
    sandbox: SandboxControl, sandbox_url: str, http: httpx.Client
) -> None:
    ready, paid = (p["imp_uid"] for p in sandbox.create_payments([{}, {"status": "paid"}]))
    client = iamport(sandbox_url)
    assert client.look_up(ready).status == "ready"
    cancelled = client.void_barcode(ready)
    last = cancelled.last_cancel()
    assert cancelled.status == "cancelled" and last is not None and last.pg_tid
    for style, statuses in (("code", {200}), ("http", {400, 409})):
        sandbox.set_faults(refusal_style=style)
        for uid in (ready, paid):
            for _ in range(6):
                with pytest.raises(Refused) as info:
                    client.void_barcode(uid)
                assert info.value.http_status in statuses
        with pytest.raises(Refused) as info:
            client.void_barcode("imps_000000000000")
        assert info.value.http_status == (200 if style == "code" else 404)
    truth = sandbox.payment(ready)
    assert truth["cancels_applied"] == 1 and truth["cancel_calls"] == 1 + 6 + 6
    missing = http.get(
        "/payments/imps_000000000000", headers={"Authorization": f"Bearer {token(http)}"}
    )
    assert missing.status_code == 404
    assert missing.json() == {
        "code": -1,
        "message": "존재하지 않는 결제정보입니다.",
        "response": None,
    }
    stats = sandbox.stats()
    assert stats["cancels_applied_max_per_imp_uid"] == 1 and stats["cancel_after_applied"] == 12
    client.close()


def test_issue_then_cancel(sandbox: SandboxControl, sandbox_url: str) -> None:
    client = iamport(sandbox_url)
    issued = client.issue_cvs(
        merchant_uid="order-77",
        amount=3000,
        channel_key="channel-key-1",
        notice_url="http://127.0.0.1:9/n",
    )
    assert issued.status == "ready" and issued.imp_uid.startswith("imps_")
    assert sandbox.payment(issued.imp_uid)["notice_url"] == "http://127.0.0.1:9/n"
    assert client.void_barcode(issued.imp_uid).cancel_amount == 3000
    client.close()


# -- paying at the store -------------------------------------------------------------------------


class Hook:
    """A tiny local HTTP server standing in for our confirm_url and notice_url endpoints."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.requests.append((self.path, body))
                self.send_response(hook.status if self.path == "/confirm" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook(409)
    yield h
    h.close()


def test_pay_blocked_by_confirm_url(sandbox: SandboxControl, hook: Hook) -> None:
    p = sandbox.create_payment(confirm_url=hook.url + "/confirm", notice_url=hook.url + "/notice")
    assert sandbox.pay(p["imp_uid"]) == {"allowed": False, "status": "ready", "confirm_status": 409}
    path, body = hook.requests[0]
    assert path == "/confirm" and body["event"] == "Galaxia.Cvs.Confirm"
    assert body["imp_uid"] == p["imp_uid"] and body["status"] == "ready"
    assert set(body["extra"]) == {"barcode", "payType"}
    assert len(hook.requests) == 1  # no notification for a blocked payment


def test_pay_allowed_then_notified(sandbox: SandboxControl, hook: Hook) -> None:
    hook.status = 200
    p = sandbox.create_payment(confirm_url=hook.url + "/confirm", notice_url=hook.url + "/notice")
    assert sandbox.pay(p["imp_uid"], "card") == {
        "allowed": True,
        "status": "paid",
        "confirm_status": 200,
    }
    wait_until(lambda: len(hook.requests) == 2)
    assert hook.requests[1] == (
        "/notice",
        {"imp_uid": p["imp_uid"], "merchant_uid": p["merchant_uid"], "status": "paid"},
    )
    assert sandbox.payment(p["imp_uid"])["paid_at"] > 0
    assert sandbox.pay(p["imp_uid"])["allowed"] is False  # paid once


def test_a_virtual_account_pays_without_asking_confirm_url(
    sandbox: SandboxControl, hook: Hook
) -> None:
    p = sandbox.create_payment(
        pay_method="vbank", confirm_url=hook.url + "/confirm", notice_url=hook.url + "/notice"
    )
    assert sandbox.pay(p["imp_uid"]) == {"allowed": True, "status": "paid", "confirm_status": None}
    wait_until(lambda: len(hook.requests) == 1)
    assert hook.requests[0][0] == "/notice" and hook.requests[0][1]["status"] == "paid"


def test_console_cancel_and_amounts(sandbox: SandboxControl, hook: Hook) -> None:
    p = sandbox.create_payment(amount=5000, status="paid", notice_url=hook.url + "/notice")
    truth = sandbox.set_amounts(p["imp_uid"], cancel_amount=1000)
    assert (truth["amount"], truth["cancel_amount"]) == (5000, 1000)
    with pytest.raises(httpx.HTTPStatusError):
        sandbox.set_amounts(p["imp_uid"], cancel_amount=9000)
    truth = sandbox.console_cancel(p["imp_uid"])
    assert truth["status"] == "cancelled" and truth["cancel_history"][-1]["amount"] == 4000
    wait_until(lambda: len(hook.requests) == 1)
    assert hook.requests[0][1]["status"] == "cancelled"


def test_pay_without_confirm_url_and_unreachable_confirm(sandbox: SandboxControl) -> None:
    free, broken = sandbox.create_payments([{}, {"confirm_url": "http://127.0.0.1:9/confirm"}])
    assert sandbox.pay(free["imp_uid"])["allowed"] is True
    assert sandbox.pay(broken["imp_uid"]) == {
        "allowed": False,
        "status": "ready",
        "confirm_status": None,
    }


def test_console_status_changes(sandbox: SandboxControl) -> None:
    uid = sandbox.create_payment()["imp_uid"]
    truth = sandbox.set_status(uid, "cancelled")
    assert truth["status"] == "cancelled" and len(truth["cancel_history"]) == 1
    assert truth["cancels_applied"] == 0
    with pytest.raises(httpx.HTTPStatusError):
        sandbox.set_status("imps_000000000000", "paid")


# -- faults --------------------------------------------------------------------------------------


def statuses(http: httpx.Client, uid: str, n: int) -> list[int]:
    headers = {"Authorization": f"Bearer {token(http)}"}
    return [http.get(f"/payments/{uid}", headers=headers).status_code for _ in range(n)]


def test_faults_are_seeded_and_repeatable(sandbox: SandboxControl, http: httpx.Client) -> None:
    uid = sandbox.create_payment()["imp_uid"]
    token(http)  # before the faults
    sandbox.set_faults(error_rate=0.4, rate_429=0.1, calls=["lookup"], seed=42)
    first = statuses(http, uid, 40)
    sandbox.set_faults(seed=42)
    assert statuses(http, uid, 40) == first
    assert {200, 429} <= set(first) and set(first) & {500, 502, 503}
    assert sandbox.stats()["faults_injected"]["error"] > 0


def test_faults_map_to_client_errors(sandbox: SandboxControl, sandbox_url: str) -> None:
    uid = sandbox.create_payment()["imp_uid"]
    client = iamport(sandbox_url)
    client.look_up(uid)
    sandbox.set_faults(rate_429=1.0, retry_after=3, calls=["lookup"])
    with pytest.raises(RateLimited) as limited:
        client.look_up(uid)
    assert limited.value.retry_after == 3
    sandbox.set_faults(rate_429=0, error_rate=1.0, seed=1)
    kinds = set()
    for _ in range(16):
        with pytest.raises(Unavailable) as info:
            client.look_up(uid)
        # iamport's own 500 (its envelope) ended the call; a gateway's page says nothing.
        kinds.add((info.value.http_status, type(info.value).__name__))
    assert kinds == {
        (500, "ServerError"),
        (502, "Unavailable"),
        (503, "Unavailable"),
        (504, "Unavailable"),
    }
    sandbox.clear_faults()
    assert client.look_up(uid).status == "ready"
    client.close()


def test_latency(sandbox: SandboxControl, sandbox_url: str) -> None:
    uid = sandbox.create_payment()["imp_uid"]
    client = iamport(sandbox_url)
    client.look_up(uid)
    sandbox.set_faults(latency_ms=150)
    started = time.monotonic()
    client.look_up(uid)
    assert time.monotonic() - started >= 0.15
    client.close()


def test_timeout_before_apply(sandbox: SandboxControl, sandbox_url: str) -> None:
    uid = sandbox.create_payment()["imp_uid"]
    client = iamport(sandbox_url, timeout=5)
    client.look_up(uid)
    sandbox.set_faults(timeout_before_rate=1.0, hang_seconds=0.3)
    with pytest.raises(Unavailable) as info:
        client.void_barcode(uid)
    assert info.value.http_status == 504
    assert sandbox.payment(uid)["status"] == "ready"
    entry = sandbox.calls()[-1]
    assert (entry["status_code"], entry["applied"], entry["fault"]) == (
        504,
        False,
        "timeout_before",
    )
    client.close()


def test_timeout_after_apply_and_disconnect_ends_in_flight(
    sandbox: SandboxControl, sandbox_url: str
) -> None:
    uid = sandbox.create_payment()["imp_uid"]
    client = iamport(sandbox_url, timeout=0.3)
    client.look_up(uid)
    sandbox.set_faults(timeout_after_rate=1.0, hang_seconds=30)
    with pytest.raises(OutcomeUnknown):
        client.void_barcode(uid)
    assert sandbox.payment(uid)["status"] == "cancelled"  # it applied; the answer never came
    wait_until(lambda: sandbox.stats()["in_flight"] == 0)
    entry = sandbox.calls()[-1]
    assert (entry["status_code"], entry["applied"], entry["fault"]) == (499, True, "timeout_after")
    ended_at = entry["ended_at"]
    assert ended_at is not None and ended_at - entry["started_at"] < 5
    sandbox.clear_faults()
    with pytest.raises(Refused):
        client.void_barcode(uid)  # a careless second cancel: counted, not overlapping
    stats = sandbox.stats()
    assert stats["overlapping_cancels"] == 0 and stats["cancel_after_applied"] == 1
    assert stats["cancels_applied_max_per_imp_uid"] == 1
    client.close()


def test_overlapping_cancels_are_counted(sandbox: SandboxControl, sandbox_url: str) -> None:
    uid = sandbox.create_payment()["imp_uid"]
    client = iamport(sandbox_url)
    client.look_up(uid)
    sandbox.set_faults(latency_ms=300, calls=["cancel"])
    outcomes: list[str] = []

    def cancel() -> None:
        try:
            client.void_barcode(uid)
            outcomes.append("ok")
        except Refused:
            outcomes.append("refused")

    threads = [threading.Thread(target=cancel) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "refused"]
    stats = sandbox.stats()
    assert stats["overlapping_cancels"] == 1 and stats["max_in_flight"] >= 2
    assert stats["cancels_applied_max_per_imp_uid"] == 1
    client.close()


def test_bulk_create_and_bad_input(sandbox: SandboxControl, http: httpx.Client) -> None:
    created = sandbox.create_payments([{"amount": 100 + i} for i in range(5000)])
    assert len({p["imp_uid"] for p in created}) == 5000
    assert sandbox.stats()["payments"] == 5000
    assert (
        http.post("/__control/payments", json={"payments": [{"status": "weird"}]}).status_code
        == 400
    )
    assert http.post("/__control/faults", json={"error_rate": 5}).status_code == 400
    assert http.get("/__control/calls", params={"since": "x"}).status_code == 400
